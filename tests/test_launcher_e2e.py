"""End to end: opentelemetry-instrument, the real SDK exporters, OTLP/HTTP into a local receiver."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from otlp_receiver import otlp_receiver

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent

CONTRACT = {
    "secret.name",
    "secret.source",
    "secret.resource",
    "audit.operation",
    "audit.action",
    "audit.outcome",
    "audit.duration_ms",
    "audit.access_path",
    "audit.event.id",
    "audit.stream.id",
    "audit.sequence",
    "audit.chain.prev",
    "audit.chain.hash",
}


def launcher_env(receiver_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of an app run under opentelemetry-instrument, exporting OTLP/HTTP to the receiver."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTEST_"))}
    env.update(
        OTEL_SERVICE_NAME="launcher-e2e",
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_LOGS_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="none",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver_url,
        OTEL_BSP_SCHEDULE_DELAY="100",
        REDIS_URL=redis_url,
    )
    env.update(extra)
    return env


def launch(
    receiver_url: str, redis_url: str, *argv: str, timeout: float = 600, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run ``python *argv`` under opentelemetry-instrument with ``launcher_env``."""
    return subprocess.run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, *argv],
        env=launcher_env(receiver_url, redis_url, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_records_arrive_with_every_contract_field_and_match_spans(redis_url):
    key = "secret:e2e:" + secrets.token_hex(4)
    canary = "canary-" + secrets.token_hex(16)
    with otlp_receiver() as rx:
        proc = launch(rx.url, redis_url, str(HERE / "apps" / "launcher_app.py"), key, canary)
        assert proc.returncode == 0, proc.stderr
        records = rx.audit_records()
        spans = {s["span_id"]: s for s in rx.spans}
        raw = b"".join(rx.raw)
    assert [(r["attributes"]["audit.action"], r["attributes"]["audit.outcome"]) for r in records] == [
        ("SET", "success"),
        ("GET", "success"),
        ("GET", "not_found"),
        ("DEL", "success"),
    ]
    for rec in records:
        attrs = rec["attributes"]
        assert CONTRACT <= set(attrs), CONTRACT - set(attrs)
        assert rec["resource"]["service.name"] == "launcher-e2e"
        assert rec["resource"]["service.instance.id"]
        assert rec["scope"] == "secret_audit"
        span = spans[rec["span_id"]]
        assert span["trace_id"] == rec["trace_id"]
        assert span["name"] == f"secret.{attrs['audit.operation']}"
        assert span["attributes"]["audit.chain.hash"] == attrs["audit.chain.hash"]
    first, second = records[0]["attributes"], records[1]["attributes"]
    assert first["enduser.id"] == "alice@example.com"
    assert first["client.address"] == "203.0.113.7"
    assert first["audit.access_path"] == "external"
    assert records[2]["attributes"]["audit.access_path"] == "internal"
    assert [r["attributes"]["audit.sequence"] for r in records] == [1, 2, 3, 4]
    assert second["audit.chain.prev"] == first["audit.chain.hash"]
    # every audit span hangs under the request span, so the trail is one trace
    assert len({r["trace_id"] for r in records}) == 1
    assert canary.encode() not in raw


@pytest.mark.slow
def test_burst_of_100k_gets_arrives_contiguous(redis_url):
    key = "secret:burst:" + secrets.token_hex(4)
    count = 100_000
    with otlp_receiver() as rx:
        started = time.monotonic()
        proc = launch(
            rx.url, redis_url, str(HERE / "apps" / "burst_app.py"), key, str(count),
            OTEL_TRACES_EXPORTER="none",
        )
        took = time.monotonic() - started
        assert proc.returncode == 0, proc.stderr
        seqs = sorted(r["attributes"]["audit.sequence"] for r in rx.audit_records())
        dropped = [r for r in rx.logs if r["event_name"] == "audit.dropped"]
    print(f"100k audited GETs exported in {took:.1f}s")
    assert dropped == []
    # one SET then `count` GETs: sequences 1..count+1 with nothing missing or repeated
    assert seqs == list(range(1, count + 2))
