"""Redis overhead: bare redis-py vs our audit vs the official OTel Redis instrumentation.

One process, the variants interleaved round by round (2,000 operations a round by default). Each
figure leads with the mean cost per operation of a round (its wall time plus the CPU spent
flushing what it left queued), then the median over rounds: a worker thread's Python work on the
app's GIL shows there. Median per-op times follow. Records and spans are exported over OTLP/HTTP
to a sink in another process (an SDK TracerProvider with a BatchSpanProcessor, for every variant
alike), so encoding and sending are counted but the sink's work is not. "secret-audit" is what ships
by default (the audit agent, which makes the audit spans too); the in-process pipeline
(``AGENT=off``) and the agent with spans made in the app (``SPANS_VIA=app``) are measured beside it.
Run: .venv/bin/python benchmarks/bench_redis.py   (BENCH_ROUNDS, BENCH_OPS to change the rounds)
"""

from __future__ import annotations

import os
import sys

from _common import interleave, otlp_sink, report, valkey_server, verdict

# The goals of issue 19, mean-based ratios against bare redis-py.
TARGET_GET = 1.10
TARGET_IN_SPAN = 1.15
TARGET_PIPE = 1.05

OURS, OFFICIAL = "secret-audit (default: agent + its spans)", "otel-redis (official)"
IN_PROCESS, AGENT_APP_SPANS = "secret-audit, in-process (AGENT=off)", "secret-audit, agent, spans in the app"


def main() -> int:
    import asyncio

    import redis
    import redis.asyncio as aioredis
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    import secret_audit
    from secret_audit._internal.config import load_settings
    from secret_audit.redis import RedisSecretAuditInstrumentor

    # 11 rounds, a pipeline round 200 pipelines (about 0.2 s): with 7 rounds of 100 (0.08 s), one
    # wake-up on the other vCPU moved the pipeline row's median by up to 0.2x from run to run
    rounds = int(os.environ.get("BENCH_ROUNDS", "11"))
    per_round = int(os.environ.get("BENCH_OPS", "2000"))
    with valkey_server() as (host, port), otlp_sink() as sink:
        provider = TracerProvider()
        # a queue that never fills: a span the SDK drops ("Queue full") would make its variant look cheaper
        exporter = OTLPSpanExporter(endpoint=sink + "/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=1 << 16))
        trace.set_tracer_provider(provider)
        tracer = provider.get_tracer("bench")
        endpoint = {"OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT": sink + "/v1/logs"}
        # AGENT=off: records built and sent on a worker thread here, spans through the provider given
        settings = load_settings({**endpoint, "OTEL_PYTHON_SECRET_AUDIT_AGENT": "off"})
        # AGENT=process, SPANS_VIA=app: records built and sent in the agent process, whose CPU is not
        # this process's; audit spans made here, through the global provider (the same one)
        agent_settings = load_settings({**endpoint, "OTEL_PYTHON_SECRET_AUDIT_SPANS_VIA": "app"})
        # the defaults (AGENT=process, SPANS_VIA=auto): the agent also makes the audit spans (this
        # provider's sampler is the SDK's default) and exports them where the environment says
        os.environ.update(OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="http/protobuf",
                          OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=sink + "/v1/traces")
        default_settings = load_settings(endpoint)
        assert (default_settings.agent, default_settings.spans_via) == ("process", "auto")
        ours, official = RedisSecretAuditInstrumentor(), RedisInstrumentor()

        def nothing() -> None:
            return None

        def in_process_on() -> None:
            ours.instrument(settings=settings, tracer_provider=provider)

        # Each round instruments afresh, which starts an agent: stats() waits for its hello, so that the
        # round times the app beside a running agent (as an app sees it after start-up), not beside an
        # agent still importing on the other vCPU.
        def agent_on() -> None:
            ours.instrument(settings=agent_settings)
            secret_audit.stats()

        def default_on() -> None:
            ours.instrument(settings=default_settings)
            secret_audit.stats()

        def official_on() -> None:
            official.instrument(tracer_provider=provider)

        variants = {
            "bare": (nothing, nothing),
            OURS: (default_on, ours.uninstrument),
            IN_PROCESS: (in_process_on, ours.uninstrument),
            AGENT_APP_SPANS: (agent_on, ours.uninstrument),
            OFFICIAL: (official_on, official.uninstrument),
        }

        def settle() -> None:
            secret_audit.flush(60)
            provider.force_flush()

        client = redis.Redis(host=host, port=port)
        client.set("secret:bench", b"x" * 64)
        get = client.get

        def get_in_request() -> None:
            with tracer.start_as_current_span("request"):
                get("secret:bench")

        def pipe100() -> None:
            p = client.pipeline(transaction=False)
            for _ in range(100):
                p.get("secret:bench")
            p.execute()

        def timed(op, title: str, per: int, ops_per_call: int = 1) -> dict[str, float]:
            samples = interleave(variants, op, rounds=rounds, per_round=per, settle=settle)
            if ops_per_call > 1:  # per GET, not per call
                for values in (*samples.values(), *samples.rounds.values()):
                    values[:] = [v / ops_per_call for v in values]
            return report(title, samples, "bare")

        rows = [
            ("redis GET outside a trace", timed(lambda: get("secret:bench"), "GET of a 64-byte secret, outside a trace", per_round), TARGET_GET),
            ("redis GET inside a request span", timed(get_in_request, "GET inside a request span (audit span made)", per_round), TARGET_IN_SPAN),
            ("redis pipeline of 100 GETs", timed(pipe100, "pipeline of 100 GETs, per GET", max(per_round // 10, 20), 100), TARGET_PIPE),
        ]

        loop = asyncio.new_event_loop()
        aclient = aioredis.Redis(host=host, port=port)
        run = loop.run_until_complete
        rows.append(
            ("redis async GET", timed(lambda: run(aclient.get("secret:bench")), "async GET (redis.asyncio)", per_round // 2), TARGET_GET)
        )
        run(aclient.aclose())
        loop.close()
        print(f"\naudit pipeline: {secret_audit.stats()}")
        print()
        for label, r, target in rows:
            print(
                f"{label}: bare {r['bare:us']:.1f} µs mean; ours {r[OURS]:.2f}x mean "
                f"(target <= {target:.2f}x: {verdict(r[OURS], target)}; rounds spread {r[OURS + ':spread']:.2f}), "
                f"{r[OURS + ':median']:.2f}x median; official {r[OFFICIAL]:.2f}x mean, {r[OFFICIAL + ':median']:.2f}x median"
            )
            for name in (IN_PROCESS, AGENT_APP_SPANS):  # not the default: beside it, no verdict
                print(
                    f"{label}, {name.removeprefix('secret-audit, ')}: {r[name]:.2f}x mean (the target, "
                    f"<= {target:.2f}x, is the default's; rounds spread {r[name + ':spread']:.2f}), "
                    f"{r[name + ':median']:.2f}x median"
                )
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
