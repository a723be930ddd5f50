"""An instrumented service for the store benchmark: redis-py pipelines of secret reads for many end users.

Run under ``opentelemetry-instrument`` with our audit exporter pointed at a store (or a capture), it
makes ``N`` audit records as a real deployment does: each GET of a ``secret:`` key is audited by the
plugin's Redis instrumentation, with the end user and client address of its audit context, and the
records leave through the audit pipeline's own OTLP/HTTP exporter.

Usage: ``opentelemetry-instrument python benchmarks/_store_app.py N`` with ``REDIS_URL`` set.
"""

from __future__ import annotations

import os
import sys
import time

import redis

from secret_audit import audit_context

PER_CALL = 100  # GETs per pipeline: one round trip, 100 audit records
KEYS = [f"secret:prod/payments/key-{i}" for i in range(1000)]


def main() -> None:
    n = int(sys.argv[1])
    r = redis.Redis.from_url(os.environ["REDIS_URL"])
    started = time.perf_counter()
    done = call = 0
    while done < n:
        count = min(PER_CALL, n - done)
        # as on behalf of an API client: 10,000 end users, 65,536 client addresses
        with audit_context(enduser=f"user{call % 10_000}@example.com",
                           client_address=f"10.{call % 7}.{call % 256}.{(call // 256) % 256}"):
            pipe = r.pipeline(transaction=False)
            for k in range(count):
                pipe.get(KEYS[(call * PER_CALL + k) % len(KEYS)])
            pipe.execute()
        done += count
        call += 1
    print(f"app: {done} audited reads in {time.perf_counter() - started:.2f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
