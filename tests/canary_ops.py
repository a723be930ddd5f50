"""Secret values through every supported command family, for the canary (no-leak) tests.

Every call that is expected to fail is caught here, so callers can run the whole tour and then
look for the canary in everything that was exported or logged.
"""

from __future__ import annotations

import contextlib
from typing import Any

import redis.exceptions

# Lua scripts that carry the canary only in ARGV, the way applications pass values.
SET_AND_ECHO = "redis.call('SET', KEYS[1], ARGV[1]); return ARGV[1]"
LUA_ERROR = "error('boom ' .. ARGV[1])"
ERROR_REPLY = "return redis.error_reply(ARGV[1])"


def _ops(key: str, canary: str) -> list[tuple[str, Any, tuple[Any, ...]]]:
    """(method name, args, kwargs-free) steps; the same tour for sync and async clients."""
    value = canary
    raw = b"\x00\xfe" + canary.encode() + b"\xff\x01"
    upper = canary.upper().replace("-", "")
    return [
        ("set", (key, value), {}),
        ("get", (key,), {}),
        ("set", (key, raw), {"get": True}),
        ("getset", (key, value), {}),
        ("execute_command", ("SETEX", key + ":ex", 60, value), {}),
        ("setnx", (key + ":nx", value), {}),
        ("append", (key, value), {}),
        ("setrange", (key, 3, value), {}),
        ("getrange", (key, 0, -1), {}),
        ("getdel", (key + ":nx",), {}),
        ("mset", ({key + ":m1": value, key + ":m2": raw},), {}),
        ("msetnx", ({key + ":m3": value},), {}),
        ("mget", ([key + ":m1", key + ":m2"],), {}),
        ("hset", (key + ":h",), {"mapping": {"user": value, "pw": raw}}),
        ("hsetnx", (key + ":h", "other", value), {}),
        ("hget", (key + ":h", "user"), {}),
        ("hmget", (key + ":h", ["user", "pw"]), {}),
        ("hgetall", (key + ":h",), {}),
        ("hvals", (key + ":h",), {}),
        ("eval", (SET_AND_ECHO, 1, key + ":lua", value), {}),
        ("eval", (LUA_ERROR, 1, key + ":lua", value), {}),
        ("eval", (ERROR_REPLY, 1, key + ":lua", upper + " " + value), {}),
        ("eval", (ERROR_REPLY, 1, key + ":lua", "NOSCRIPT " + value), {}),
        ("eval", (ERROR_REPLY, 1, key + ":lua", "WRONGPASS " + value), {}),
        ("eval", (ERROR_REPLY, 1, key + ":lua", "NOPERM " + value), {}),
        ("eval", (ERROR_REPLY, 1, key + ":lua", "ERR " + value), {}),
        ("eval", (ERROR_REPLY, 1, key + ":lua", "OOM " + value), {}),
        ("eval", (ERROR_REPLY, 1, key + ":lua", value), {}),
        ("get", (key + ":h",), {}),  # WRONGTYPE
        ("incr", (key,), {}),  # not an integer
        ("hincrby", (key + ":h", "user", 1), {}),
        ("restore", (key + ":bad", 0, raw), {}),  # bad payload carrying the canary
        ("execute_command", ("SET", key, value, "BOGUS"), {}),  # syntax error
        ("execute_command", ("JSON.SET", key + ":json", "$", '{"pw":"' + value + '"}'), {}),
        ("execute_command", ("GETEX", key, "EX", value), {}),  # bad integer argument
        *_families(key, value, raw),
    ]


def _families(key: str, value: str, raw: bytes) -> list[tuple[str, Any, dict[str, Any]]]:
    """Lists, sets, sorted sets, streams, HyperLogLog, geo, SORT patterns, listing and unknown
    commands: values go in as elements, members and fields, and come back in the replies."""
    lst, st, zs, xs, geo = key + ":l", key + ":s", key + ":z", key + ":x", key + ":g"
    return [
        ("rpush", (lst, value, raw), {}),
        ("lrange", (lst, 0, -1), {}),
        ("lpos", (lst, value), {}),
        ("linsert", (lst, "BEFORE", value, value), {}),
        ("lmove", (lst, lst + "2"), {}),
        ("blpop", ([lst + "2"], 1), {}),
        ("lpop", (lst,), {}),
        ("lrem", (lst, 0, value), {}),
        ("lpush", (key, value), {}),  # WRONGTYPE on a string
        ("sadd", (st, value, raw), {}),
        ("smembers", (st,), {}),
        ("sismember", (st, value), {}),
        ("srem", (st, value), {}),
        ("spop", (st,), {}),
        ("zadd", (zs, {value: 1, raw: 2}), {}),
        ("zrange", (zs, 0, -1), {"withscores": True}),
        ("zscore", (zs, value), {}),
        ("zadd", (zs, {value: 5}), {"ch": True}),
        ("zpopmin", (zs,), {}),
        ("zadd", (zs, {value: 1}), {"incr": True, "xx": True}),
        ("xadd", (xs, {"pw": value, "raw": raw}), {"id": "1-0"}),
        ("xrange", (xs,), {}),
        ("xread", ({xs: 0},), {}),
        ("xinfo_stream", (xs,), {}),
        ("xadd", (xs, {"pw": value}), {"id": value}),  # bad id carrying the canary
        ("pfadd", (key + ":hll", value), {}),
        ("pfcount", (key + ":hll",), {}),
        ("geoadd", (geo, [13.361389, 38.115556, value]), {}),
        ("geopos", (geo, value), {}),
        ("geosearch", (geo,), {"member": value, "radius": 10, "unit": "km", "withcoord": True}),
        ("rpush", (lst + ":sort", value, value.upper()), {}),
        ("sort", (lst + ":sort",), {"by": key + ":w_*", "get": ["#", key + ":o_*->f"], "alpha": True}),
        ("keys", (key + "*",), {}),
        ("scan", (0,), {"match": key + "*", "count": 1000}),
        ("hrandfield", (key + ":h", 2, True), {}),
        ("execute_command", ("MYMODULE.SET", key + ":m", value), {}),  # unknown: the server quotes args
    ]


def _pipeline_fill(pipe: Any, key: str, canary: str) -> None:
    pipe.set(key + ":p", canary)
    pipe.get(key + ":p")
    pipe.hset(key + ":ph", "f", canary)
    pipe.get(key + ":ph")  # WRONGTYPE, annotated by redis-py with the command text
    pipe.eval(LUA_ERROR, 1, key + ":p", canary)
    pipe.set(key + ":p2", canary)


def sync_exercise(r: Any, key: str, canary: str) -> int:
    """Run the tour on a sync client; returns how many calls raised (to prove errors happened)."""
    errors = 0
    for name, args, kwargs in _ops(key, canary):
        try:
            getattr(r, name)(*args, **kwargs)
        except redis.exceptions.RedisError:
            errors += 1
    payload = r.dump(key)
    r.restore(key + ":restored", 0, payload, replace=True)
    for transaction in (True, False):
        with r.pipeline(transaction=transaction) as pipe:
            _pipeline_fill(pipe, key, canary)
            try:
                pipe.execute()
            except redis.exceptions.RedisError:
                errors += 1
        with r.pipeline(transaction=transaction) as pipe:
            _pipeline_fill(pipe, key, canary)
            pipe.execute(raise_on_error=False)
    with r.pipeline(transaction=True) as pipe:  # aborted at queue time: EXECABORT
        pipe.set(key + ":p", canary)
        pipe.execute_command("SET", key + ":p", canary, "BOGUS", "x")
        with contextlib.suppress(redis.exceptions.RedisError):
            pipe.execute()
            errors -= 1
        errors += 1
    return errors


async def async_exercise(r: Any, key: str, canary: str) -> int:
    """The same tour on a redis.asyncio client."""
    errors = 0
    for name, args, kwargs in _ops(key, canary):
        try:
            await getattr(r, name)(*args, **kwargs)
        except redis.exceptions.RedisError:
            errors += 1
    payload = await r.dump(key)
    await r.restore(key + ":restored", 0, payload, replace=True)
    for transaction in (True, False):
        async with r.pipeline(transaction=transaction) as pipe:
            _pipeline_fill(pipe, key, canary)
            try:
                await pipe.execute()
            except redis.exceptions.RedisError:
                errors += 1
        async with r.pipeline(transaction=transaction) as pipe:
            _pipeline_fill(pipe, key, canary)
            await pipe.execute(raise_on_error=False)
    return errors
