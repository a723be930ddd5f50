"""The async short way (``single_wrapper(..., is_async=True)``: redis.asyncio and its cluster): taken when
awaited, in that context; fail-closed keeps the general way; with a real agent the same records and audit
spans as the general path, no value anywhere (the Accesses against the general path: test_redis_single)."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.exceptions
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider

from otlp_receiver import otlp_receiver
from secret_audit._internal.callcore import CallCore
from secret_audit._internal.matcher import KeyMatcher
from secret_audit._internal.redis_calls import Commands, Wrappers
from secret_audit._internal.redis_commands import UNKNOWN_COMMAND
from secret_audit._internal.redis_pipelines import PipelineItems
from secret_audit._internal.redis_single import single_wrapper
from secret_audit.exceptions import AuditUnavailableError
from test_redis_single import CANARY, Recorder, _items, drive

P = "OTEL_PYTHON_SECRET_AUDIT_"


class OneByOne(Recorder):
    """A recorder that tells the short way (``submit_one``) from the general one (``submit``)."""

    def __init__(self) -> None:
        super().__init__()
        self.short = 0

    def submit_one(self, source: Any, target: Any, item: Any, start: int, end: int, ctx: Any) -> None:
        from secret_audit._internal.handoff import Handoff

        self.short += 1
        Handoff.submit_one(self, source, target, item, start, end, ctx)  # type: ignore[arg-type]


def test_an_async_single_key_call_takes_the_short_way_in_the_context_it_is_awaited_in() -> None:
    """A secret GET, SET or HGET of redis.asyncio goes by ``submit_one`` (not the general ``submit``); DEL
    (any number of keys) the general way, as the sync short way leaves it; a plain key hands off nothing;
    the context is the one the coroutine is awaited in, as the general path's, not the one it was made in."""
    rec = OneByOne()
    wrappers = Wrappers(rec, KeyMatcher(["secret:*"]))  # type: ignore[arg-type]
    tracer = TracerProvider().get_tracer("test")

    async def call(*args: Any, **kwargs: Any) -> Any:
        return b"v"

    made = [wrappers.async_execute_command(call, object(), args, {})
            for args in (("GET", "secret:a"), ("SET", "secret:a", CANARY), ("HGET", "secret:h", "f"),
                         ("DEL", "secret:a"), ("GET", "plain:b"))]
    with tracer.start_as_current_span("request"):
        awaited_in = otel_context.get_current()
        assert [drive(c) for c in made] == [b"v"] * 5
    assert (rec.short, len(rec.got)) == (3, 4)
    assert [a.context for a in rec.got] == [awaited_in] * 4
    assert [(i.name, i.action) for a in rec.got for i in _items(a)] == [
        ("secret:a", "GET"), ("secret:a", "SET"), ("secret:h", "HGET"), ("secret:a", "DEL")]


def test_fail_closed_async_calls_keep_the_general_way() -> None:
    """Fail-closed: a secret async GET is refused before it runs while records cannot be made durable
    (the general way's check; the short way would have run it), a plain one runs untouched."""
    rec = OneByOne()
    refused: list[str] = []
    rec.accepting = lambda: False  # type: ignore[attr-defined]
    rec.refuse = refused.append  # type: ignore[attr-defined]
    commands = Commands(KeyMatcher(["secret:*"]), None, lambda: None)
    classified = PipelineItems(commands.is_secret, None, commands.describe, commands.items)
    wrapper = single_wrapper(CallCore(rec, closed=True), commands, classified, is_async=True)  # type: ignore[arg-type]
    ran: list[Any] = []

    async def call(*args: Any, **kwargs: Any) -> Any:
        ran.append(args)
        return b"v"

    with pytest.raises(AuditUnavailableError):
        drive(wrapper(call, object(), ("GET", "secret:a"), {}))
    assert drive(wrapper(call, object(), ("GET", "plain:a"), {})) == b"v"
    assert (ran, refused, rec.short, rec.got) == ([("GET", "plain:a")], ["unavailable"], 0, [])


@pytest.fixture
def agent_async(redis_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, ...]]:
    """A real agent making the audit spans (SPANS_VIA=agent), exporting records and spans to a receiver;
    the async short way and the general async wrapper on one hand-off."""
    from secret_audit._internal import agent_wire
    from secret_audit._internal.agent_client import AgentHandoff
    from secret_audit._internal.config import load_settings

    with otlp_receiver() as rx:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", rx.url + "/v1/traces")
        settings = load_settings({P + "EXPORTER_OTLP_ENDPOINT": rx.url + "/v1/logs", P + "AGENT": "process",
                                  P + "SPOOL_DIR": str(tmp_path / "spool"), P + "SPANS_VIA": "agent",
                                  P + "SPANS": "all", P + "SCHEDULE_DELAY_MS": "20"})
        address = agent_wire.agent_address()
        handoff = AgentHandoff(settings, address, agent_wire.spawn(address, settings))
        handoff._via_agent = True
        assert handoff.register() is not None
        wrappers = Wrappers(handoff, KeyMatcher(["secret:*"]))
        general = CallCore(handoff).wrapper(Commands(KeyMatcher(["secret:*"]), UNKNOWN_COMMAND, lambda: None),
                                            is_async=True)
        try:
            yield handoff, wrappers.async_execute_command, general, rx
        finally:
            handoff.close(10)


_VOLATILE = {"audit.event.id", "audit.sequence", "audit.chain.prev", "audit.chain.hash", "audit.record.id", "audit.start",
             "audit.end", "audit.duration_ms"}


def _same(attributes: dict[str, Any]) -> dict[str, Any]:
    """A record's or span's attributes that two runs of the same calls share (no times, sequence, chain)."""
    return {k: v for k, v in attributes.items() if k not in _VOLATILE and "time" not in k and "chain" not in k
            and "sequence" not in k and "duration" not in k}


def _timeless(body: str) -> str:
    """A record's body without the call's duration."""
    return re.sub(r"\(\d+\.\d+ms\)", "(ms)", body)


async def test_async_short_way_records_and_spans_are_the_general_paths(agent_async: Any, redis_url: str) -> None:
    """GET (hit, miss), SET, DEL (hit, miss) and a WRONGTYPE error, in a request span and outside one, by
    the async short way and then by the general async wrapper against a real agent: the same replies and
    errors, the same records and audit spans (times, sequence and chain aside), never the value."""
    handoff, fast, slow, rx = agent_async
    client = redis.asyncio.Redis.from_url(redis_url)
    tracer = TracerProvider().get_tracer("test")
    key = "secret:async-short:" + secrets.token_hex(4)
    calls = [("SET", key, CANARY), ("GET", key), ("GET", key + ":missing"), ("GETDEL", key), ("DEL", key),
             ("HSET", key + ":h", "f", CANARY), ("GET", key + ":h"), ("GET", "plain:async-short")]
    got, requests = [], []
    try:
        for wrapper in (fast, slow):
            await client.delete(key, key + ":h")
            replies: list[Any] = []
            for in_span in (True, False):
                with tracer.start_as_current_span("request") if in_span else _nothing() as request:
                    for args in calls:
                        try:
                            replies.append(await wrapper(client.execute_command, client, args, {}))
                        except redis.exceptions.ResponseError as exc:
                            replies.append((type(exc), str(exc)))
                if request is not None:
                    requests.append(request.get_span_context().span_id)
            got.append(replies)
    finally:
        await client.aclose()
    assert got[0] == got[1]
    assert got[0][6][0] is redis.exceptions.ResponseError  # the WRONGTYPE error went through unchanged
    assert handoff.flush(10)
    per_run = 2 * 7  # seven secret calls, in a span and outside
    deadline = time.monotonic() + 20
    while (len(rx.audit_records()) < 2 * per_run or len([s for s in rx.spans if s["name"].startswith("secret.")])
           < 2 * per_run) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # and nothing more comes
    records = rx.audit_records()
    spans = [s for s in rx.spans if s["name"].startswith("secret.")]
    assert len(records) == len(spans) == 2 * per_run
    assert [_same(r["attributes"]) for r in records[:per_run]] == [_same(r["attributes"]) for r in records[per_run:]]
    assert [(r["severity_number"], _timeless(r["body"]), r["flags"]) for r in records[:per_run]] == [
        (r["severity_number"], _timeless(r["body"]), r["flags"]) for r in records[per_run:]]
    outcomes = [(r["attributes"]["audit.action"], r["attributes"]["audit.outcome"]) for r in records[:7]]
    assert outcomes == [("SET", "success"), ("GET", "success"), ("GET", "not_found"), ("GETDEL", "success"),
                        ("DEL", "not_found"), ("HSET", "success"), ("GET", "error")]
    by_id = {s["span_id"]: s for s in spans}
    for run, request_id in enumerate(requests):
        in_span = records[run * per_run:run * per_run + 7]
        assert [by_id[r["span_id"]]["parent_span_id"] for r in in_span] == [f"{request_id:016x}"] * 7
        outside = records[run * per_run + 7:(run + 1) * per_run]  # SPANS=all: a root span each
        assert [by_id[r["span_id"]]["parent_span_id"] for r in outside] == [""] * 7
    spans_of = [[by_id[r["span_id"]] for r in records[run * per_run:(run + 1) * per_run]] for run in (0, 1)]
    assert [(s["name"], s["status"], s["flags"], _same(s["attributes"])) for s in spans_of[0]] == [
        (s["name"], s["status"], s["flags"], _same(s["attributes"])) for s in spans_of[1]]
    assert CANARY.encode() not in b"".join(rx.raw)
    assert handoff.errors == 0


class _nothing:
    """No request span: the calls run outside a trace."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
