"""A single-key command's short way (``redis_single``): the same Access as the general path, no value
kept, and with the agent the same slot ``put`` writes, its span ids chosen per access."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.exceptions
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider

from secret_audit._internal.callcore import CallCore
from secret_audit._internal.matcher import KeyMatcher
from secret_audit._internal.redis_calls import Commands, Wrappers
from secret_audit._internal.redis_commands import UNKNOWN_COMMAND
from secret_audit._internal.redis_pipelines import PipelineItems
from secret_audit._internal.redis_single import single_wrapper
from secret_audit._internal.ring import SPAN, Ring, open_ring
from test_agent_caller import serving_agent

CANARY = "canary-value-5d1c-never-recorded"


class Recorder:
    """A hand-off that keeps what it is given (the in-process ``Handoff``'s interface, no queue)."""

    def __init__(self) -> None:
        self.got: list[Any] = []
        self.errors = 0

    def submit(self, access: Any) -> None:
        self.got.append(access)

    def note_error(self) -> None:
        self.errors += 1


def _items(access: Any) -> Any:
    return access.items if access.items is not None else access.expand(access.pending)


_NAMES = ["GET", "get", b"GET", "SET", "HGET", "DEL", "MGET", "EXISTS", "TTL", "INCR", "LPUSH", "HGETALL",
          "SMEMBERS", "XINFO", "ECHO", "PING", "NOSUCHCMD", "KEYS", "JSON.GET", "GETDEL", "LRANGE", "TYPE"]
_KEYS = ["secret:a", "secret:b", b"secret:a", "SECRET:A", "plain:x", b"plain:y", 1, 1.0, 2.5, True, "",
         memoryview(b"secret:a"), bytearray(b"secret:b")]
_REPLIES = [None, b"v", b"", "", [], [b"x"], [None], (), {}, {"f": b"v"}, set(), {b"m"}, 0, 1, 2, -1, -2, True,
            False, "OK", b"OK"]
_ERRORS = [redis.exceptions.ResponseError("WRONGTYPE Operation against a key"),
           redis.exceptions.ConnectionError("Connection reset by peer")]


def drive(coro: Any) -> Any:
    """Run a coroutine that never suspends (its wrapped call returns at once) to its result or error."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the coroutine suspended")


@pytest.mark.parametrize("is_async", [False, True])
@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_NAMES), st.lists(st.sampled_from(_KEYS), max_size=3),
                          st.one_of(st.sampled_from(_REPLIES), st.sampled_from(_ERRORS))), max_size=8))
def test_the_short_way_hands_off_what_the_general_path_does(is_async: bool, calls: list[Any]) -> None:
    """Any command, key and reply (or error), twice (learnt, then from the cache): the same Items, outcome,
    error, client, times and context as the call core's general wrapper, and the same reply or the very
    same error; for an async ``execute_command`` (redis.asyncio), the awaited coroutine's."""
    matcher = KeyMatcher(["secret:*"])
    short, general = Recorder(), Recorder()
    commands = Commands(matcher, UNKNOWN_COMMAND, lambda: None)
    fast = single_wrapper(CallCore(short), commands, PipelineItems(matcher, UNKNOWN_COMMAND, commands.describe,
                                                                   commands.items), is_async=is_async)
    slow = CallCore(general).wrapper(Commands(matcher, UNKNOWN_COMMAND, lambda: None), is_async=is_async)
    client = object()
    run = drive if is_async else (lambda returned: returned)
    for name, keys, reply in calls * 2:
        def call(*args: Any, _reply: Any = reply, **kwargs: Any) -> Any:
            if isinstance(_reply, BaseException):
                raise _reply
            return _reply

        async def call_async(*args: Any, **kwargs: Any) -> Any:
            return call(*args, **kwargs)

        outcomes = []
        for wrapper in (fast, slow):
            try:
                outcomes.append(("returned", run(wrapper(call_async if is_async else call, client, (name, *keys),
                                                         {}))))
            except redis.exceptions.RedisError as exc:
                outcomes.append(("raised", exc))
        assert outcomes[0] == outcomes[1]
        if isinstance(reply, BaseException):
            assert outcomes[0][1] is reply  # the very exception, not a copy
    assert len(short.got) == len(general.got)
    for one, other in zip(short.got, general.got, strict=True):
        assert _items(one) == _items(other)
        assert (one.source, one.target, one.outcome, one.error, one.context) == (
            other.source, other.target, other.outcome, other.error, other.context)
    assert short.errors == general.errors == 0


def test_no_value_enters_the_cache_a_single_call_reads(redis_url: str) -> None:
    """SET, HSET and ECHO with a canary in a value's place: no value in the cache, the Items or the
    agent's kept shape ids (key names and fixed words only)."""
    rec = Recorder()
    client = redis.Redis.from_url(redis_url)
    wrappers = Wrappers(rec, KeyMatcher(["secret:*"]))  # type: ignore[arg-type]
    try:
        for args in (("SET", "secret:single-canary", CANARY), ("HSET", "secret:single-h", "field", CANARY),
                     ("ECHO", CANARY), ("GET", "secret:single-canary")):
            wrappers.execute_command(client.execute_command, client, args, {})
    finally:
        client.close()
    assert [(i.name, i.action) for a in rec.got for i in _items(a)] == [
        ("secret:single-canary", "SET"), ("secret:single-h", "HSET"), ("secret:single-canary", "GET")]
    assert CANARY not in repr([_items(a) for a in rec.got])
    assert CANARY not in repr(wrappers.classified._cache)
    assert CANARY not in repr(wrappers.classified._names)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 7), st.integers(-(2**63), 2**63 - 1), st.integers(-(2**63), 2**63 - 1),
       st.integers(0, 2**128 - 1), st.integers(0, 2**64 - 1), st.integers(0, 255), st.integers(0, 2**32 - 1),
       st.integers(0, 2**64 - 1), st.booleans())
def test_put_one_writes_the_bytes_put_writes(flags: int, start: int, end: int, trace_id: int, span_id: int,
                                             trace_flags: int, sid: int, parent: int, asleep: bool) -> None:
    """``Ring.put_one`` is ``put`` with one shape id: the same slot bytes, index and wake, at any place."""
    rings = []
    for _ in range(2):
        fd, mm = open_ring()
        os.close(fd)
        ring = Ring(mm)
        ring.next = ring._settled = 16384 * 3 - 1  # the last place of a lap, then the first of the next
        ring.set_word(15, int(asleep))
        rings.append(ring)
    for _ in range(2):
        assert rings[0].put(flags, start, end, trace_id, span_id, trace_flags, (sid,), parent) == \
            rings[1].put_one(flags, start, end, trace_id, span_id, trace_flags, sid, parent)
    assert rings[0].mm[:] == rings[1].mm[:]
    assert rings[0].next == rings[1].next
    for ring in rings:
        ring.mm.close()


@pytest.fixture
def agent_get(redis_url: str, tmp_path: Any) -> Iterator[tuple[Any, Any, Any]]:
    """A real agent serving this process's ring, making the audit spans (SPANS_VIA=agent)."""
    with serving_agent(redis_url, tmp_path, via_agent=True) as served:
        yield served


def test_each_access_in_a_request_span_gets_its_own_span_id(agent_get: Any) -> None:
    """Three GETs in one request span, then one outside: each audit span a child of the request span with
    an id of its own (the context's ids are kept, never the last span id); outside a trace no span."""
    handoff, get, rx = agent_get
    key = "secret:" + secrets.token_hex(6)
    tracer = TracerProvider().get_tracer("test")
    first = handoff.ring.next
    for _ in range(2):
        with tracer.start_as_current_span("request") as request:
            for _ in range(3):
                get(key)
        get(key)
    slots = [handoff.ring.slot(i) for i in range(first, handoff.ring.next)]
    parent = request.get_span_context()
    in_span = [s for s in slots if s is not None and s[1] & SPAN]
    assert len(slots) == 8
    assert len(in_span) == 6
    assert {s[4] for s in in_span[3:]} == {parent.trace_id}
    assert {s[8] for s in in_span[3:]} == {parent.span_id}
    assert len({s[5] for s in in_span}) == 6  # every audit span its own id
    assert [s[4:6] for s in slots if s is not None and not s[1] & SPAN] == [(0, 0), (0, 0)]
    assert handoff.flush(10)
    deadline = time.monotonic() + 10
    while len(rx.audit_records()) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r["attributes"]["secret.name"] for r in rx.audit_records()] == [key] * 8
    assert handoff.errors == 0


def test_shape_ids_forgotten_are_learnt_again(agent_get: Any) -> None:
    """At the shape-id bound the app forgets every id (``ShapeIds.forget``): the short way then learns a new id
    instead of writing a forgotten one, and every record still names its key."""
    handoff, get, rx = agent_get
    keys = ["secret:" + secrets.token_hex(6) for _ in range(2)]
    for key in keys:
        get(key)
    before = [handoff.ring.slot(handoff.ring.next - 1)[7]]
    with handoff.lock:
        handoff.shape_ids.forget(handoff.ring)
    for key in keys:
        get(key)
    after = handoff.ring.slot(handoff.ring.next - 1)[7]
    assert after != before[0]
    assert handoff.flush(10)
    deadline = time.monotonic() + 10
    while len(rx.audit_records()) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r["attributes"]["secret.name"] for r in rx.audit_records()] == keys * 2
    assert handoff.errors == 0
