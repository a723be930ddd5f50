"""RedisCluster and redis.asyncio.cluster.RedisCluster, with their pipelines, on a real one-node cluster."""

from __future__ import annotations

import pytest
import redis.exceptions
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from conftest import acl_user
from servers import valkey_cluster

pytestmark = pytest.mark.cluster

FIELDS = ("secret.name", "audit.operation", "audit.action", "audit.outcome", "audit.result")


@pytest.fixture(scope="module")
def cluster_address():
    with valkey_cluster() as address:
        yield address


@pytest.fixture
def rc(audit, cluster_address):
    host, port = cluster_address
    client = RedisCluster(host=host, port=port)
    yield client
    client.close()


@pytest.fixture
async def arc(audit, cluster_address):
    host, port = cluster_address
    client = AsyncRedisCluster(host=host, port=port)
    yield client
    await client.aclose()


@pytest.fixture
def tagged(key):
    """Keys sharing one hash slot, so multi-key commands and transactions are allowed."""
    return "{" + key + "}"


def pick(rec, *names):
    return tuple(rec.get(n) for n in names)


def test_cluster_commands_exact_records(audit, rc, tagged, cluster_address):
    host, port = cluster_address
    assert rc.set(tagged + ":a", "v", nx=True)
    assert rc.get(tagged + ":a") == b"v"
    assert rc.get(tagged + ":missing") is None
    assert rc.mget([tagged + ":a", tagged + ":missing"]) == [b"v", None]
    assert rc.hset(tagged + ":h", "f", "x") == 1
    assert rc.delete(tagged + ":a") == 1
    rc.set("plain:cluster", "x")
    recs = audit.attrs()
    assert [pick(r, *FIELDS) for r in recs] == [
        (tagged + ":a", "write", "SET", "success", "created"),
        (tagged + ":a", "read", "GET", "success", "found"),
        (tagged + ":missing", "read", "GET", "not_found", None),
        (tagged + ":a", "read", "MGET", "success", "found"),
        (tagged + ":missing", "read", "MGET", "not_found", None),
        (tagged + ":h", "write", "HSET", "success", "created"),
        (tagged + ":a", "delete", "DEL", "success", "deleted"),
    ]
    assert {r["secret.resource"] for r in recs} == {f"redis://{host}:{port}/0"}


def test_cluster_errors(audit, rc, tagged):
    rc.hset(tagged, "f", "v")
    audit.clear()
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        rc.get(tagged)
    [rec] = audit.attrs()
    assert pick(rec, "audit.outcome", "error.type", "audit.error") == (
        "error",
        "redis.exceptions.ResponseError",
        "WRONGTYPE Operation against a key holding the wrong kind of value",
    )


def test_cluster_pipeline_exact_records(audit, rc, tagged, cluster_address):
    host, port = cluster_address
    with rc.pipeline() as pipe:
        pipe.set(tagged + ":a", "v")
        pipe.get(tagged + ":a")
        pipe.get("plain:x")
        pipe.get(tagged + ":missing")
        pipe.delete(tagged + ":a")
        assert pipe.execute() == [True, b"v", None, None, 1]
    recs = audit.attrs()
    assert [pick(r, *FIELDS) for r in recs] == [
        (tagged + ":a", "write", "SET", "success", None),
        (tagged + ":a", "read", "GET", "success", "found"),
        (tagged + ":missing", "read", "GET", "not_found", None),
        (tagged + ":a", "delete", "DEL", "success", "deleted"),
    ]
    assert {r.get("secret.resource") for r in recs} == {f"redis://{host}:{port}/0"}


def test_cluster_pipeline_raise_on_error_false(audit, rc, tagged):
    rc.hset(tagged + ":h", "f", "v")
    audit.clear()
    with rc.pipeline() as pipe:
        pipe.set(tagged, "v")
        pipe.get(tagged + ":h")
        pipe.get(tagged)
        replies = pipe.execute(raise_on_error=False)
    assert isinstance(replies[1], redis.exceptions.ResponseError)
    recs = audit.attrs()
    assert [pick(r, "secret.name", "audit.outcome", "audit.result") for r in recs] == [
        (tagged, "success", None),
        (tagged + ":h", "error", None),
        (tagged, "success", "found"),
    ]


def test_cluster_pipeline_exception_blames_only_the_failing_command(audit, rc, tagged):
    rc.hset(tagged + ":h", "f", "v")
    audit.clear()
    with rc.pipeline() as pipe:
        pipe.set(tagged, "v")
        pipe.get(tagged + ":h")  # WRONGTYPE
        pipe.get(tagged)
        pipe.get(tagged + ":missing")
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            pipe.execute()
    recs = audit.attrs()
    assert [pick(r, "secret.name", "audit.outcome", "audit.result", "audit.error") for r in recs] == [
        (tagged, "success", None, None),
        (tagged + ":h", "error", None, "WRONGTYPE Operation against a key holding the wrong kind of value"),
        (tagged, "success", "found", None),
        (tagged + ":missing", "not_found", None, None),
    ]


def test_cluster_transaction_with_watch(audit, rc, tagged):
    rc.set(tagged, "1")
    audit.clear()
    with rc.pipeline(transaction=True) as pipe:
        pipe.watch(tagged)
        current = pipe.get(tagged)  # immediate while watching
        assert current == b"1"
        pipe.multi()
        pipe.set(tagged, int(current) + 1)
        pipe.get(tagged + ":other")
        replies = pipe.execute()
        assert replies[0] in (True, b"OK")  # cluster transactions skip the SET reply callback
        assert replies[1] is None
    recs = audit.attrs()
    assert [pick(r, "secret.name", "audit.action", "audit.outcome") for r in recs] == [
        (tagged, "WATCH", "success"),
        (tagged, "GET", "success"),
        (tagged, "SET", "success"),
        (tagged + ":other", "GET", "not_found"),
    ]


def test_cluster_transaction_error_blames_only_the_failing_command(audit, rc, tagged):
    rc.hset(tagged + ":h", "f", "v")
    audit.clear()
    with rc.pipeline(transaction=True) as pipe:
        pipe.set(tagged, "v")
        pipe.get(tagged + ":h")  # WRONGTYPE at EXEC time: the other commands still ran
        pipe.get(tagged)
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            pipe.execute()
    recs = audit.attrs()
    assert rc.get(tagged) == b"v"
    assert [pick(r, "secret.name", "audit.action", "audit.outcome", "audit.result") for r in recs] == [
        (tagged, "SET", "success", None),
        (tagged + ":h", "GET", "error", None),
        (tagged, "GET", "success", "found"),
    ]


async def test_async_cluster_transaction_error_blames_only_the_failing_command(audit, arc, tagged):
    await arc.hset(tagged + ":h", "f", "v")
    audit.clear()
    async with arc.pipeline(transaction=True) as pipe:
        pipe.set(tagged, "v")
        pipe.get(tagged + ":h")
        pipe.get(tagged)
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            await pipe.execute()
    recs = audit.attrs()
    assert await arc.get(tagged) == b"v"
    assert [pick(r, "secret.name", "audit.action", "audit.outcome", "audit.result") for r in recs] == [
        (tagged, "SET", "success", None),
        (tagged + ":h", "GET", "error", None),
        (tagged, "GET", "success", "found"),
    ]


async def test_async_cluster_exact_records(audit, arc, tagged, cluster_address):
    host, port = cluster_address
    assert await arc.set(tagged, "v")
    assert await arc.get(tagged) == b"v"
    assert await arc.get(tagged + ":missing") is None
    await arc.set("plain:async-cluster", "x")
    assert await arc.delete(tagged) == 1
    recs = audit.attrs()
    assert [pick(r, *FIELDS) for r in recs] == [
        (tagged, "write", "SET", "success", None),
        (tagged, "read", "GET", "success", "found"),
        (tagged + ":missing", "read", "GET", "not_found", None),
        (tagged, "delete", "DEL", "success", "deleted"),
    ]
    assert {r["secret.resource"] for r in recs} == {f"redis://{host}:{port}/0"}


async def test_async_cluster_pipeline(audit, arc, tagged, cluster_address):
    host, port = cluster_address
    async with arc.pipeline() as pipe:
        pipe.set(tagged, "v")
        pipe.get(tagged)
        pipe.get(tagged + ":missing")
        assert await pipe.execute() == [True, b"v", None]
    recs = audit.attrs()
    assert {r.get("secret.resource") for r in recs} == {f"redis://{host}:{port}/0"}
    assert [pick(r, "secret.name", "audit.action", "audit.outcome") for r in recs] == [
        (tagged, "SET", "success"),
        (tagged, "GET", "success"),
        (tagged + ":missing", "GET", "not_found"),
    ]


async def test_async_cluster_pipeline_exception_blames_only_the_failing_command(audit, arc, tagged):
    await arc.hset(tagged + ":h", "f", "v")
    audit.clear()
    async with arc.pipeline() as pipe:
        pipe.set(tagged, "v")
        pipe.get(tagged + ":h")  # WRONGTYPE
        pipe.get(tagged)
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            await pipe.execute()
    recs = audit.attrs()
    assert [pick(r, "secret.name", "audit.outcome", "audit.result", "audit.error") for r in recs] == [
        (tagged, "success", None, None),
        (tagged + ":h", "error", None, "WRONGTYPE Operation against a key holding the wrong kind of value"),
        (tagged, "success", "found", None),
    ]


async def test_async_cluster_transaction_with_watch(audit, arc, tagged):
    await arc.set(tagged, "1")
    audit.clear()
    async with arc.pipeline(transaction=True) as pipe:
        await pipe.watch(tagged)
        current = await pipe.get(tagged)
        assert current == b"1"
        pipe.multi()
        pipe.set(tagged, int(current) + 1)
        assert await pipe.execute() == [True]
    recs = audit.attrs()
    assert [pick(r, "secret.name", "audit.action") for r in recs] == [
        (tagged, "WATCH"),
        (tagged, "GET"),
        (tagged, "SET"),
    ]


async def test_async_cluster_error(audit, arc, tagged):
    await arc.hset(tagged, "f", "v")
    audit.clear()
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        await arc.get(tagged)
    [rec] = audit.attrs()
    assert rec["audit.outcome"] == "error"


@pytest.fixture
def cluster_acl_user(cluster_address):
    host, port = cluster_address
    with acl_user(RedisCluster(host=host, port=port), "sa-cluster-", "*") as user:
        yield user


def test_cluster_acl_user_is_the_principal(audit, cluster_address, cluster_acl_user, tagged):
    host, port = cluster_address
    name, password = cluster_acl_user
    client = RedisCluster(host=host, port=port, username=name, password=password)
    try:
        client.set(tagged, "v")
        with client.pipeline() as pipe:
            pipe.get(tagged)
            pipe.execute()
    finally:
        client.close()
    assert [x.get("audit.principal") for x in audit.attrs()] == [f"redis:{name}"] * 2


async def test_async_cluster_acl_user_is_the_principal(audit, cluster_address, cluster_acl_user, tagged):
    host, port = cluster_address
    name, password = cluster_acl_user
    client = AsyncRedisCluster(host=host, port=port, username=name, password=password)
    try:
        await client.set(tagged, "v")
        async with client.pipeline() as pipe:
            pipe.get(tagged)
            await pipe.execute()
    finally:
        await client.aclose()
    assert [x.get("audit.principal") for x in audit.attrs()] == [f"redis:{name}"] * 2
