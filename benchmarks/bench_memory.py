"""Resident memory of an audited redis-py process over a bare one (target: at most +20 MiB).

Each variant runs in its own fresh interpreter doing the same 20,000 GETs of a secret key; we
read VmRSS (and the peak, VmHWM) from /proc at the end. Variants alternate, three runs each.
Run: .venv/bin/python benchmarks/bench_memory.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from _common import otlp_sink, valkey_server

TARGET_MIB = 20.0

_CHILD = r"""
import json, os, sys
port, variant, sink = int(sys.argv[1]), sys.argv[2], sys.argv[3]
import redis
if variant == "audited":
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=sink + "/v1/traces")))
    trace.set_tracer_provider(provider)
    os.environ["OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT"] = sink + "/v1/logs"
    import secret_audit
    from secret_audit.redis import RedisSecretAuditInstrumentor
    RedisSecretAuditInstrumentor().instrument()
client = redis.Redis(port=port)
client.set("secret:mem", b"x" * 64)
tracer = None
if variant == "audited":
    tracer = trace.get_tracer("bench")
for i in range(20000):
    if tracer is not None and i % 10 == 0:
        with tracer.start_as_current_span("request"):
            client.get("secret:mem")
    else:
        client.get("secret:mem")
if variant == "audited":
    secret_audit.flush(60)
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"rss": int(status["VmRSS"].split()[0]) / 1024, "hwm": int(status["VmHWM"].split()[0]) / 1024}))
"""


def main() -> int:
    results: dict[str, list[dict[str, float]]] = {"bare": [], "audited": []}
    with valkey_server() as (_host, port), otlp_sink() as sink:
        for _ in range(3):
            for variant in ("bare", "audited"):
                out = subprocess.run(
                    [sys.executable, "-c", _CHILD, str(port), variant, sink],
                    capture_output=True, text=True, check=True, timeout=300,
                )
                results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    bare = statistics.median(r["rss"] for r in results["bare"])
    audited = statistics.median(r["rss"] for r in results["audited"])
    bare_hwm = statistics.median(r["hwm"] for r in results["bare"])
    audited_hwm = statistics.median(r["hwm"] for r in results["audited"])
    print(f"  bare redis-py:            RSS {bare:6.1f} MiB (peak {bare_hwm:6.1f})")
    print(f"  + SDK, OTLP, secret-audit: RSS {audited:6.1f} MiB (peak {audited_hwm:6.1f})")
    print(f"memory: +{audited - bare:.1f} MiB RSS, +{audited_hwm - bare_hwm:.1f} MiB peak over bare redis-py (target <= +{TARGET_MIB:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
