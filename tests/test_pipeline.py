"""The audit pipeline's guarantees: span modes, backpressure, counted losses, and both OTLP transports."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
import redis
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, LogRecordExportResult

from conftest import retire_pipeline
from otlp_receiver import any_value, otlp_receiver
from secret_audit._internal.config import load_settings
from secret_audit._internal.lifecycle import AgentPipeline
from secret_audit._internal.pipeline import AuditPipeline, peek_pipeline
from secret_audit.redis import RedisSecretAuditInstrumentor


def _instrument(env, exporter=None, tracer_provider=None):
    settings = load_settings({"OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS": "20", **env})
    kwargs = {"settings": settings}
    if exporter is not None:
        kwargs["audit_exporter"] = exporter
    if tracer_provider is not None:
        kwargs["tracer_provider"] = tracer_provider
    RedisSecretAuditInstrumentor().instrument(**kwargs)
    pipeline = peek_pipeline()
    agent = settings.agent == "process" and exporter is None and tracer_provider is None
    assert isinstance(pipeline, AgentPipeline if agent else AuditPipeline)
    return pipeline


# The OTLP settings below are the user's, whoever sends: each runs in-process (AGENT=off) and with the agent.
BOTH_MODES = pytest.mark.parametrize("agent", ["off", "process"])


@pytest.fixture
def cleanup():
    yield
    RedisSecretAuditInstrumentor().uninstrument()
    retire_pipeline()


@pytest.mark.parametrize("audit_env", [{"OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS": "20"}])
def test_default_in_trace_mode_spans_only_inside_a_trace(audit, redis_url, key):
    client = redis.Redis.from_url(redis_url)
    client.get(key)
    assert audit.spans() == []
    [rec] = audit.records()
    assert rec.trace_id == 0
    audit.clear()
    with audit.tracer_provider.get_tracer("t").start_as_current_span("request") as parent:
        client.get(key)
    spans = {s.name: s for s in audit.spans()}
    assert set(spans) == {"request", "secret.read"}
    [rec] = audit.records()
    assert rec.trace_id == parent.get_span_context().trace_id
    assert rec.span_id == spans["secret.read"].context.span_id


@pytest.mark.parametrize(
    "audit_env",
    [{"OTEL_PYTHON_SECRET_AUDIT_SPANS": "errors", "OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS": "20"}],
)
def test_errors_mode_spans_only_failures(audit, redis_url, key):
    client = redis.Redis.from_url(redis_url)
    client.hset(key, "f", "v")
    with pytest.raises(redis.exceptions.ResponseError):
        client.get(key)
    spans = audit.spans()
    assert [s.attributes["audit.action"] for s in spans] == ["GET"]
    assert len(audit.records()) == 2


@pytest.mark.parametrize(
    "audit_env",
    [{"OTEL_PYTHON_SECRET_AUDIT_SPANS": "off", "OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS": "20"}],
)
def test_off_mode_makes_no_spans_but_keeps_records(audit, redis_url, key):
    client = redis.Redis.from_url(redis_url)
    with audit.tracer_provider.get_tracer("t").start_as_current_span("request"):
        client.set(key, "v")
    assert [s.name for s in audit.spans()] == ["request"]
    [rec] = audit.records()
    assert rec.trace_id != 0  # still correlated with the caller's trace


class GateExporter(InMemoryLogRecordExporter):
    """Blocks every export until released, to fill the queue deterministically."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def export(self, batch):
        self.gate.wait(30)
        return super().export(batch)


def test_queue_full_drops_are_counted_and_reported_in_the_stream(redis_url, key, cleanup):
    exporter = GateExporter()
    pipeline = _instrument(
        {
            "OTEL_PYTHON_SECRET_AUDIT_QUEUE_SIZE": "64",
            "OTEL_PYTHON_SECRET_AUDIT_BATCH_SIZE": "8",
            "OTEL_PYTHON_SECRET_AUDIT_QUEUE_FULL_TIMEOUT_MS": "0",
        },
        exporter,
    )
    client = redis.Redis.from_url(redis_url)
    for _ in range(300):
        client.get(key)
    dropped = pipeline.stats()["dropped_queue_full"]
    assert 0 < dropped < 300
    exporter.gate.set()
    assert pipeline.flush(30)
    logs = [r.log_record for r in exporter.get_finished_logs()]
    access = [r for r in logs if r.event_name == "secret.access"]
    reports = [r for r in logs if r.event_name == "audit.dropped"]
    assert len(access) == 300 - dropped
    assert sum(r.attributes["audit.dropped.count"] for r in reports) == dropped
    assert {r.attributes["audit.dropped.reason"] for r in reports} == {"queue_full"}
    seqs = sorted(r.attributes["audit.sequence"] for r in logs)
    assert seqs == list(range(1, len(logs) + 1))  # the reports are chained like any record


class SlowExporter(InMemoryLogRecordExporter):
    def export(self, batch):
        time.sleep(0.005)
        return super().export(batch)


def test_backpressure_slows_callers_instead_of_losing_records(redis_url, key, cleanup):
    exporter = SlowExporter()
    pipeline = _instrument(
        {
            "OTEL_PYTHON_SECRET_AUDIT_QUEUE_SIZE": "64",
            "OTEL_PYTHON_SECRET_AUDIT_BATCH_SIZE": "4",
            "OTEL_PYTHON_SECRET_AUDIT_QUEUE_FULL_TIMEOUT_MS": "10000",
        },
        exporter,
    )
    client = redis.Redis.from_url(redis_url)
    for _ in range(600):
        client.get(key)
    assert pipeline.flush(60)
    assert pipeline.stats()["dropped_queue_full"] == 0
    seqs = [r.log_record.attributes["audit.sequence"] for r in exporter.get_finished_logs()]
    assert seqs == list(range(1, 601))


class FlakyExporter(InMemoryLogRecordExporter):
    def __init__(self) -> None:
        super().__init__()
        self.failing = True

    def export(self, batch):
        if self.failing:
            return LogRecordExportResult.FAILURE
        return super().export(batch)


def test_export_failures_are_reported_with_the_exact_lost_range(redis_url, key, cleanup):
    exporter = FlakyExporter()
    pipeline = _instrument({"OTEL_PYTHON_SECRET_AUDIT_EXPORT_RETRY_TIMEOUT_MS": "0"}, exporter)
    client = redis.Redis.from_url(redis_url)
    for _ in range(5):
        client.get(key)
    assert pipeline.flush(10)
    assert pipeline.stats()["lost_export"] == 5
    exporter.failing = False
    client.get(key)
    assert pipeline.flush(10)
    logs = [r.log_record for r in exporter.get_finished_logs()]
    [report] = [r for r in logs if r.event_name == "audit.dropped"]
    assert report.attributes["audit.dropped.reason"] == "export_failed"
    assert (report.attributes["audit.dropped.first_sequence"], report.attributes["audit.dropped.last_sequence"]) == (1, 5)
    assert [r.attributes["audit.sequence"] for r in logs] == [6, 7]


@BOTH_MODES
def test_fast_http_sender_with_gzip_and_headers(redis_url, key, cleanup, monkeypatch, agent):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    with otlp_receiver() as rx:
        pipeline = _instrument(
            {
                "OTEL_PYTHON_SECRET_AUDIT_AGENT": agent,
                "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT": rx.url + "/v1/logs",
                "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20s3cr3t-token",
            }
        )
        client = redis.Redis.from_url(redis_url)
        client.set(key, "v")
        client.get(key)
        assert pipeline.flush(10)
        records = rx.audit_records()
        headers = rx.headers[-1]
    assert [r["attributes"]["audit.action"] for r in records] == ["SET", "GET"]
    assert headers["content-encoding"] == "gzip"
    assert headers["authorization"] == "Bearer s3cr3t-token"
    assert headers["user-agent"].startswith("otel-secret-audit/")


def _send_empty(endpoint):
    from secret_audit._internal.senders import build_sender

    sender = build_sender("http/protobuf", endpoint, None)
    try:
        return sender.send(b"")
    finally:
        sender.close()


def test_fast_http_sender_goes_through_the_environment_proxy(cleanup, monkeypatch):
    from secret_audit._internal.senders import SendResult

    with otlp_receiver() as proxy:  # a plain-HTTP proxy gets absolute-URI requests; it answers them
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        assert _send_empty("http://collector.invalid:4318/v1/logs") == SendResult.OK
        assert len(proxy.raw) == 1
        # no_proxy wins: the same endpoint is then tried directly, and does not resolve
        monkeypatch.setenv("no_proxy", "collector.invalid")
        assert _send_empty("http://collector.invalid:4318/v1/logs") == SendResult.RETRY
        assert len(proxy.raw) == 1


@BOTH_MODES
def test_fast_grpc_sender_against_a_real_grpc_logs_service(redis_url, key, cleanup, agent):
    received: list[ExportLogsServiceRequest] = []

    def export(request_bytes, context):
        received.append(ExportLogsServiceRequest.FromString(request_bytes))
        return ExportLogsServiceResponse().SerializeToString()

    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.logs.v1.LogsService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        pipeline = _instrument(
            {
                "OTEL_PYTHON_SECRET_AUDIT_AGENT": agent,
                "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_PROTOCOL": "grpc",
            }
        )
        client = redis.Redis.from_url(redis_url)
        client.get(key)
        assert pipeline.flush(10)
    finally:
        server.stop(0)
    records = [lr for req in received for rl in req.resource_logs for sl in rl.scope_logs for lr in sl.log_records]
    assert len(records) == 1
    attrs = {kv.key: any_value(kv.value) for kv in records[0].attributes}
    assert attrs["secret.name"] == key
    assert attrs["audit.outcome"] == "not_found"


@BOTH_MODES
def test_sdk_encoder_setting_uses_the_stock_exporter(redis_url, key, cleanup, agent):
    with otlp_receiver() as rx:
        pipeline = _instrument(
            {
                "OTEL_PYTHON_SECRET_AUDIT_AGENT": agent,
                "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT": rx.url + "/v1/logs",
                "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_PYTHON_SECRET_AUDIT_ENCODER": "sdk",
            }
        )
        redis.Redis.from_url(redis_url).get(key)
        assert pipeline.flush(20)
        records = rx.audit_records()
        agent = rx.headers[-1]["user-agent"]
    assert agent.startswith("OTel-OTLP-Exporter-Python")
    assert [r["attributes"]["secret.name"] for r in records] == [key]


def test_pipeline_records_coalesce_identical_accesses(redis_url, key, cleanup):
    exporter = InMemoryLogRecordExporter()
    pipeline = _instrument({}, exporter)
    client = redis.Redis.from_url(redis_url)
    client.set(key, "v")
    pipe = client.pipeline(transaction=False)
    for _ in range(100):
        pipe.get(key)
    pipe.get(key + ":other")
    pipe.get("page-cache:1")
    pipe.execute()
    assert pipeline.flush(10)
    recs = [dict(r.log_record.attributes) for r in exporter.get_finished_logs()][1:]
    assert [(r["secret.name"], r.get("audit.count"), r["audit.outcome"]) for r in recs] == [
        (key, 100, "success"),
        (key + ":other", None, "not_found"),
    ]


def test_a_second_wiring_shares_or_takes_over_the_stream_without_losing_records(redis_url, key, cleanup):
    from secret_audit._internal.bootstrap import pipeline_for

    first_exporter = InMemoryLogRecordExporter()
    first = _instrument({}, first_exporter)
    # Same settings and parts (e.g. the GCP instrumentor wired like the Redis one): one stream.
    assert pipeline_for({"settings": first.settings, "audit_exporter": first_exporter}) is first
    # Different parts replace the pipeline; wrappers bound to the old one hand records over.
    second_exporter = InMemoryLogRecordExporter()
    second = pipeline_for({"settings": first.settings, "audit_exporter": second_exporter})
    assert second is not first
    redis.Redis.from_url(redis_url).get(key)
    assert second.flush(10)
    assert [r.log_record.attributes["secret.name"] for r in second_exporter.get_finished_logs()] == [key]
