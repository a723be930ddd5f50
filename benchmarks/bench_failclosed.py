"""The latency cost of fail-closed mode: a GET waits for its record to be acknowledged.

Interleaved in one process: bare, fail-open (default) and fail-closed, against an OTLP/HTTP sink in
another process (acknowledged over loopback), and fail-closed with a spool while the endpoint is down
(one SQLite fsync per batch).
Run: .venv/bin/python benchmarks/bench_failclosed.py
"""

from __future__ import annotations

import os
import sys
import tempfile

from _common import free_port, interleave, otlp_sink, report, valkey_server


def main() -> int:
    import redis

    import secret_audit
    from secret_audit._internal.config import load_settings
    from secret_audit.redis import RedisSecretAuditInstrumentor

    rounds = int(os.environ.get("BENCH_ROUNDS", "4"))
    per_round = int(os.environ.get("BENCH_OPS", "2000"))
    spool = tempfile.mkdtemp(prefix="sa-bench-spool-")
    dead = f"http://127.0.0.1:{free_port()}/v1/logs"
    with valkey_server() as (host, port), otlp_sink() as sink:
        base = {"OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT": sink + "/v1/logs"}
        open_mode = load_settings(base)
        closed_mode = load_settings({**base, "OTEL_PYTHON_SECRET_AUDIT_FAILURE_MODE": "closed"})
        closed_spool = load_settings(
            {
                "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT": dead,
                "OTEL_PYTHON_SECRET_AUDIT_FAILURE_MODE": "closed",
                "OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR": spool,
                "OTEL_PYTHON_SECRET_AUDIT_EXPORT_RETRY_TIMEOUT_MS": "0",
            }
        )
        inst = RedisSecretAuditInstrumentor()

        def on(settings):
            return lambda: inst.instrument(settings=settings)

        variants = {
            "bare": (lambda: None, lambda: None),
            "fail-open": (on(open_mode), inst.uninstrument),
            "fail-closed (acknowledged)": (on(closed_mode), inst.uninstrument),
            "fail-closed (spooled)": (on(closed_spool), inst.uninstrument),
        }
        client = redis.Redis(host=host, port=port)
        client.set("secret:bench", b"x" * 64)
        samples = interleave(
            variants, lambda: client.get("secret:bench"), rounds=rounds, per_round=per_round,
            settle=lambda: secret_audit.flush(60),
        )
        r = report("GET of a 64-byte secret", samples, "bare")
    print(
        f"fail-closed GET: {r['fail-closed (acknowledged)']:.2f}x mean when acknowledged, "
        f"{r['fail-closed (spooled)']:.2f}x when spooled; fail-open {r['fail-open']:.2f}x "
        f"(a cost to document, no target)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
