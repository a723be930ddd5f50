"""Records made by the real Redis instrumentation, sent by the real SDK OTLP/HTTP exporter, land intact."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
import redis
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import format_span_id, format_trace_id

from conftest import retire_pipeline
from secret_audit import audit_context
from secret_audit._internal.config import load_settings
from secret_audit.store._rows import attributes_of


class Tee(LogRecordExporter):
    """Keeps what the real exporter sent, to compare with what the store kept."""

    def __init__(self, inner: LogRecordExporter) -> None:
        self.inner = inner
        self.sent: list[Any] = []
        self.results: list[LogRecordExportResult] = []
        self.lock = threading.Lock()

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        result = self.inner.export(batch)
        with self.lock:
            self.results.append(result)
            if result is LogRecordExportResult.SUCCESS:
                self.sent.extend(batch)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@pytest.fixture
def instrumented(server_url, tokens):
    from secret_audit.redis import RedisSecretAuditInstrumentor

    exporter = Tee(OTLPLogExporter(endpoint=f"{server_url}/v1/logs",
                                   headers={"authorization": f"Bearer {tokens['ingest']}"}))
    provider = TracerProvider()
    inst = RedisSecretAuditInstrumentor()
    inst.instrument(settings=load_settings({"OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS": "20"}),
                    audit_exporter=exporter, tracer_provider=provider)
    exporter.provider = provider
    try:
        yield exporter
    finally:
        inst.uninstrument()
        retire_pipeline()


def test_redis_audit_records_land_field_for_field(instrumented, redis_url, key, owner, server_url, tokens):
    import secret_audit

    client = redis.Redis.from_url(redis_url)
    tracer = instrumented.provider.get_tracer("app")
    with tracer.start_as_current_span("handle-request"):
        with audit_context(enduser="alice@example.com", client_address="203.0.113.7"):
            client.set(key, "s3cr3t-value-never-stored")
            assert client.get(key) == b"s3cr3t-value-never-stored"
        client.get(key + ":missing")
        client.delete(key)
    assert secret_audit.flush(30)
    sent = [r.log_record for r in instrumented.sent]
    assert len(sent) == 4
    assert set(instrumented.results) == {LogRecordExportResult.SUCCESS}
    resource = dict(instrumented.sent[0].resource.attributes)

    from psycopg.rows import dict_row

    with owner.cursor(row_factory=dict_row) as cur:
        rows = cur.execute("SELECT * FROM audit_events ORDER BY sequence").fetchall()
    assert len(rows) == 4
    for lr, row in zip(sent, rows, strict=True):
        assert row["event_name"] == lr.event_name == "secret.access"
        assert row["time_unix_nano"] == lr.timestamp
        assert row["observed_unix_nano"] == lr.observed_timestamp
        assert row["severity_number"] == lr.severity_number.value
        assert row["severity_text"] == lr.severity_text
        assert row["body"] == lr.body
        assert lr.trace_id
        assert row["trace_id"] == format_trace_id(lr.trace_id)
        assert row["span_id"] == format_span_id(lr.span_id)
        assert attributes_of(row) == dict(lr.attributes)
        assert row["resource"] == resource
        assert row["service_name"] == resource["service.name"]
        assert row["integrity"] == "ok"
        attrs = dict(lr.attributes)
        assert row["secret_name"] == attrs["secret.name"]
        assert attrs["secret.name"].startswith(key)
        assert row["operation"] == attrs["audit.operation"]
        assert row["outcome"] == attrs["audit.outcome"]
        assert row["chain_hash"] == attrs["audit.chain.hash"]
        assert row["attributes"] == {}
    assert len({r["trace_id"] for r in rows}) == 1
    assert rows[0]["enduser_id"] == "alice@example.com"
    assert rows[0]["client_address"] == "203.0.113.7"
    assert [r["outcome"] for r in rows] == ["success", "success", "not_found", "success"]
    dump = str(owner.execute("SELECT array_agg(t::text) FROM audit_events t").fetchone()[0])
    assert "s3cr3t-value-never-stored" not in dump

    # and the query API finds them by the contract's filters
    resp = httpx.get(f"{server_url}/api/audit-logs", params={"secret": key, "enduser": "alice@example.com"},
                     headers={"Authorization": f"Bearer {tokens['auditor']}"})
    assert resp.status_code == 200
    assert [e["action"] for e in resp.json()["events"]] == ["GET", "SET"]
    from secret_audit.store.verify import verify

    assert verify(owner).ok


def test_launcher_default_sender_lands_in_the_store(server_url, tokens, redis_url, owner):
    """No code change: opentelemetry-instrument with the audit exporter pointed at the store."""
    import secrets

    from test_launcher_e2e import HERE, launch

    key = "secret:store:" + secrets.token_hex(4)
    value = "canary-" + secrets.token_hex(8)
    proc = launch(
        server_url, redis_url, str(HERE / "apps" / "launcher_app.py"), key, value,
        timeout=120,
        OTEL_SERVICE_NAME="store-e2e",
        OTEL_RESOURCE_ATTRIBUTES="service.namespace=acme",
        OTEL_TRACES_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT=f"{server_url}/v1/logs",
        OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_HEADERS=f"authorization=Bearer%20{tokens['acme-ingest']}",
    )
    assert proc.returncode == 0, proc.stderr
    rows = owner.execute(
        "SELECT action, outcome, tenant, service_name, integrity FROM audit_events "
        "WHERE event_name = 'secret.access' ORDER BY sequence"
    ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [("SET", "success"), ("GET", "success"), ("GET", "not_found"),
                                            ("DEL", "success")]
    assert {r[2:] for r in rows} == {("acme", "store-e2e", "ok")}
    from secret_audit.store.verify import verify

    assert verify(owner).ok
    dump = str(owner.execute("SELECT array_agg(t::text) FROM audit_events t").fetchone()[0])
    assert value not in dump
