"""examples/secret_service in process: real Redis, the Secret Manager fake through the real client, both
instrumentors, and the app's middleware putting the caller into the audit context."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from conftest import Audit, instrumented
from gcp_fixtures import make_client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from secret_service import app as service  # noqa: E402
from secret_service import fetcher as fetcher_module  # noqa: E402
from secret_service.app import client_address  # noqa: E402


def scope(peer: str | None, xff: str | None = None) -> dict[str, Any]:
    headers = [(b"x-forwarded-for", xff.encode())] if xff else []
    return {"client": (peer, 1234) if peer else None, "headers": headers}


@pytest.mark.parametrize(
    ("peer", "xff", "trusted", "expected"),
    [
        ("198.51.100.1", None, set(), "198.51.100.1"),
        ("198.51.100.1", "203.0.113.7", set(), "198.51.100.1"),  # an untrusted peer cannot claim another address
        ("10.0.0.2", "203.0.113.7", {"10.0.0.2"}, "203.0.113.7"),
        ("10.0.0.2", "6.6.6.6, 203.0.113.7", {"10.0.0.2"}, "203.0.113.7"),  # the client-supplied hop is ignored
        ("10.0.0.2", "203.0.113.7, 10.0.0.1", {"10.0.0.2", "10.0.0.1"}, "203.0.113.7"),  # two trusted proxies
        ("10.0.0.2", None, {"10.0.0.2"}, "10.0.0.2"),
        (None, None, set(), None),
    ],
)
def test_client_address(peer, xff, trusted, expected):
    assert client_address(scope(peer, xff), frozenset(trusted)) == expected


@pytest.fixture
def trail(audit_env: dict[str, str], monkeypatch) -> Iterator[Audit]:
    from secret_audit.gcp import GcpSecretManagerSecretAuditInstrumentor
    from secret_audit.redis import RedisSecretAuditInstrumentor

    helper = Audit({**audit_env, "OTEL_PYTHON_SECRET_AUDIT_SPANS": "in_trace"})
    tracer = helper.tracer_provider.get_tracer("examples")
    monkeypatch.setattr(service, "_tracer", tracer)
    monkeypatch.setattr(fetcher_module, "_tracer", tracer)
    with instrumented(helper, RedisSecretAuditInstrumentor(), GcpSecretManagerSecretAuditInstrumentor()):
        yield helper


def row(rec: Any) -> tuple[Any, ...]:
    a = dict(rec.attributes)
    return (a["audit.access_path"], a.get("enduser.id"), a.get("client.address"), a["secret.source"],
            a["audit.action"], a["audit.outcome"])


def test_internal_and_external_reads_carry_who_and_where(trail, gcp_server, redis_url, monkeypatch):
    from starlette.testclient import TestClient

    project = f"p-{secrets.token_hex(4)}"
    name = f"api-key-{secrets.token_hex(3)}"
    boot = f"boot-{secrets.token_hex(3)}"
    value = "canary-" + secrets.token_hex(12)
    admin = make_client(gcp_server, "grpc")
    for sid in (name, boot):
        admin.create_secret(parent=f"projects/{project}", secret_id=sid, secret={"replication": {}})
        admin.add_secret_version(parent=f"projects/{project}/secrets/{sid}", payload={"data": value.encode()})
    admin.transport.close()
    monkeypatch.setenv("STARTUP_SECRETS", boot)
    monkeypatch.setenv("REFRESH_INTERVAL", "0")
    monkeypatch.setenv("TRUSTED_PROXIES", "testclient")  # Starlette's test client is the "proxy" here
    fetcher = fetcher_module.SecretFetcher(redis.Redis.from_url(redis_url), make_client(gcp_server, "grpc"),
                                           project, ttl=60)
    trail.clear()
    with TestClient(service.create_app(fetcher)) as client:
        startup = trail.records()
        trail.clear()
        hdr = {"X-User": "alice@example.com", "X-Forwarded-For": "203.0.113.7"}
        cold = client.get(f"/api/secrets/{name}", headers=hdr)
        warm = client.get(f"/api/secrets/{name}", headers=hdr)
        anonymous = client.get(f"/api/secrets/{name}")
        missing = client.get("/api/secrets/nope-" + secrets.token_hex(3), headers={"X-User": "bob"})
        rotated = client.put(f"/api/secrets/{name}", content=b"new-" + value.encode(), headers={"X-User": "carol"})
        external = trail.records()
    assert (cold.status_code, warm.status_code, anonymous.status_code, missing.status_code, rotated.status_code) == (
        200, 200, 401, 404, 201)
    assert cold.json()["source"] == "vault"
    assert warm.json()["source"] == "cache"
    assert rotated.json()["version"] == "2"

    assert [row(r) for r in startup] == [
        ("internal", None, None, "redis", "GET", "not_found"),
        ("internal", None, None, "gcp_secret_manager", "AccessSecretVersion", "success"),
        ("internal", None, None, "redis", "SET", "success"),
    ]
    alice = ("external", "alice@example.com", "203.0.113.7")
    peer = ("external", "bob", "testclient")  # no X-Forwarded-For: the socket peer
    assert [row(r) for r in external] == [
        (*alice, "redis", "GET", "not_found"),
        (*alice, "gcp_secret_manager", "AccessSecretVersion", "success"),
        (*alice, "redis", "SET", "success"),
        (*alice, "redis", "GET", "success"),
        # the anonymous request was refused before any secret access: no record
        (*peer, "redis", "GET", "not_found"),
        (*peer, "gcp_secret_manager", "AccessSecretVersion", "not_found"),
        ("external", "carol", "testclient", "gcp_secret_manager", "AddSecretVersion", "success"),
        ("external", "carol", "testclient", "redis", "SET", "success"),
    ]
    # one trace per request, shared by its cache and vault accesses, with an audit span for each
    traces = [r.trace_id for r in external]
    assert len(set(traces[:3])) == 1
    assert len(set(traces)) == 4
    assert traces[3] not in traces[:3]
    spans = {s.context.span_id: s for s in trail.spans()}
    for rec in external:
        span = spans[rec.span_id]
        assert span.name.startswith("secret.")
        assert span.parent is not None  # under get_secret/put_secret, under the request span
    # the value is in the HTTP answer (it is a secret service) but never in a record
    for rec in startup + external:
        assert value not in str(dict(rec.attributes)) + str(rec.body)
