"""Redis overhead: bare vs our audit vs the official OTel Redis instrumentation vs both.

One process, variants interleaved round by round, median per-op times. Exports go to an OTLP/HTTP
sink in another process, so the cost of encoding and sending is counted but the sink's is not.
Run: .venv/bin/python benchmarks/bench_redis.py
"""

from __future__ import annotations

import os
import sys

from _common import interleave, otlp_sink, report, valkey_server

TARGET_GET = 1.10
TARGET_PIPE = 1.05


def main() -> int:
    import redis
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    import secret_audit
    from secret_audit._internal.config import load_settings
    from secret_audit.redis import RedisSecretAuditInstrumentor

    rounds = int(os.environ.get("BENCH_ROUNDS", "6"))
    per_round = int(os.environ.get("BENCH_OPS", "2000"))
    with valkey_server() as (host, port), otlp_sink() as sink:
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=sink + "/v1/traces")))
        trace.set_tracer_provider(provider)
        settings = load_settings({"OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT": sink + "/v1/logs"})
        ours, official = RedisSecretAuditInstrumentor(), RedisInstrumentor()

        def nothing() -> None:
            return None

        def ours_on() -> None:
            ours.instrument(settings=settings, tracer_provider=provider)

        def official_on() -> None:
            official.instrument(tracer_provider=provider)

        def both_on() -> None:
            ours_on()
            official_on()

        def both_off() -> None:
            official.uninstrument()
            ours.uninstrument()

        variants = {
            "bare": (nothing, nothing),
            "secret-audit": (ours_on, ours.uninstrument),
            "otel-redis (official)": (official_on, official.uninstrument),
            "both": (both_on, both_off),
        }

        def settle() -> None:
            secret_audit.flush(60)
            provider.force_flush()

        client = redis.Redis(host=host, port=port)
        client.set("secret:bench", b"x" * 64)
        get = client.get
        s1 = interleave(variants, lambda: get("secret:bench"), rounds=rounds, per_round=per_round, settle=settle)
        r1 = report("GET of a 64-byte secret", s1, "bare")

        def pipe100() -> None:
            p = client.pipeline(transaction=False)
            for _ in range(100):
                p.get("secret:bench")
            p.execute()

        s2 = interleave(variants, pipe100, rounds=rounds, per_round=max(per_round // 20, 20), settle=settle)
        r2 = report("pipeline of 100 GETs", s2, "bare")
        import asyncio

        import redis.asyncio as aioredis

        loop = asyncio.new_event_loop()
        aclient = aioredis.Redis(host=host, port=port)
        run = loop.run_until_complete
        s3 = interleave(
            variants, lambda: run(aclient.get("secret:bench")), rounds=rounds, per_round=per_round // 2, settle=settle
        )
        r3 = report("async GET (redis.asyncio, one await per op)", s3, "bare")
        run(aclient.aclose())
        loop.close()
        stats = secret_audit.stats()
        print(f"\naudit pipeline: {stats}")
        rows = (
            ("redis GET", r1, TARGET_GET),
            ("redis pipeline(100)", r2, TARGET_PIPE),
            ("redis async GET", r3, TARGET_GET),
        )
        for label, r, target in rows:
            print(
                f"{label}: ratio {r['secret-audit']:.2f}x median, {r['secret-audit:mean']:.2f}x mean "
                f"(target <= {target:.2f}x); official {r['otel-redis (official)']:.2f}x median, "
                f"{r['otel-redis (official):mean']:.2f}x mean"
            )
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
