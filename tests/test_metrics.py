"""The pipeline's OpenTelemetry metrics: counted by the worker, read at collection, off the caller's path."""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from conftest import retire_pipeline
from otlp_receiver import otlp_receiver
from secret_audit import AuditUnavailableError
from secret_audit._internal import meters
from secret_audit._internal.config import load_settings
from secret_audit._internal.pipeline import peek_pipeline
from secret_audit.redis import RedisSecretAuditInstrumentor
from test_launcher_e2e import launch

HERE = Path(__file__).parent
DOC = (HERE.parent / "docs" / "semantic-conventions.md").read_text()


def points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    """Every data point collected now, by metric name: (attributes, value or histogram point)."""
    out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    value = getattr(p, "value", p)
                    out.setdefault(metric.name, []).append((dict(p.attributes or {}), value))
    return out


def value(collected: dict[str, list[tuple[dict[str, Any], Any]]], name: str, **attrs: str) -> Any:
    matching = [v for a, v in collected.get(name, []) if a == attrs]
    assert len(matching) == 1, (name, attrs, collected.get(name))
    return matching[0]


@pytest.fixture
def metered():
    """Instrument Redis with settings, exporting OTLP/HTTP to a receiver, and a metric reader of our own."""
    made: list[Any] = []

    def make(url: str, **extra: str) -> tuple[InMemoryMetricReader, Any]:
        env = {
            "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT": url + "/v1/logs",
            "OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS": "20",
            "OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR": "off",  # losses are lost, unless a test spools
            **extra,
        }
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        made.append(provider)
        RedisSecretAuditInstrumentor().instrument(settings=load_settings(env), meter_provider=provider)
        return reader, peek_pipeline()

    yield make
    RedisSecretAuditInstrumentor().uninstrument()
    retire_pipeline()
    for provider in made:
        provider.shutdown()


# queue.capacity: QUEUE_SIZE (65,536 by default) in-process; with the agent the ring's bound, QUEUE_SIZE
# up to its 16,384 slots
@pytest.mark.parametrize(("agent", "capacity"), [("process", 16384), ("off", 65536)])
def test_records_made_and_exported_by_source_and_outcome(metered, redis_url, key, agent, capacity):
    with otlp_receiver() as rx:
        reader, pipeline = metered(rx.url, OTEL_PYTHON_SECRET_AUDIT_AGENT=agent)
        client = redis.Redis.from_url(redis_url)
        client.set(key, "v")
        client.get(key)
        client.get(key + ":missing")
        assert pipeline.flush(10)
        got = points(reader)
        stored = len(rx.audit_records())
    assert stored == 3
    ok = {"event.name": "secret.access", "secret.source": "redis", "audit.outcome": "success"}
    missing = {**ok, "audit.outcome": "not_found"}
    for name in ("secret_audit.record.created", "secret_audit.record.exported"):
        assert value(got, name, **ok) == 2
        assert value(got, name, **missing) == 1
    assert value(got, "secret_audit.queue.size") == 0
    assert value(got, "secret_audit.queue.capacity") == capacity
    assert value(got, "secret_audit.pipeline.degraded") == 0
    assert {a["audit.dropped.reason"]: v for a, v in got["secret_audit.record.lost"]} == {
        "queue_full": 0, "export_failed": 0, "build_failed": 0}
    histogram = value(got, "secret_audit.export.duration")  # successful requests: no error.type
    assert histogram.count >= 1
    assert 0 < histogram.sum < 10


def test_spooled_and_replayed_records_are_counted(metered, redis_url, key, tmp_path):
    with otlp_receiver() as rx:
        rx.status = 503
        reader, pipeline = metered(rx.url, OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR=str(tmp_path))
        client = redis.Redis.from_url(redis_url)
        client.set(key, "v")
        assert pipeline.flush(10)
        got = points(reader)
        ok = {"event.name": "secret.access", "secret.source": "redis", "audit.outcome": "success"}
        assert value(got, "secret_audit.record.spooled", **ok) == 1
        assert value(got, "secret_audit.record.exported", **ok) == 0
        assert value(got, "secret_audit.export.duration", **{"error.type": "unavailable"}).count >= 1
        rx.status = 200
        deadline = time.monotonic() + 10
        while value(points(reader), "secret_audit.record.replayed") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert value(points(reader), "secret_audit.record.replayed") == 1


def test_a_lost_batch_is_counted_by_cause(metered, redis_url, key):
    # no spool and no retry time: the endpoint's failure loses the batch, and it is counted as such
    with otlp_receiver() as rx:
        rx.status = 503
        # a long schedule: the loss report of the lost batch (lost in turn) waits for a later flush
        reader, pipeline = metered(rx.url, OTEL_PYTHON_SECRET_AUDIT_EXPORT_RETRY_TIMEOUT_MS="0",
                                   OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS="60000")
        redis.Redis.from_url(redis_url).get(key)
        assert pipeline.flush(10)
        got = points(reader)
    assert value(got, "secret_audit.record.lost", **{"audit.dropped.reason": "export_failed"}) == 1


def test_fail_closed_refusals_are_counted_and_reported_in_the_stream(metered, redis_url, key):
    with otlp_receiver() as rx:
        rx.status = 503
        reader, pipeline = metered(rx.url, OTEL_PYTHON_SECRET_AUDIT_FAILURE_MODE="closed",
                                   OTEL_PYTHON_SECRET_AUDIT_EXPORT_RETRY_TIMEOUT_MS="0",
                                   OTEL_PYTHON_SECRET_AUDIT_FAIL_CLOSED_TIMEOUT_MS="3000",
                                   OTEL_PYTHON_SECRET_AUDIT_PRINCIPAL="svc@test")
        client = redis.Redis.from_url(redis_url)
        with pytest.raises(AuditUnavailableError):
            client.get(key)  # ran, but its record was not durable
        for _ in range(2):
            with pytest.raises(AuditUnavailableError):
                client.get(key)  # refused before the call
        got = points(reader)
        assert value(got, "secret_audit.call.refused", **{"audit.refused.reason": "not_durable"}) == 1
        assert value(got, "secret_audit.call.refused", **{"audit.refused.reason": "unavailable"}) == 2
        assert value(got, "secret_audit.pipeline.degraded") == 1
        rx.status = 200
        deadline = time.monotonic() + 15
        reported: dict[str, int] = {}
        while sum(reported.values()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
            with rx.lock:
                refused = [r["attributes"] for r in rx.logs if r["event_name"] == "audit.refused"]
            reported = {}
            for a in refused:
                reason = a["audit.refused.reason"]
                reported[reason] = reported.get(reason, 0) + a["audit.refused.count"]
    # reported once each, though the first reports went out in requests the endpoint refused
    assert reported == {"not_durable": 1, "unavailable": 2}
    assert {a["audit.principal"] for a in refused} == {"svc@test"}
    assert {a["audit.outcome"] for a in refused} == {"error"}


@pytest.fixture
def spied(monkeypatch) -> tuple[set[str], list[str]]:
    """The threads that record the export histogram, and those that read the counters (``_current``)."""
    threads: set[str] = set()
    calls: list[str] = []
    real, original = meters.record_export, meters._current

    def spy(seconds: float, result: str) -> None:
        threads.add(threading.current_thread().name)
        real(seconds, result)

    def counted() -> Any:
        calls.append(threading.current_thread().name)
        return original()

    monkeypatch.setattr(meters, "record_export", spy)
    monkeypatch.setattr(meters, "_current", counted)
    return threads, calls


def test_the_caller_never_records_a_metric(metered, redis_url, key, spied):
    """Callers only enqueue: the histogram is recorded by the worker and sender threads, and the
    counters are read by the reader's collection, never on a secret call. In-process (its thread names);
    with the agent: tests/test_agent_metrics.py::test_the_caller_never_records_a_metric_with_the_agent."""
    threads, calls = spied
    with otlp_receiver() as rx:
        reader, pipeline = metered(rx.url, OTEL_PYTHON_SECRET_AUDIT_AGENT="off")  # pins in-process threads
        client = redis.Redis.from_url(redis_url)
        for _ in range(50):
            client.get(key)
        assert calls == []  # nothing read the counters while the app worked
        assert pipeline.flush(10)
        points(reader)
    assert threads
    assert threads <= {"secret-audit-worker", "secret-audit-sender"}
    assert calls
    assert set(calls) == {threading.current_thread().name}


def test_metrics_carry_no_secret_name_or_value(metered, redis_url):
    canary_key = "secret:canary-" + secrets.token_hex(8)
    canary = "canary-value-" + secrets.token_hex(16)
    with otlp_receiver() as rx:
        reader, pipeline = metered(rx.url)
        client = redis.Redis.from_url(redis_url)
        client.set(canary_key, canary)
        client.get(canary_key)
        assert pipeline.flush(10)
        text = repr(points(reader))
    assert "secret_audit.record.created" in text
    assert canary not in text
    assert canary_key not in text  # a key name as an attribute would also be unbounded cardinality


def test_every_instrument_is_in_the_semantic_conventions_metrics_table():
    for name, (kind, unit, _) in meters.INSTRUMENTS.items():
        row = [line for line in DOC.splitlines() if line.startswith(f"| `{name}` |")]
        assert len(row) == 1, name
        assert f"`{unit}`" in row[0], (name, unit)


def test_under_the_launcher_metrics_reach_the_apps_otlp_metrics_exporter(redis_url):
    key = "secret:metrics:" + secrets.token_hex(4)
    with otlp_receiver() as rx:
        proc = launch(rx.url, redis_url, str(HERE / "apps" / "launcher_app.py"), key, "v",
                      OTEL_METRICS_EXPORTER="otlp", OTEL_METRIC_EXPORT_INTERVAL="200")
        assert proc.returncode == 0, proc.stderr
        created = rx.latest("secret_audit.record.created")
        exported = rx.latest("secret_audit.record.exported")
        duration = rx.latest("secret_audit.export.duration")
        records = rx.audit_records()
    assert created is not None
    assert exported is not None
    assert duration is not None
    assert created["scope"] == "secret_audit"
    assert created["resource"]["service.name"] == "launcher-e2e"
    assert created["unit"] == "{record}"
    assert created["kind"] == "sum"
    assert created["monotonic"]
    by_outcome = {p["attributes"]["audit.outcome"]: p["value"] for p in created["points"]
                  if p["attributes"]["event.name"] == "secret.access"}
    assert by_outcome == {"success": 3, "not_found": 1}
    assert sum(p["value"] for p in exported["points"]) == len(records) == 4
    assert duration["unit"] == "s"
    assert duration["kind"] == "histogram"
    assert sum(p["count"] for p in duration["points"]) >= 1
