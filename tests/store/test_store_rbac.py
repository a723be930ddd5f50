"""Access control: 401 without a token, 403 for the wrong role, tenants never see each other's rows."""

from __future__ import annotations

import pytest

from secret_audit.store.tokens import revoke_token

from .records import chained, to_protobuf

PB = {"Content-Type": "application/x-protobuf"}

# (method, path, roles allowed)
MATRIX = [
    ("POST", "/v1/logs", {"ingest", "admin"}),
    ("POST", "/api/audit-events", {"ingest", "admin"}),
    ("GET", "/api/audit-logs", {"auditor", "admin"}),
    ("GET", "/api/integrity-findings", {"auditor", "admin"}),
    ("POST", "/api/verify", {"auditor", "admin"}),
    ("GET", "/stats", {"auditor", "admin"}),
]


def call(client, method, path, headers):
    if path == "/v1/logs":
        return client.post(path, content=to_protobuf(chained(1)), headers={**PB, **headers})
    if path == "/api/audit-events":
        return client.post(path, json={"event_name": "audit.login", "body": "x"}, headers=headers)
    return client.request(method, path, headers=headers)


@pytest.mark.parametrize(("method", "path", "allowed"), MATRIX)
def test_role_matrix(client, tokens, method, path, allowed):
    assert call(client, method, path, {}).status_code == 401
    assert call(client, method, path, {"Authorization": "Bearer nope"}).status_code == 401
    assert call(client, method, path, {"Authorization": "Basic dXNlcjpwYXNz"}).status_code == 401
    for role in ("ingest", "auditor", "admin"):
        status = call(client, method, path, tokens.header(role)).status_code
        assert (status < 300) == (role in allowed), (role, status)
        if role not in allowed:
            assert status == 403


def test_health_needs_no_token(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_revoked_token_is_refused(client, tokens, owner):
    token_id = tokens["auditor"].split("_")[1]
    assert client.get("/api/audit-logs", headers=tokens.header("auditor")).status_code == 200
    assert revoke_token(owner, token_id)
    assert client.get("/api/audit-logs", headers=tokens.header("auditor")).status_code == 401


def test_tokens_are_hashed_at_rest(tokens, owner):
    stored = " ".join(str(r) for r in owner.execute("SELECT * FROM audit_tokens").fetchall())
    for raw in tokens.values():
        assert raw not in stored
        assert raw.split("_", 2)[2] not in stored


def test_tenant_scoping(client, tokens):
    for tenant in ("acme", "globex", None):
        resp = client.post("/v1/logs", content=to_protobuf(chained(3, tenant=tenant, secret=f"s-{tenant}")),
                           headers={**PB, **tokens.header("ingest")})
        assert resp.status_code == 200
    acme = client.get("/api/audit-logs", params={"event_name": "secret.access"},
                      headers=tokens.header("acme-auditor")).json()["events"]
    assert {e["tenant"] for e in acme} == {"acme"}
    assert len(acme) == 3
    # asking for another tenant's rows explicitly still returns none
    sneaky = client.get("/api/audit-logs", params={"tenant": "globex"},
                        headers=tokens.header("acme-auditor")).json()["events"]
    assert sneaky == []
    everyone = client.get("/api/audit-logs", params={"event_name": "secret.access"},
                          headers=tokens.header("auditor")).json()["events"]
    assert len(everyone) == 9
    stats = client.get("/stats", headers=tokens.header("globex-auditor")).json()
    assert {s["tenant"] for s in stats["streams"]} == {"globex"}


def test_every_read_is_audited(client, tokens, owner):
    client.get("/api/audit-logs", params={"secret": "db-password"}, headers=tokens.header("auditor"))
    client.get("/api/audit-logs", headers=tokens.header("ingest"))  # refused: audited as denied
    rows = owner.execute(
        "SELECT action, outcome, principal, attributes->>'audit.query.filters', integrity FROM audit_events "
        "WHERE event_name = 'audit.query' ORDER BY sequence"
    ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [("GET /api/audit-logs", "success"),
                                            ("query the audit log", "denied")]
    assert rows[0][2].endswith(":auditor")
    assert rows[0][3] == '{"secret":"db-password"}'
    assert {r[4] for r in rows} == {"ok"}
    for raw in tokens.values():
        assert raw.split("_", 2)[2] not in str(rows)
