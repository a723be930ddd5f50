"""Living with the official RedisInstrumentor, instrument/uninstrument hygiene, and fail-safety."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import redis
import redis.asyncio
import redis.asyncio.client
import redis.asyncio.cluster
import redis.client
import redis.cluster
from opentelemetry.instrumentation.redis import RedisInstrumentor

from conftest import Audit, retire_pipeline
from otlp_receiver import otlp_receiver
from secret_audit._internal import pipeline as pipeline_mod
from secret_audit._internal.handoff import Handoff
from secret_audit._internal.redis_source import RedisSource
from secret_audit.redis import RedisSecretAuditInstrumentor
from test_launcher_e2e import launch as launch_app

HERE = Path(__file__).parent

TARGETS = [
    (redis.client.Redis, "execute_command"),
    (redis.client.Pipeline, "execute"),
    (redis.client.Pipeline, "immediate_execute_command"),
    (redis.cluster.RedisCluster, "execute_command"),
    (redis.cluster.ClusterPipeline, "execute"),
    (redis.asyncio.client.Redis, "execute_command"),
    (redis.asyncio.client.Pipeline, "execute"),
    (redis.asyncio.client.Pipeline, "immediate_execute_command"),
    (redis.asyncio.cluster.RedisCluster, "execute_command"),
    (redis.asyncio.cluster.ClusterPipeline, "execute"),
    (redis.cluster.TransactionStrategy, "_immediate_execute_command"),
    (redis.client.Pipeline, "raise_first_error"),
    (redis.asyncio.client.Pipeline, "raise_first_error"),
    (redis.asyncio.cluster.TransactionStrategy, "_immediate_execute_command"),
]


def current():
    return {(cls, attr): cls.__dict__.get(attr) for cls, attr in TARGETS}


@pytest.fixture
def env():
    """Our instrumentor and the official one, both reporting into one in-memory setup."""
    originals = current()
    helper = Audit({"OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS": "20", "OTEL_PYTHON_SECRET_AUDIT_SPANS": "all"})
    ours = RedisSecretAuditInstrumentor()
    official = RedisInstrumentor()
    try:
        yield helper, ours, official, originals
    finally:
        official.uninstrument()
        ours.uninstrument()
        retire_pipeline()
        assert current() == originals


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def run_calls(r, key):
    r.set(key, "v")
    r.get(key)
    with r.pipeline() as pipe:
        pipe.get(key)
        pipe.execute()


def seen(helper):
    """(our records, our span names, official span names) since the last clear."""
    spans = helper.spans()
    ours = sorted(s.name for s in spans if s.instrumentation_scope.name == "secret_audit")
    theirs = sorted(
        s.name for s in spans if s.instrumentation_scope.name == "opentelemetry.instrumentation.redis"
    )
    recs = [(x["audit.action"], x["secret.name"]) for x in helper.attrs()]
    helper.clear()
    return recs, ours, theirs


OUR_RECORDS = lambda key: [("SET", key), ("GET", key), ("GET", key)]  # noqa: E731
OFFICIAL_SPANS = ["GET", "SET", "redis"]  # the pipeline span is named after... see assertion below


def instrument_ours(helper, ours):
    ours.instrument(**helper.kwargs())


def instrument_official(helper, official):
    official.instrument(tracer_provider=helper.tracer_provider)


@pytest.mark.parametrize("ours_first", [True, False], ids=["ours-first", "official-first"])
def test_both_work_in_either_order_and_either_can_leave(env, r, key, ours_first):
    helper, ours, official, originals = env
    if ours_first:
        instrument_ours(helper, ours)
        instrument_official(helper, official)
    else:
        instrument_official(helper, official)
        instrument_ours(helper, ours)

    run_calls(r, key)
    recs, our_spans, their_spans = seen(helper)
    assert recs == OUR_RECORDS(key)
    assert our_spans == ["secret.read", "secret.read", "secret.write"]
    assert len(their_spans) == 3  # SET, GET and the pipeline

    # the official one leaves: ours keeps working
    official.uninstrument()
    run_calls(r, key)
    recs, our_spans, their_spans = seen(helper)
    assert recs == OUR_RECORDS(key)
    assert their_spans == []

    # it comes back, then ours leaves: the official one keeps working, ours is silent
    instrument_official(helper, official)
    ours.uninstrument()
    run_calls(r, key)
    recs, our_spans, their_spans = seen(helper)
    assert recs == []
    assert our_spans == []
    assert len(their_spans) == 3

    official.uninstrument()
    assert current() == originals
    run_calls(r, key)
    assert seen(helper) == ([], [], [])


def test_instrument_and_uninstrument_are_idempotent_and_restore_originals(env, r, key):
    helper, ours, _official, originals = env
    original_execute_command = redis.Redis.execute_command
    instrument_ours(helper, ours)
    instrument_ours(helper, ours)  # second call: no second layer
    assert redis.Redis.execute_command is not original_execute_command
    r.get(key)
    recs, _, _ = seen(helper)
    assert recs == [("GET", key)]
    ours.uninstrument()
    ours.uninstrument()
    assert redis.Redis.execute_command is original_execute_command
    assert current() == originals
    r.get(key)
    assert seen(helper)[0] == []
    # and it can come back after leaving (a fresh pipeline: the old one shut its exporter down)
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter

    helper.log_exporter = InMemoryLogRecordExporter()
    instrument_ours(helper, ours)
    r.get(key)
    assert seen(helper)[0] == [("GET", key)]


def test_disabled_by_setting_wraps_nothing(env, r, key):
    helper, ours, _official, originals = env
    from secret_audit._internal.config import load_settings

    helper.settings = load_settings({"OTEL_PYTHON_SECRET_AUDIT_ENABLED": "false"})
    instrument_ours(helper, ours)
    assert current() == originals
    r.get(key)
    ours.uninstrument()
    assert current() == originals


def test_failure_inside_submit_never_changes_the_result(env, r, key, monkeypatch):
    helper, ours, _official, _ = env

    def boom(self, access):
        raise RuntimeError("audit pipeline exploded")

    monkeypatch.setattr(Handoff, "submit", boom)
    instrument_ours(helper, ours)
    assert r.set(key, "v") is True
    assert r.get(key) == b"v"
    with r.pipeline() as pipe:
        pipe.get(key)
        pipe.get(key + ":missing")
        assert pipe.execute() == [b"v", None]
    r.hset(key + ":h", "f", "v")
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        r.get(key + ":h")


def test_failure_on_the_worker_never_reaches_the_caller_and_the_worker_survives(env, r, key, monkeypatch):
    helper, ours, _official, _ = env
    calls = []

    def broken_describe_error(self, error):
        calls.append(error)
        raise RuntimeError("describe_error exploded")

    monkeypatch.setattr(RedisSource, "describe_error", broken_describe_error)
    instrument_ours(helper, ours)
    r.hset(key, "f", "v")
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE") as info:
        r.get(key)
    assert type(info.value) is redis.exceptions.ResponseError
    helper.flush()
    assert len(calls) == 1
    # the worker is still alive: later records flow, with a contiguous sequence
    r.set(key + ":next", "v")
    recs = helper.attrs()
    assert ("HSET", "success") in [(x["audit.action"], x["audit.outcome"]) for x in recs]
    assert recs[-1]["secret.name"] == key + ":next"
    seqs = [x["audit.sequence"] for x in recs]
    assert seqs == list(range(1, len(seqs) + 1))
    assert pipeline_mod.peek_pipeline().stats()["internal_errors"] >= 1


def test_failure_inside_key_matching_never_changes_the_result(env, r, key, monkeypatch):
    helper, ours, _official, _ = env
    from secret_audit._internal import matcher

    def broken(self, key):
        raise RuntimeError("matcher exploded")

    monkeypatch.setattr(matcher.KeyMatcher, "__call__", broken)
    instrument_ours(helper, ours)
    assert r.set(key, "v") is True
    assert r.get(key) == b"v"
    with r.pipeline() as pipe:
        pipe.get(key)
        assert pipe.execute() == [b"v"]


def launch(receiver_url, redis_url, **extra):
    """The launcher app under opentelemetry-instrument, as in test_launcher_e2e."""
    return launch_app(
        receiver_url, redis_url, str(HERE / "apps" / "launcher_app.py"),
        "secret:coexist:" + secrets.token_hex(4), "value", OTEL_SERVICE_NAME="coexist", **extra,
    )


@pytest.mark.parametrize(
    ("disabled", "want_ours", "want_official"),
    [("", True, True), ("secret_audit_redis", False, True), ("redis,secret_audit_redis", False, False)],
)
def test_disabled_instrumentations_under_the_launcher(redis_url, disabled, want_ours, want_official):
    with otlp_receiver() as rx:
        proc = launch(rx.url, redis_url, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=disabled)
        assert proc.returncode == 0, proc.stderr
        records = rx.audit_records()
        scopes = {s["name"] for s in rx.spans} if rx.spans else set()
        span_names = [s["name"] for s in rx.spans]
    assert bool(records) is want_ours
    if want_ours:
        assert len(records) == 4
    assert any(n.startswith("secret.") for n in span_names) is want_ours
    assert any(n in ("SET", "GET", "DEL") for n in span_names) is want_official
    assert "handle-request" in span_names
    del scopes
