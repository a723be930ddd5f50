"""Fail-closed for Redis: no value without a durable record; refused up front while audit is down."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis

from conftest import retire_pipeline
from otlp_receiver import otlp_receiver
from secret_audit import AuditUnavailableError
from secret_audit._internal.config import load_settings
from secret_audit._internal.pipeline import peek_pipeline
from secret_audit.redis import RedisSecretAuditInstrumentor


@pytest.fixture
def closed(tmp_path):
    made = []

    def make(url, **extra):
        env = {
            "OTEL_PYTHON_SECRET_AUDIT_FAILURE_MODE": "closed",
            "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT": url + "/v1/logs",
            "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_PYTHON_SECRET_AUDIT_FAIL_CLOSED_TIMEOUT_MS": "3000",
            "OTEL_PYTHON_SECRET_AUDIT_EXPORT_RETRY_TIMEOUT_MS": "0",
            "OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR": "off",  # acknowledgements only, unless a test spools
            **extra,
        }
        RedisSecretAuditInstrumentor().instrument(settings=load_settings(env))
        made.append(peek_pipeline())
        return made[-1]

    yield make
    RedisSecretAuditInstrumentor().uninstrument()
    retire_pipeline()


def test_value_returned_only_once_its_record_is_acknowledged(closed, redis_url, key):
    with otlp_receiver() as rx:
        closed(rx.url)
        client = redis.Redis.from_url(redis_url)
        client.set(key, "v")
        assert client.get(key) == b"v"
        # both records were acknowledged by the receiver before each call returned
        actions = [r["attributes"]["audit.action"] for r in rx.audit_records()]
    assert actions == ["SET", "GET"]


def test_unavailable_endpoint_refuses_the_value_then_refuses_up_front(closed, redis_url, key):
    with otlp_receiver() as rx:
        rx.status = 503
        pipeline = closed(rx.url)
        client = redis.Redis.from_url(redis_url)
        with pytest.raises(AuditUnavailableError) as info:
            client.get(key)
        assert key not in str(info.value)
        assert pipeline.accepting() is False
        with pytest.raises(AuditUnavailableError):
            client.set(key, "never-written")
        rx.status = 200
    plain_value = redis.Redis.from_url(redis_url)
    RedisSecretAuditInstrumentor().uninstrument()
    assert plain_value.get(key) is None  # refused before the call: the write never happened


def test_spooled_records_count_as_durable(closed, redis_url, key, tmp_path):
    with otlp_receiver() as rx:
        rx.status = 503
        pipeline = closed(rx.url, OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR=str(tmp_path))
        client = redis.Redis.from_url(redis_url)
        client.set(key, "v")
        assert client.get(key) == b"v"
        assert pipeline.stats()["spooled"] == 2


def test_async_and_pipeline_calls_are_fail_closed_too(closed, redis_url, key):
    with otlp_receiver() as rx:
        rx.status = 503
        closed(rx.url)

        async def go():
            client = aioredis.Redis.from_url(redis_url)
            try:
                await client.get(key)
            finally:
                await client.aclose()

        with pytest.raises(AuditUnavailableError):
            asyncio.run(go())
        pipe = redis.Redis.from_url(redis_url).pipeline()
        pipe.get(key)
        with pytest.raises(AuditUnavailableError):
            pipe.execute()
        pipe.reset()
        # a pipeline without secret keys is not held back by the audit outage
        other = redis.Redis.from_url(redis_url).pipeline()
        other.get("page-cache:1")
        assert other.execute() == [None]


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_record_that_cannot_be_built_refuses_the_value_and_is_counted(closed, redis_url, key, monkeypatch, flavour):
    """One spelling of fail-closed for every source and flavour: a record our code fails to make
    refuses the value ("unbuilt", reported in the stream) and counts one error in stats()."""
    from secret_audit._internal.redis_calls import Commands

    plain = Commands.access
    calls = []

    def broken_once(*args):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("audit bug")
        return plain(*args)

    redis.Redis.from_url(redis_url).set(key, "v")
    monkeypatch.setattr(Commands, "access", broken_once)  # the wrappers take it when instrumented
    with otlp_receiver() as rx:
        pipeline = closed(rx.url)

        async def go():
            client = aioredis.Redis.from_url(redis_url)
            try:
                return await client.get(key)
            finally:
                await client.aclose()

        with pytest.raises(AuditUnavailableError, match="could not be built"):
            redis.Redis.from_url(redis_url).get(key) if flavour == "sync" else asyncio.run(go())
        assert pipeline.stats()["call_errors"] == 1
        assert pipeline.stats()["refused"] == {"unbuilt": 1}
        assert redis.Redis.from_url(redis_url).get(key) == b"v"  # served again, and audited
        refused = [r["attributes"] for r in rx.logs if r["event_name"] == "audit.refused"]
    assert [(a["audit.refused.reason"], a["audit.refused.count"]) for a in refused] == [("unbuilt", 1)]
