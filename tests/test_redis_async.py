"""redis.asyncio Redis and Pipeline against the real server: exact records, timing, task isolation."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aredis
import redis.exceptions

from secret_audit import audit_context

# A script that keeps the server busy for ARGV[1] iterations, then reads the secret. (TIME is
# frozen inside a script, so the loop counts iterations; the fixture calibrates the count.)
SLOW_GET = """
local n = 0
for i = 1, tonumber(ARGV[1]) do n = n + 1 end
return redis.call('GET', KEYS[1])
"""


@pytest.fixture(scope="module")
def slow_loops(redis_address):
    """An iteration count that makes SLOW_GET take at least 60 ms on this machine."""
    import redis as sync_redis

    client = sync_redis.Redis(*redis_address)
    loops = 100_000
    try:
        for _ in range(12):  # bounded: 100k * 2**12 iterations is far beyond 40 ms anywhere
            started = time.perf_counter()
            client.eval(SLOW_GET, 1, "plain:calibrate", loops)
            if time.perf_counter() - started >= 0.06:
                return loops
            loops *= 2
        raise AssertionError("could not make the script take 60 ms")
    finally:
        client.close()


@pytest.fixture
async def ar(audit, redis_url):
    client = aredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def pick(rec, *names):
    return tuple(rec.get(n) for n in names)


FIELDS = ("secret.name", "audit.operation", "audit.action", "audit.outcome", "audit.result")


async def test_async_commands_exact_records(audit, ar, key):
    assert await ar.set(key, b"v", nx=True)
    assert await ar.get(key) == b"v"
    assert await ar.get(key + ":missing") is None
    assert await ar.hset(key + ":h", "f", "x") == 1
    assert await ar.hget(key + ":h", "f") == b"x"
    assert await ar.delete(key, key + ":h") == 2
    recs = audit.attrs()
    assert [pick(r, *FIELDS) for r in recs] == [
        (key, "write", "SET", "success", "created"),
        (key, "read", "GET", "success", "found"),
        (key + ":missing", "read", "GET", "not_found", None),
        (key + ":h", "write", "HSET", "success", "created"),
        (key + ":h", "read", "HGET", "success", "found"),
        (key, "delete", "DEL", "success", "deleted"),
        (key + ":h", "delete", "DEL", "success", "deleted"),
    ]
    host, port = ar.connection_pool.connection_kwargs["host"], ar.connection_pool.connection_kwargs["port"]
    assert {r["secret.resource"] for r in recs} == {f"redis://{host}:{port}/0"}
    seqs = [r["audit.sequence"] for r in recs]
    assert seqs == list(range(seqs[0], seqs[0] + len(recs)))
    spans = {s.context.span_id: s for s in audit.spans()}
    for record in audit.records():
        assert spans[record.span_id].name == f"secret.{record.attributes['audit.operation']}"


async def test_async_non_secret_keys_are_not_audited(audit, ar):
    await ar.set("cache:plain", "x")
    await ar.get("cache:plain")
    assert audit.attrs() == []


async def test_async_duration_covers_the_awaited_call_not_coroutine_creation(audit, ar, key, slow_loops):
    await ar.set(key, "v")
    loops = slow_loops
    for _ in range(4):  # the loops were calibrated under another load: the call must take 30 ms or more
        audit.clear()
        coro = ar.eval(SLOW_GET, 1, key, loops)
        await asyncio.sleep(0.15)  # time between creating the coroutine and awaiting it is not the call
        before_await = time.time_ns()
        assert await coro == b"v"
        after = time.time_ns()
        took_ms = (after - before_await) / 1e6
        if took_ms >= 30:
            break
        loops *= 2
    [record] = audit.records()
    [span] = audit.spans()
    rec = dict(record.attributes)
    assert rec["audit.action"] == "EVAL"
    assert took_ms >= 30
    assert took_ms * 0.8 <= rec["audit.duration_ms"] <= took_ms, (rec["audit.duration_ms"], took_ms)
    # the record's time is when the awaited call started, not when the coroutine was made
    assert record.timestamp >= before_await
    assert span.start_time >= before_await
    assert span.end_time <= after
    assert (span.end_time - span.start_time) / 1e6 == pytest.approx(rec["audit.duration_ms"])


async def test_async_errors_are_recorded_and_reraised(audit, ar, key):
    await ar.hset(key, "f", "v")
    audit.clear()
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        await ar.get(key)
    [rec] = audit.attrs()
    assert pick(rec, "audit.outcome", "error.type", "audit.error") == (
        "error",
        "redis.exceptions.ResponseError",
        "WRONGTYPE Operation against a key holding the wrong kind of value",
    )


async def test_async_cancelled_call_is_recorded_as_error(audit, ar, key, slow_loops):
    task = asyncio.ensure_future(ar.eval(SLOW_GET, 1, key, slow_loops))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [rec] = audit.attrs()
    assert rec["audit.outcome"] == "error"
    assert rec["error.type"] == "asyncio.exceptions.CancelledError"


async def test_concurrent_tasks_each_get_their_own_enduser(audit, ar, key):
    await ar.set(key, "v")
    audit.clear()
    users = [f"user-{i}" for i in range(20)]

    async def work(user: str) -> None:
        with audit_context(enduser=user, client_address=f"198.51.100.{users.index(user)}"):
            for _ in range(5):
                await ar.get(f"{key}:{user}")
                await asyncio.sleep(0)  # interleave with the other tasks

    await asyncio.gather(*(work(u) for u in users))
    recs = audit.attrs()
    assert len(recs) == 100
    for rec in recs:
        user = rec["secret.name"].rsplit(":", 1)[1]
        assert rec["enduser.id"] == user
        assert rec["client.address"] == f"198.51.100.{users.index(user)}"
        assert rec["audit.access_path"] == "external"


@pytest.mark.parametrize("transaction", [True, False])
async def test_async_pipeline_exact_records(audit, ar, key, transaction):
    await ar.set(key + ":old", "o")
    audit.clear()
    async with ar.pipeline(transaction=transaction) as pipe:
        pipe.set(key, "v")
        pipe.get(key)
        pipe.get("plain:not-audited")
        pipe.get(key + ":missing")
        pipe.hset(key + ":h", mapping={"a": "1", "b": "2"})
        pipe.delete(key + ":old")
        replies = await pipe.execute()
    assert replies == [True, b"v", None, None, 2, 1]
    recs = audit.attrs()
    assert [pick(r, *FIELDS) for r in recs] == [
        (key, "write", "SET", "success", None),
        (key, "read", "GET", "success", "found"),
        (key + ":missing", "read", "GET", "not_found", None),
        (key + ":h", "write", "HSET", "success", "created"),
        (key + ":old", "delete", "DEL", "success", "deleted"),
    ]
    assert len({r["audit.duration_ms"] for r in recs}) == 1  # one round trip, one duration


async def test_async_pipeline_raise_on_error_false_gives_per_command_outcomes(audit, ar, key):
    await ar.hset(key + ":h", "f", "v")
    audit.clear()
    async with ar.pipeline(transaction=False) as pipe:
        pipe.set(key, "v")
        pipe.get(key + ":h")  # WRONGTYPE
        pipe.get(key)
        replies = await pipe.execute(raise_on_error=False)
    assert isinstance(replies[1], redis.exceptions.ResponseError)
    recs = audit.attrs()
    assert [pick(r, "secret.name", "audit.outcome", "error.type") for r in recs] == [
        (key, "success", None),
        (key + ":h", "error", "redis.exceptions.ResponseError"),
        (key, "success", None),
    ]
    assert recs[1]["audit.error"].startswith("WRONGTYPE")


@pytest.mark.parametrize("transaction", [True, False])
async def test_async_pipeline_exception_blames_only_the_failing_command(audit, ar, key, transaction):
    await ar.hset(key + ":h", "f", "v")
    audit.clear()
    async with ar.pipeline(transaction=transaction) as pipe:
        pipe.set(key, "v")
        pipe.get(key + ":h")  # WRONGTYPE
        pipe.get(key)
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            await pipe.execute()
    assert await ar.get(key) == b"v"
    recs = audit.attrs()[:3]
    assert [pick(r, "secret.name", "audit.outcome", "audit.result", "error.type") for r in recs] == [
        (key, "success", None, None),
        (key + ":h", "error", None, "redis.exceptions.ResponseError"),
        (key, "success", "found", None),
    ]


async def test_async_pipeline_watch_immediate_commands_are_audited(audit, ar, key):
    await ar.set(key, "1")
    audit.clear()
    async with ar.pipeline(transaction=True) as pipe:
        await pipe.watch(key)
        current = await pipe.get(key)  # immediate: runs now, not at execute()
        pipe.multi()
        pipe.set(key, int(current) + 1)
        assert await pipe.execute() == [True]
    recs = audit.attrs()
    assert [pick(r, "secret.name", "audit.action", "audit.result") for r in recs] == [
        (key, "WATCH", None),
        (key, "GET", "found"),
        (key, "SET", None),
    ]


async def test_async_pipeline_under_audit_context(audit, ar, key):
    with audit_context(enduser="bob", access_path="internal"):
        async with ar.pipeline() as pipe:
            pipe.get(key)
            await pipe.execute()
    [rec] = audit.attrs()
    assert rec["enduser.id"] == "bob"
    assert rec["audit.access_path"] == "internal"
