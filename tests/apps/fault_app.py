"""Run under opentelemetry-instrument for the fault tests: numbered audited GETs of ``<prefix>:<i>``.

    fault_app.py PREFIX COUNT [--rate N] [--each] [--drain SECONDS] [--until-recovered K] [--stop-file F]

- Access ``i`` (1-based) is a GET of ``PREFIX:i``; its audit record names that key, so the tests can
  tell which accesses reached the store or the spool.
- ``--each`` prints ``ok <i>`` (flushed) once GET ``i`` has returned its value to this code, before
  the next access; otherwise ``progress <i>`` every 500 accesses. A refused access
  (``AuditUnavailableError``, fail-closed) prints ``refused <i>`` and the run goes on.
- ``--rate`` paces the run (accesses per second), so that it spans a fault.
- ``--until-recovered K`` ends the run early once K accesses in a row succeeded after a refusal;
  ``--stop-file F`` ends it early once F exists (looked for every 50 accesses).
- At the end it flushes, waits up to ``--drain`` seconds for its spool to be replayed, and prints
  ``stats <json>`` of the pipeline's counters.
Every loop is bounded by COUNT or by a deadline. SIGTERM is left at its default action.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import redis

from secret_audit import AuditUnavailableError
from secret_audit._internal.pipeline import peek_pipeline

parser = argparse.ArgumentParser()
parser.add_argument("prefix")
parser.add_argument("count", type=int)
parser.add_argument("--rate", type=float, default=0.0)
parser.add_argument("--each", action="store_true")
parser.add_argument("--drain", type=float, default=0.0)
parser.add_argument("--until-recovered", type=int, default=0)
parser.add_argument("--stop-file", default=None)
args = parser.parse_args()

client = redis.Redis.from_url(os.environ["REDIS_URL"])
out = sys.stdout
started = time.monotonic()
refused = 0
served_since_refusal = 0
slowest = 0.0
print("start", flush=True)
for i in range(1, args.count + 1):
    t0 = time.perf_counter()
    try:
        value = client.get(f"{args.prefix}:{i}")
    except AuditUnavailableError:
        refused += 1
        served_since_refusal = 0
        out.write(f"refused {i}\n")
        out.flush()
    else:
        slowest = max(slowest, time.perf_counter() - t0)
        if value is not None and value != str(i).encode():
            raise SystemExit(f"wrong value for {i}: {value!r}")
        if args.each:
            out.write(f"ok {i}\n")
            out.flush()
        elif i % 500 == 0:
            out.write(f"progress {i}\n")
            out.flush()
        served_since_refusal += 1
        if args.until_recovered and refused and served_since_refusal >= args.until_recovered:
            break
    if i % 50 == 0:
        if args.stop_file and os.path.exists(args.stop_file):
            break
        if args.rate:
            ahead = started + i / args.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)

ran = time.monotonic() - started
pipeline = peek_pipeline()
stats: dict[str, object] = {"ran_s": round(ran, 2), "refused": refused, "slowest_ms": round(slowest * 1000, 1)}
if pipeline is not None:
    pipeline.flush(30)
    deadline = time.monotonic() + args.drain
    while args.drain and time.monotonic() < deadline:
        spool = pipeline.stats()["spool"]
        if not spool or not spool["records"]:
            break
        pipeline.flush(5)
        time.sleep(0.1)
    stats["drain_s"] = round(time.monotonic() - started - ran, 2)
    stats.update(pipeline.stats())
print("stats " + json.dumps(stats), flush=True)
