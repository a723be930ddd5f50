"""Audit records per second from one process to a local OTLP/HTTP receiver, with zero loss.

The producer submits real Redis-shaped accesses straight into the audit pipeline (no Redis in
the loop, so the pipeline is the bottleneck being measured). The receiver runs in another process,
decodes every request with opentelemetry-proto and checks that each stream's sequence is contiguous.
Both the default fast encoder and the stock SDK encoder are measured in this one run.

Then the cost of signed checkpoints at their default cadence (every 10,000 records or second):
``BENCH_SIGNED_PAIRS`` (default 6) pairs of rounds with and without a signing key, their order
alternating, each pair's ratio of records/s; and the CPU of one checkpoint (build, Ed25519 sign,
chain, encode), timed on its own, with the share of a second it takes at the measured rate.
Run: .venv/bin/python benchmarks/bench_throughput.py
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import statistics
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from _common import free_port, verdict

TARGET = 100_000  # per app process: the goal of issue 19
# audit.event.id's KeyValue: key, then AnyValue{string_value} = "<uuid4>:<sequence>".
_EVENT_ID = re.compile(rb"audit\.event\.id\x12.\x0a(.)", re.S)


def _receiver(port: int, conn) -> None:  # runs in a child process
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    seqs: dict[str, list[int]] = {}
    state = {"first": None, "last": None, "count": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            if self.path == "/report":
                out = {"count": state["count"], "first": state["first"], "last": state["last"], "streams": {}}
                for stream, values in seqs.items():
                    values.sort()
                    contiguous = values == list(range(values[0], values[0] + len(values)))
                    out["streams"][stream] = {"n": len(values), "contiguous": contiguous, "dups": len(values) - len(set(values))}
                payload = json.dumps(out).encode()
                seqs.clear()
                state.update(first=None, last=None, count=0)
            elif self.path != "/v1/logs":
                payload = b""  # spans: accepted and discarded
            else:
                # Parse with opentelemetry-proto (C) to count records and prove the body is valid,
                # then read each record's event id ("<stream>:<sequence>") with one regex pass, so
                # this receiver is never the bottleneck of what it measures.
                req = ExportLogsServiceRequest.FromString(body)
                n = sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs)
                now = time.monotonic()
                found = 0
                for m in _EVENT_ID.finditer(body):
                    stream, _, seq = body[m.end() : m.end() + m.group(1)[0]].partition(b":")
                    seqs.setdefault(stream.decode(), []).append(int(seq))
                    found += 1
                if found != n:
                    raise ValueError(f"{n} records but {found} event ids")
                state["count"] += n
                if state["first"] is None:
                    state["first"] = now
                state["last"] = now
                payload = b""
            self.send_response(200)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    conn.send("ready")
    server.serve_forever()


def _report(url: str) -> dict:
    import requests

    return requests.post(url + "/report", data=b"", timeout=30).json()


def run(n: int, encoder: str, url: str, spans: bool = False, key: str | None = None, agent: bool = False) -> dict:
    import redis
    from opentelemetry.context import get_current

    from secret_audit._internal.config import load_settings
    from secret_audit._internal.event import Access, Item
    from secret_audit._internal.pipeline import AuditPipeline
    from secret_audit._internal.redis_source import SOURCE

    settings = load_settings(
        {
            "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT": url + "/v1/logs",
            "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_PYTHON_SECRET_AUDIT_ENCODER": encoder,
            "OTEL_PYTHON_SECRET_AUDIT_SPANS": "all" if spans else "in_trace",
            **({"OTEL_PYTHON_SECRET_AUDIT_SIGNING_KEY_FILE": key} if key else {}),
            "OTEL_PYTHON_SECRET_AUDIT_AGENT": "process" if agent else "off",
        }
    )
    provider = None
    if spans:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider()
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=url + "/v1/traces"), max_queue_size=n)
        )
    if agent:  # the audit agent: this process describes accesses into the ring, the agent does the rest
        from secret_audit._internal import lifecycle

        pipeline = lifecycle.start(settings)
        assert pipeline.stats()["agent"]["mode"] == "process"
    else:
        pipeline = AuditPipeline(settings, tracer_provider=provider)
    target = redis.Redis(host="127.0.0.1", port=6379)
    items = [(Item(f"secret:key-{i % 1000}", "read", "GET", "found"),) for i in range(1000)]
    ctx = get_current()
    cpu = time.process_time()
    started = time.monotonic()
    submit = pipeline.submit
    for i in range(n):
        now = time.time_ns()
        submit(Access(SOURCE, now, now + 140_000, ctx, target, items[i % 1000], "success"))
    submitted = time.monotonic()
    assert pipeline.flush(600)
    if provider is not None:
        provider.force_flush(600_000)
    done = time.monotonic()
    cpu = time.process_time() - cpu
    stats = pipeline.stats()
    pipeline.shutdown(10)
    stamped = n if agent else pipeline.counts()["sequence"]  # the accesses, plus checkpoints when signing
    rep = _report(url)
    return {
        "encoder": encoder + ("+spans" if spans else "") + ("+signed" if key else "") + ("+agent" if agent else ""),
        "records": n,
        "stamped": stamped,
        "submit_s": submitted - started,
        "total_s": done - started,
        "rate": n / (done - started),
        "cpu_us": cpu / n * 1e6,  # this process's CPU per access, all threads: less shaken by other load
        "received": rep["count"],
        "streams": rep["streams"],
        "dropped": stats["dropped_queue_full"] + stats["lost_export"],
    }


def main() -> int:
    n = int(os.environ.get("BENCH_RECORDS", "100000"))
    port = free_port()
    parent, child = mp.Pipe()
    proc = mp.Process(target=_receiver, args=(port, child), daemon=True)
    proc.start()
    parent.recv()
    url = f"http://127.0.0.1:{port}"
    results = []
    try:
        for encoder, count in (("fast", n), ("sdk", max(n // 5, 1000)), ("fast", n), ("fast", n)):
            results.append(run(count, encoder, url))
        for _ in range(3):  # the audit agent: records built and sent in another process
            results.append(run(n, "fast", url, agent=True))
        results.append(run(max(n // 5, 1000), "fast", url, spans=True))
        pairs = int(os.environ.get("BENCH_SIGNED_PAIRS", "6"))
        signed_runs = signed_pairs(n, url, pairs) if pairs else []
    finally:
        proc.terminate()
    ok = True
    for r in results + [r for pair in signed_runs for r in pair]:
        lossless = r["received"] == r["stamped"] and r["dropped"] == 0 and all(
            s["contiguous"] and not s["dups"] for s in r["streams"].values()
        )
        ok &= lossless
        print(
            f"  encoder={r['encoder']:<10} {r['records']:>7} records in {r['total_s']:6.2f}s "
            f"= {r['rate']:>8,.0f} records/s; received {r['received']}, "
            f"{'contiguous, 0 lost, 0 duplicated' if lossless else 'LOSS OR GAP: ' + json.dumps(r['streams'])}"
        )
    fast_rates = sorted(r["rate"] for r in results if r["encoder"] == "fast")
    fast = fast_rates[len(fast_rates) // 2]  # the median of the fast rounds
    sdk = max(r["rate"] for r in results if r["encoder"] == "sdk")
    with_spans = next(r["rate"] for r in results if r["encoder"] == "fast+spans")
    span_cost_us = 1e6 / with_spans - 1e6 / fast
    print(
        f"throughput in-process (AGENT=off): {fast:,.0f} records/s {'with zero loss' if ok else 'WITH LOSS'}, median of "
        f"{len(fast_rates)} rounds ({fast_rates[0]:,.0f}-{fast_rates[-1]:,.0f}) (the target, >= {TARGET:,}/s, is the "
        f"default's: the agent's, below); stock SDK encoder {sdk:,.0f} records/s; ratio {fast / sdk:.1f}x"
    )
    print(
        f"audit span per access (SDK span + BatchSpanProcessor + OTLP span export): "
        f"+{span_cost_us:.0f} µs of process time ({with_spans:,.0f} records/s with a span each)"
    )
    agent_rates = sorted(r["rate"] for r in results if r["encoder"] == "fast+agent")
    agent_cpu = sorted(r["cpu_us"] for r in results if r["encoder"] == "fast+agent")
    agent_rate = agent_rates[len(agent_rates) // 2]
    print(
        f"throughput with the audit agent (the default): {agent_rate:,.0f} records/s "
        f"{'with zero loss' if ok else 'WITH LOSS'}, median of {len(agent_rates)} rounds "
        f"({agent_rates[0]:,.0f}-{agent_rates[-1]:,.0f}) (target >= {TARGET:,}/s, zero loss: "
        f"{verdict(agent_rate, TARGET, at_most=False) if ok else 'NOT met'}); "
        f"the app's own CPU {agent_cpu[len(agent_cpu) // 2]:.1f} µs per access "
        f"(in-process: {sorted(r['cpu_us'] for r in results if r['encoder'] == 'fast')[1]:.1f} µs)"
    )
    if signed_runs:
        report_signed(signed_runs)
    return 0 if ok else 1


def signed_pairs(n: int, url: str, pairs: int) -> list[tuple[dict, dict]]:
    """Rounds with and without a signing key, alternating which goes first; (unsigned, signed) each."""
    from secret_audit.signing import generate_key

    key = os.path.join(tempfile.mkdtemp(prefix="bench-signing-"), "audit.key")
    generate_key(key)
    out = []
    for i in range(pairs):
        if i % 2:
            signed = run(n, "fast", url, key=key)
            plain = run(n, "fast", url)
        else:
            plain = run(n, "fast", url)
            signed = run(n, "fast", url, key=key)
        out.append((plain, signed))
    return out


def checkpoint_cost_us(rounds: int = 2000) -> float:
    """CPU of one checkpoint as the worker makes it: build and sign, stamp, encode."""
    from secret_audit import contract
    from secret_audit._internal.checkpoint import Checkpoints
    from secret_audit._internal.otlp import RecordData, encode_log_record
    from secret_audit.signing import generate_key, load_signer

    key = os.path.join(tempfile.mkdtemp(prefix="bench-signing-"), "audit.key")
    generate_key(key)
    cps = Checkpoints(load_signer(key), 10_000, 1.0)
    head = "ab" * 32
    started = time.process_time()
    for seq in range(1, rounds + 1):
        attrs, now, body = cps.build("5b8c3c9e-0d6e-4c36-9a43-111111111111", seq * 10, head, False)
        head = contract.stamp(attrs, "5b8c3c9e-0d6e-4c36-9a43-111111111111", seq * 10 + 1, head, now,
                              contract.EVENT_CHECKPOINT, 9, body)
        encode_log_record(RecordData(now, now, 9, "INFO", body, attrs, 0, 0, 0, contract.EVENT_CHECKPOINT))
        cps.stamped(seq * 10 + 1, head, False)
    return (time.process_time() - started) / rounds * 1e6


def report_signed(pairs: list[tuple[dict, dict]]) -> None:
    ratios = sorted(s["rate"] / p["rate"] for p, s in pairs)
    cpu_ratios = sorted(s["cpu_us"] / p["cpu_us"] for p, s in pairs)
    plain = statistics.median(p["rate"] for p, _ in pairs)
    signed = statistics.median(s["rate"] for _, s in pairs)
    checkpoints = statistics.median(s["stamped"] - s["records"] for _, s in pairs)
    each_us = checkpoint_cost_us()
    per_s = signed / 10_000 + 1  # the default cadence at the measured rate: by count, and by time
    print(
        f"signed checkpoints, default cadence: {signed:,.0f} records/s signed against {plain:,.0f} unsigned, "
        f"medians of {len(pairs)} alternated pairs; per-pair ratio median {statistics.median(ratios):.3f} "
        f"({ratios[0]:.3f}-{ratios[-1]:.3f}); CPU per access signed/unsigned median "
        f"{statistics.median(cpu_ratios):.3f} ({cpu_ratios[0]:.3f}-{cpu_ratios[-1]:.3f}); "
        f"{checkpoints:.0f} checkpoints per round"
    )
    print(
        f"checkpoint cost: {each_us:.0f} µs of CPU each (build, Ed25519 signature, chain, encode); at "
        f"{signed:,.0f} records/s that is {per_s:.1f} per second = {each_us * per_s / 1e4:.3f}% of the worker's "
        f"time (target <= 1%)"
    )


if __name__ == "__main__":
    sys.exit(main())
