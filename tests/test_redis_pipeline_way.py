"""A pipeline's short way (``redis_pipeline_way``): what the call core's way hands off, one merged Item
straight into a slot kept by the pipeline's connection pool, and never a value."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.exceptions
from hypothesis import given, settings
from hypothesis import strategies as st

from secret_audit._internal.callcore import CallCore
from secret_audit._internal.event import Access
from secret_audit._internal.matcher import KeyMatcher
from secret_audit._internal.redis_calls import Commands, Pipelines, Wrappers
from secret_audit._internal.redis_commands import UNKNOWN_COMMAND
from secret_audit._internal.redis_pipeline_way import pipeline_wrapper
from test_agent_caller import serving_agent
from test_redis_single import Recorder, _items, drive

CANARY = "canary-value-8e2f-never-recorded"


class MergedRecorder(Recorder):
    """A hand-off with the agent's ``submit_merged``: what it is given, as the Access the whole way makes."""

    def __init__(self) -> None:
        super().__init__()
        self.owners: list[Any] = []

    def submit_merged(self, source: Any, target: Any, item: Any, start: int, end: int, ctx: Any,
                      owner: Any) -> None:
        self.got.append(Access(source, start, end, ctx, target, (item,), "success"))
        self.owners.append(owner)


class Pipe:
    """What the wrapper reads of a redis-py pipeline: its queued commands and its connection pool."""

    def __init__(self, commands: list[tuple[Any, ...]], pool: Any) -> None:
        self.command_stack = [(args, {}) for args in commands]
        self.connection_pool = pool


_COMMANDS = [("GET", "secret:a"), ("GET", "secret:b"), ("GET", "plain:x"), ("SET", "secret:a", "v"),
             ("HGET", "secret:a", "f"), ("MGET", "secret:a", "secret:b"), ("ECHO", "x"), ("DEL", "secret:b")]
_REPLIES = [None, b"v", b"", [], [b"x"], 0, 1, "OK", redis.exceptions.ResponseError("WRONGTYPE Operation")]


@pytest.mark.parametrize("is_async", [False, True])
@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from(_COMMANDS), st.sampled_from(_REPLIES)), max_size=6),
                max_size=5), st.booleans())
def test_the_short_way_hands_off_what_the_call_core_does(is_async: bool, pipelines: list[Any],
                                                          raises: bool) -> None:
    """Any pipeline, its replies (an error among them) or an execute() that raises, twice (learnt, then
    kept): the same Items, outcome, error, pipeline and context as the call core's wrapper (which also
    hands off a pipeline with no secret in it, with no Items: no record either way); one Item by
    ``submit_merged`` with the pipeline's pool as its owner, and the same reply or the very same error."""
    matcher = KeyMatcher(["secret:*"])
    short, general = MergedRecorder(), Recorder()
    fast = pipeline_wrapper(CallCore(short), Pipelines(Commands(matcher, UNKNOWN_COMMAND, lambda: None)),
                            is_async=is_async)
    core = CallCore(general)
    pipes = Pipelines(Commands(matcher, UNKNOWN_COMMAND, lambda: None))
    slow = core.wrapper(pipes, pipes.waits, pipes.begin, is_async=is_async)
    pool = object()
    failure = redis.exceptions.ConnectionError("Connection reset by peer")
    run = drive if is_async else (lambda returned: returned)
    for pipeline in pipelines * 2:
        replies = [reply for _, reply in pipeline]

        def call(*args: Any, **kwargs: Any) -> Any:
            if raises:
                raise failure
            return list(replies)

        async def call_async(*args: Any, **kwargs: Any) -> Any:
            return call()

        pipe = Pipe([args for args, _ in pipeline], pool)
        outcomes = []
        for wrapper in (fast, slow):
            try:
                outcomes.append(("returned", run(wrapper(call_async if is_async else call, pipe, (), {}))))
            except redis.exceptions.RedisError as exc:
                outcomes.append(("raised", exc))
        assert outcomes[0] == outcomes[1]
        if raises and pipeline:
            assert outcomes[0][1] is failure
    # a pipeline with no secret in it: the call core hands off an Access with no Items (no record), the
    # short way nothing at all
    shorts, handed = ([access for access in got if _items(access)] for got in (short.got, general.got))
    assert len(shorts) == len(handed)
    for one, other in zip(shorts, handed, strict=True):
        assert _items(one) == _items(other)
        assert (one.source, one.target, one.outcome, one.error, one.context) == (
            other.source, other.target, other.outcome, other.error, other.context)
    assert short.owners == [pool] * len(short.owners)
    assert short.errors == general.errors == 0


def test_fail_closed_pipelines_keep_the_call_cores_way() -> None:
    """In fail-closed mode every secret pipeline waits for its record: the call core's wrapper itself."""
    wrapper = pipeline_wrapper(CallCore(MergedRecorder(), closed=True),  # type: ignore[arg-type]
                               Pipelines(Commands(KeyMatcher(["secret:*"]), UNKNOWN_COMMAND, lambda: None)))
    assert wrapper.__qualname__.startswith("CallCore.wrapper")


def _records(rx: Any, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while len(rx.audit_records()) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return list(rx.audit_records())


def test_merged_pipelines_reach_the_trail_through_the_agent_by_their_pool(redis_url: str, tmp_path: Any) -> None:
    """Pipelines of 100 GETs of one secret through a real agent: one record each with ``audit.count`` 100,
    the client's resource, kept by the pool after the first; a pipeline of two secrets, two records; a
    canary written in one never reaches a record, the cache or what the hand-off keeps."""
    key, other = "secret:" + secrets.token_hex(6), "secret:" + secrets.token_hex(6)
    with serving_agent(redis_url, tmp_path) as (handoff, _get, rx):
        wrappers = Wrappers(handoff, KeyMatcher(["secret:*"]))
        client = redis.Redis.from_url(redis_url)
        try:
            client.set(key, CANARY)
            for _ in range(3):
                pipe = client.pipeline(transaction=False)
                for _ in range(100):
                    pipe.get(key)
                assert wrappers.pipeline_execute(pipe.execute, pipe, (), {}) == [CANARY.encode()] * 100
            assert handoff._short[1]._kept[0] is client.connection_pool
            pipe = client.pipeline(transaction=False)
            pipe.set(other, CANARY).get(key).get(other)
            assert wrappers.pipeline_execute(pipe.execute, pipe, (), {}) == [True, CANARY.encode(),
                                                                              CANARY.encode()]
            assert handoff.flush(10)
            records = _records(rx, 5)
        finally:
            client.close()
    attrs = [r["attributes"] for r in records]
    assert [(a["secret.name"], a["audit.count"]) for a in attrs[:3]] == [(key, 100)] * 3
    assert {a["secret.resource"] for a in attrs} == {redis_url}  # the pipelines' own client's, kept by its pool
    assert sorted((a["secret.name"], a["audit.operation"], a.get("audit.count", 1)) for a in attrs[3:]) == sorted(
        [(other, "write", 1), (key, "read", 1), (other, "read", 1)])
    assert CANARY not in repr(records)
    assert CANARY not in repr(wrappers.classified._merged) + repr(handoff._short[1]._kept)
    assert handoff.errors == 0


def test_an_async_pipeline_takes_the_short_way_in_the_context_it_is_awaited_in(redis_url: str,
                                                                               tmp_path: Any) -> None:
    """redis.asyncio's ``Pipeline.execute``: the merged Item by ``submit_merged``, its record counted."""
    key = "secret:" + secrets.token_hex(6)

    async def main(wrappers: Wrappers) -> list[Any]:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            await client.set(key, b"v")
            pipe = client.pipeline(transaction=False)
            for _ in range(10):
                pipe.get(key)
            got: list[Any] = await wrappers.async_pipeline_execute(pipe.execute, pipe, (), {})
            return got
        finally:
            await client.aclose()

    with serving_agent(redis_url, tmp_path) as (handoff, _get, rx):
        assert asyncio.run(main(Wrappers(handoff, KeyMatcher(["secret:*"])))) == [b"v"] * 10
        assert handoff.flush(10)
        records = _records(rx, 1)
    assert [(r["attributes"]["secret.name"], r["attributes"]["audit.count"]) for r in records] == [(key, 10)]
