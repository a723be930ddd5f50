"""GCP Secret Manager overhead: access_secret_version against the local fake, bare vs audited.

One client process, the two variants interleaved round by round, median per-op times. The fake
server and an OTLP/HTTP sink run in other processes, as Secret Manager and a collector would, so
the audit's own work (spans, records, chaining, OTLP encoding and sending) is counted here but
the server's is not. Run: .venv/bin/python benchmarks/bench_gcp.py
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from _common import interleave, otlp_sink, report, wait_port

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.05


@contextlib.contextmanager
def _process(argv: list[str]) -> Iterator[str]:
    """Start a helper process and yield the first line it prints (where it listens)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line:
            raise RuntimeError(f"{argv[1]} did not start")
        yield line
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    import grpc
    from google.cloud import secretmanager
    from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
        SecretManagerServiceGrpcTransport,
    )
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    import secret_audit
    from secret_audit._internal.config import load_settings
    from secret_audit.gcp import GcpSecretManagerSecretAuditInstrumentor

    rounds = int(os.environ.get("BENCH_ROUNDS", "8"))
    per_round = int(os.environ.get("BENCH_OPS", "1000"))
    fake = [sys.executable, str(ROOT / "tests" / "gcp_fake.py")]
    with _process(fake) as endpoints, otlp_sink() as sink:
        target = endpoints.split()[0]
        host, port = target.rsplit(":", 1)
        wait_port(int(port), host=host)
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=sink + "/v1/traces")))
        trace.set_tracer_provider(provider)
        settings = load_settings({"OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT": sink + "/v1/logs"})
        ours = GcpSecretManagerSecretAuditInstrumentor()

        client = secretmanager.SecretManagerServiceClient(
            transport=SecretManagerServiceGrpcTransport(channel=grpc.insecure_channel(target))
        )
        client.create_secret(parent="projects/bench", secret_id="db-password", secret={"replication": {}})
        client.add_secret_version(parent="projects/bench/secrets/db-password", payload={"data": b"x" * 64})
        name = "projects/bench/secrets/db-password/versions/latest"

        def nothing() -> None:
            return None

        def ours_on() -> None:
            ours.instrument(settings=settings, tracer_provider=provider)

        def settle() -> None:
            secret_audit.flush(60)
            provider.force_flush()

        variants = {"bare": (nothing, nothing), "secret-audit": (ours_on, ours.uninstrument)}
        tracer = provider.get_tracer("bench")

        def access(name: str) -> object:
            # looked up per call: a method bound before instrument() would bypass the wrapper
            return client.access_secret_version(name=name)

        def in_request() -> None:
            with tracer.start_as_current_span("request"):
                access(name=name)

        results = {}
        for label, op in (
            ("no caller span: audit record only", lambda: access(name=name)),
            ("inside a request span: audit span + record", in_request),
        ):
            samples = interleave(variants, op, rounds=rounds, per_round=per_round, settle=settle)
            r = report(f"access_secret_version of a 64-byte secret, {label}", samples, "bare")
            results[label] = r["secret-audit"], r["secret-audit:median"]
        stats = secret_audit.stats()
        print(f"\naudit pipeline (last audited round): {stats}")
        assert stats.get("exported"), "the audited variant exported no audit record"
        mean, median = results["no caller span: audit record only"]
        span_mean, span_median = results["inside a request span: audit span + record"]
        print(
            f"gcp access_secret_version: {mean:.2f}x mean (target <= {TARGET:.2f}x), {median:.2f}x median; "
            f"inside a request span {span_mean:.2f}x mean, {span_median:.2f}x median"
        )
        client.transport.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
