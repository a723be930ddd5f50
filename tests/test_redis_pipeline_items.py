"""A pipeline's commands become Items from a (command, key) cache: the same Items as command by command, merged."""

from __future__ import annotations

from typing import Any

import pytest
import redis
import redis.exceptions
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.context import get_current

from secret_audit._internal import redis_pipelines as rp
from secret_audit._internal import redis_replies as rr
from secret_audit._internal.builder import _coalesce
from secret_audit._internal.matcher import KeyMatcher
from secret_audit._internal.redis_calls import Commands, Pipelines
from secret_audit._internal.redis_commands import UNKNOWN_COMMAND
from secret_audit._internal.redis_pipelines import PipelineItems

CANARY = "canary-value-7f3e-never-recorded"


class CountingMatcher(KeyMatcher):
    """The real matcher, counting how often a key is looked at."""

    __slots__ = ("calls",)

    def __init__(self, patterns: list[str]) -> None:
        super().__init__(patterns)
        self.calls = 0

    def __call__(self, key: Any) -> bool:
        self.calls += 1
        return super().__call__(key)


def _pipelines(matcher: KeyMatcher) -> Pipelines:
    return Pipelines(Commands(matcher, UNKNOWN_COMMAND, lambda: None))


def _items(pipelines: Pipelines, pipe: Any, plan: list[Any], replies: Any, error: Any = None) -> Any:
    access = pipelines.access(pipe, (), {}, plan, 0, 1, get_current(), replies, error)
    return access.items if access.items is not None else access.expand(access.pending)


def test_a_repeated_command_is_classified_once_and_counted(redis_url: str) -> None:
    """100 GETs of one secret: one Item that says 100, the key matched once (it was 100 Items, 100 matches),
    and the Access keeps neither the stack nor the replies (it kept both until the worker read them)."""
    client = redis.Redis.from_url(redis_url)
    client.set("secret:pipe-once", "v")
    matcher = CountingMatcher(["secret:*"])
    pipelines = _pipelines(matcher)
    pipe = client.pipeline(transaction=False)
    for _ in range(100):
        pipe.get("secret:pipe-once")
    pipe.get("plain:other")
    plan = pipelines.describe(pipe, (), {})
    replies = pipe.execute()
    access = pipelines.access(pipe, (), {}, plan, 0, 1, get_current(), replies, None)
    assert access.pending is None
    assert access.expand is None
    items = _items(pipelines, pipe, plan, replies)
    assert [(i.name, i.operation, i.action, i.result, i.times) for i in items] == [
        ("secret:pipe-once", "read", "GET", "found", 100)
    ]
    assert matcher.calls == 2  # the secret key once, the plain one once (two pipelines' worth above)
    items = _items(pipelines, pipe, plan, replies)  # the next pipeline: from the cache alone
    assert items[0].times == 100
    assert matcher.calls == 2


def test_the_cache_holds_names_and_keys_never_a_value(redis_url: str) -> None:
    """SET, HSET and a keyless command with a value in the key's place: no value in the cache or the Items."""
    client = redis.Redis.from_url(redis_url)
    pipelines = _pipelines(KeyMatcher(["secret:*"]))
    pipe = client.pipeline(transaction=True)
    pipe.set("secret:pipe-canary", CANARY)
    pipe.hset("secret:pipe-canary-h", "field", CANARY)
    pipe.echo(CANARY)
    pipe.get("secret:pipe-canary")
    plan = pipelines.describe(pipe, (), {})
    replies = pipe.execute()
    items = _items(pipelines, pipe, plan, replies)
    assert [(i.name, i.action) for i in items] == [
        ("secret:pipe-canary", "SET"), ("secret:pipe-canary-h", "HSET"), ("secret:pipe-canary", "GET")
    ]
    assert CANARY not in repr(items)
    assert CANARY not in repr(pipelines.classified._cache)


# ---- the cache against the single-command path, for any pipeline ----------------------------

_NAMES = ["GET", "get", b"GET", "SET", "HGET", "DEL", "MGET", "EXISTS", "TTL", "INCR", "LPUSH", "HGETALL",
          "SMEMBERS", "XINFO", "ECHO", "PING", "NOSUCHCMD", "KEYS", "JSON.GET", "GETDEL", "LRANGE"]
_KEYS = ["secret:a", "secret:b", b"secret:a", "SECRET:A", "plain:x", b"plain:y", 1, 1.0, 2.5, True, "",
         memoryview(b"secret:a"), bytearray(b"secret:b")]
_REPLIES = [None, b"v", b"", "", [], [b"x"], [None], (), {}, {"f": b"v"}, set(), {b"m"}, 0, 1, 2, -1, -2, True,
            False, "OK", b"OK", redis.exceptions.ResponseError("WRONGTYPE Operation against a key")]
_ERROR = redis.exceptions.ConnectionError("Connection reset by peer")

keys = st.one_of(
    st.sampled_from(_KEYS),
    st.builds(lambda: memoryview(bytearray(b"secret:b"))),  # writable: hashing it raises ValueError
)
commands = st.tuples(st.sampled_from(_NAMES), st.lists(keys, max_size=3))


def _reference(pipelines: Pipelines, stack: list[Any], replies: Any, error: Any) -> list[Any]:
    """What the pipeline path made before the cache: each command described and itemised alone."""
    commands = pipelines.commands
    out = []
    for pos, cmd in enumerate(stack):
        args = cmd[0]
        found = commands.describe(None, args, None)
        if found is None:
            continue
        reply, err = None, error
        if err is None:
            reply = replies[pos] if pos < len(replies) else None
            if isinstance(reply, BaseException):
                err, reply = reply, None
        out.extend(commands.items(args, found, reply, err))
    return out


def _merged(items: Any) -> list[tuple[Any, int]]:
    return [(item._replace(times=1), count) for item, count in _coalesce(tuple(items))] if items else []


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(commands, st.sampled_from(_REPLIES)), max_size=12),
    st.sampled_from([None, _ERROR]),
    st.booleans(),
    st.booleans(),
)
def test_pipeline_items_equal_the_single_command_path(
    queued: list[Any], error: Any, short: bool, repeat: bool
) -> None:
    """Merged, the cached path's Items are the single-command path's, in order, for any stack and replies."""
    if repeat:  # runs of one command object, the case the cache is for
        queued = [q for q in queued for _ in range(3)]
    stack = [((name, *keys), {}) for (name, keys), _ in queued]
    replies = [reply for _, reply in queued]
    if short:
        replies = replies[:-1]  # redis-py had not every reply: a command without one has none
    pipelines = _pipelines(KeyMatcher(["secret:*"]))
    expected = _merged(_reference(pipelines, stack, replies, error))
    for _ in range(2):  # learnt, then from the cache
        got = pipelines.classified.expand(stack, replies, error)
        assert _merged(got) == expected


@given(st.one_of(st.sampled_from(_REPLIES), st.binary(), st.text(), st.integers(),
                 st.lists(st.none()), st.dictionaries(st.text(), st.binary())))
def test_the_inline_found_word_is_rr_found(reply: Any) -> None:
    """The pipeline's inline GET result is exactly ``redis_replies.found``'s."""
    items = PipelineItems(lambda k: True, None, lambda *a: None, lambda *a: ())
    got = items.expand([(("GET", "secret:k"), {})], [reply], None)
    if isinstance(reply, BaseException):
        return
    assert got[0].result == rr.found(("GET", "secret:k"), reply, [("secret:k", "read")])[0]


# ---- the C loop against its pure-Python twin ---------------------------------------------------


def _counted(fn: Any, stack: list[Any], replies: list[Any]) -> list[list[tuple[Any, int]]]:
    """What ``fn`` counts: learning, then from the cache (where a read-only memoryview key finds its
    bytes twin's entry: grouped otherwise, the same once merged)."""
    items = _pipelines(KeyMatcher(["secret:*"])).classified
    runs = [[(item, count) for item, count in
             fn(stack, replies, items._entry, items._one, rp.make_item, rr.found, rr.none, rp._EMPTIABLE, rp.args_of)]
            for _ in range(2)]
    merged = [_merged([item._replace(times=count) for item, count in run]) for run in runs]
    assert merged[0] == merged[1]
    return runs


class Queued:
    """A cluster pipeline's queued command: an object with ``args``, not a tuple."""

    def __init__(self, args: tuple[Any, ...]) -> None:
        self.args = args


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.tuples(commands, st.sampled_from(_REPLIES), st.integers(0, 3), st.booleans()), max_size=14),
)
def test_the_c_loop_is_its_python_twin(queued: list[Any]) -> None:
    """``_pipeline_native.count`` gives exactly ``count_python``'s groups: the same Items, counts and order."""
    assert rp.count_native is not None, "the C extension is not built (bash scripts/bootstrap.sh builds it)"
    stack: list[Any] = []
    replies: list[Any] = []
    for (name, keys), reply, times, as_object in queued:
        for _ in range(times or 1):
            args = (name, *keys)
            stack.append(Queued(args) if as_object else (args, {}))
            replies.append(reply)
    assert _counted(rp.count_native, stack, replies) == _counted(rp.count_python, stack, replies)


def test_the_c_loop_raises_what_the_twin_raises() -> None:
    """A command whose arguments have no length fails both alike (the caller's wrapper counts it)."""
    for fn in (rp.count_native, rp.count_python):
        with pytest.raises(TypeError):
            _counted(fn, [(None, {})], [None])
