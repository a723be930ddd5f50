"""Who accessed a secret: audit_context, W3C baggage, the configured principal and the Redis ACL user."""

from __future__ import annotations

import secrets

import pytest
import redis
from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator

from conftest import acl_user as temporary_acl_user
from secret_audit import audit_context, current_audit_context


def who(rec):
    return (rec.get("enduser.id"), rec.get("client.address"), rec.get("audit.access_path"), rec.get("audit.principal"))


def with_baggage(header: str):
    """Attach the context an instrumented server would build from an incoming `baggage` header."""
    ctx = W3CBaggagePropagator().extract({"baggage": header})
    return otel_context.attach(ctx)


def test_no_context_is_internal_with_nothing_else(audit, r, key):
    r.get(key)
    [rec] = audit.attrs()
    assert who(rec) == (None, None, "internal", None)


def test_audit_context_sets_and_nests_and_restores(audit, r, key):
    with audit_context(enduser="alice", client_address="203.0.113.9") as outer:
        assert outer.enduser == "alice"
        r.get(key)
        with audit_context(access_path="internal"):
            assert current_audit_context().enduser == "alice"  # inherited
            r.get(key)
        with audit_context(enduser="bob"):
            r.get(key)
    assert current_audit_context().enduser is None
    r.get(key)
    assert [who(x) for x in audit.attrs()] == [
        ("alice", "203.0.113.9", "external", None),
        ("alice", "203.0.113.9", "internal", None),
        ("bob", "203.0.113.9", "external", None),
        (None, None, "internal", None),
    ]


def test_audit_context_rejects_a_bad_access_path():
    with pytest.raises(ValueError, match="access_path='sideways'"), audit_context(access_path="sideways"):
        pass


def test_baggage_fills_enduser_client_address_and_access_path(audit, r, key):
    token = with_baggage("enduser.id=carol,client.address=198.51.100.4,audit.access_path=internal")
    try:
        r.get(key)
    finally:
        otel_context.detach(token)
    [rec] = audit.attrs()
    assert who(rec) == ("carol", "198.51.100.4", "internal", None)


def test_baggage_enduser_alone_means_external(audit, r, key):
    token = with_baggage("enduser.id=dave")
    try:
        r.get(key)
    finally:
        otel_context.detach(token)
    assert who(audit.attrs()[0]) == ("dave", None, "external", None)


def test_explicit_context_wins_over_baggage(audit, r, key):
    token = with_baggage("enduser.id=mallory,client.address=192.0.2.66,audit.access_path=internal")
    try:
        with audit_context(enduser="erin", client_address="203.0.113.1", access_path="external"):
            r.get(key)
        with audit_context(enduser="frank"):  # what is not set explicitly still comes from baggage
            r.get(key)
    finally:
        otel_context.detach(token)
    assert [who(x) for x in audit.attrs()] == [
        ("erin", "203.0.113.1", "external", None),
        ("frank", "192.0.2.66", "internal", None),
    ]


def test_principal_is_never_taken_from_baggage(audit, r, key):
    ctx = otel_context.get_current()
    for name in ("audit.principal", "principal", "secret_audit.principal", "enduser.principal"):
        ctx = baggage.set_baggage(name, "root@evil", ctx)
    token = otel_context.attach(ctx)
    try:
        r.get(key)
    finally:
        otel_context.detach(token)
    [rec] = audit.attrs()
    assert "audit.principal" not in rec
    assert "root@evil" not in repr(rec)


def test_invalid_baggage_access_path_is_ignored(audit, r, key):
    token = with_baggage("audit.access_path=sideways")
    try:
        r.get(key)
    finally:
        otel_context.detach(token)
    assert who(audit.attrs()[0]) == (None, None, "internal", None)


def test_explicit_principal_in_audit_context(audit, r, key):
    with audit_context(principal="svc:billing"):
        r.get(key)
    assert audit.attrs()[0]["audit.principal"] == "svc:billing"


def test_context_follows_threads_started_with_copied_context(audit, r, key):
    import contextvars
    import threading

    results = []
    with audit_context(enduser="threaded"):
        ctx = contextvars.copy_context()
    thread = threading.Thread(target=lambda: results.append(ctx.run(r.get, key)))
    thread.start()
    thread.join(10)
    assert results == [None]
    assert audit.attrs()[0]["enduser.id"] == "threaded"


class TestConfiguredPrincipal:
    @pytest.fixture
    def audit_env(self):
        return {
            "OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS": "20",
            "OTEL_PYTHON_SECRET_AUDIT_PRINCIPAL": "svc:payments",
        }

    def test_principal_from_settings(self, audit, r, key):
        r.get(key)
        with audit_context(principal="svc:override"):
            r.get(key)
        assert [x["audit.principal"] for x in audit.attrs()] == ["svc:payments", "svc:override"]


@pytest.fixture
def acl_user(redis_url):
    """A real ACL user on the server, allowed on secret:* keys only, removed afterwards."""
    with temporary_acl_user(redis.Redis.from_url(redis_url), "sa-user-", "secret:*") as user:
        yield user


def test_redis_acl_username_becomes_the_principal(audit, redis_url, acl_user, key):
    name, password = acl_user
    client = redis.Redis.from_url(redis_url, username=name, password=password)
    try:
        client.set(key, "v")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.get("password:outside-" + key)  # matches a secret pattern, outside the ACL
    finally:
        client.close()
    recs = audit.attrs()
    assert [(x["audit.action"], x["audit.outcome"], x["audit.principal"]) for x in recs] == [
        ("SET", "success", f"redis:{name}"),
        ("GET", "denied", f"redis:{name}"),
    ]
    assert password not in repr(recs)
    assert recs[1]["error.type"] == "redis.exceptions.NoPermissionError"


def test_wrong_password_is_denied_and_never_recorded(audit, redis_url, acl_user, key):
    name, _ = acl_user
    wrong = "not-the-password-" + secrets.token_hex(8)
    client = redis.Redis.from_url(redis_url, username=name, password=wrong)
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            client.get(key)
    finally:
        client.close()
    [rec] = audit.attrs()
    assert rec["audit.outcome"] == "denied"
    assert rec["audit.principal"] == f"redis:{name}"
    assert wrong not in repr(rec)


def test_sentinel_clients_name_the_service_not_a_made_up_host(audit, redis_address, key):
    """A Sentinel pool has no host of its own: the resource names the monitored service."""
    from redis.sentinel import Sentinel

    from servers import valkey_sentinel

    with valkey_sentinel(redis_address, "sa-master") as sentinel_address:
        sentinel = Sentinel([sentinel_address], socket_timeout=2)
        master = sentinel.master_for("sa-master", db=0, socket_timeout=2)
        try:
            master.set(key, "v")
            assert master.get(key) == b"v"
        finally:
            master.close()
    resources = {x["secret.resource"] for x in audit.attrs()}
    assert resources == {"redis+sentinel://sa-master/0"}


async def test_async_sentinel_clients_name_the_service(audit, redis_address, key):
    from redis.asyncio.sentinel import Sentinel

    from servers import valkey_sentinel

    with valkey_sentinel(redis_address, "sa-async-master") as sentinel_address:
        sentinel = Sentinel([sentinel_address], socket_timeout=2)
        master = sentinel.master_for("sa-async-master", db=0, socket_timeout=2)
        try:
            await master.set(key, "v")
        finally:
            await master.aclose()
    assert [x["secret.resource"] for x in audit.attrs()] == ["redis+sentinel://sa-async-master/0"]
