"""Query API details: filters, cursor pagination, findings, custom events, live stream, retention."""

from __future__ import annotations

import datetime as dt
import time

import httpx
import orjson
import pytest

from secret_audit.store.retention import apply_retention, verify_archives
from secret_audit.store.verify import verify

from .conftest import live_stream
from .records import backdate, chained, to_protobuf

PB = {"Content-Type": "application/x-protobuf"}


def ingest(client, tokens, recs):
    resp = client.post("/v1/logs", content=to_protobuf(recs), headers={**PB, **tokens.header("ingest")})
    assert resp.status_code == 200
    return recs


def test_filters_each_select_their_rows(client, tokens):
    ingest(client, tokens, chained(2, secret="a", **{"audit.principal": "svc-a"}))
    ingest(client, tokens, chained(3, secret="b", **{"audit.outcome": "denied", "enduser.id": "bob",
                                                     "client.address": "198.51.100.1"}))
    h = tokens.header("auditor")

    def n(**params):
        return len(client.get("/api/audit-logs", params={"event_name": "secret.access", **params},
                              headers=h).json()["events"])

    assert n() == 5
    assert n(secret="a") == 2
    assert n(principal="svc-a") == 2
    assert n(outcome="denied") == 3
    assert n(enduser="bob") == 3
    assert n(client_address="198.51.100.1") == 3
    assert n(source="redis", operation="read") == 5
    assert n(source="gcp_secret_manager") == 0
    first = client.get("/api/audit-logs", params={"secret": "a"}, headers=h).json()["events"][0]
    assert n(trace_id=first["trace_id"]) == 1
    assert n(start="2000-01-01T00:00:00Z", end="2001-01-01T00:00:00Z") == 0
    assert n(start=(dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)).isoformat()) == 5


def test_cursor_pagination_is_stable_and_complete(client, tokens):
    recs = ingest(client, tokens, chained(25, secret="paged"))
    h = tokens.header("auditor")
    for order in ("asc", "desc"):
        seen, ids, cursor = [], [], None
        while True:
            params = {"secret": "paged", "limit": 7, "order": order, **({"cursor": cursor} if cursor else {})}
            page = client.get("/api/audit-logs", params=params, headers=h).json()
            seen += [e["sequence"] for e in page["events"]]
            ids += [e["event_id"] for e in page["events"]]
            ingest(client, tokens, chained(1, secret="paged"))  # new rows must not shift the pages
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert len(ids) == len(set(ids))  # no row twice
        expected = [r["attributes"]["audit.event.id"] for r in recs]
        if order == "asc":
            assert ids[:25] == expected
        else:
            mine = [i for i in ids if i in set(expected)]
            assert mine == expected[::-1]


@pytest.mark.parametrize("params", [
    {"limit": 0}, {"limit": 5000}, {"limit": "x"}, {"start": "yesterday"}, {"order": "up"},
    {"cursor": "!!!"}, {"secret": "a\x00b"}, {"secret": "x" * 2000},
])
def test_bad_filters_get_4xx(client, tokens, params):
    resp = client.get("/api/audit-logs", params=params, headers=tokens.header("auditor"))
    assert 400 <= resp.status_code < 500, resp.text
    assert client.get("/healthz").status_code == 200


def test_findings_endpoint_is_tenant_scoped(client, tokens):
    recs = chained(4, tenant="acme")
    del recs[1]
    ingest(client, tokens, recs)
    other = chained(3, tenant="globex")
    del other[1]
    ingest(client, tokens, other)
    acme = client.get("/api/integrity-findings", headers=tokens.header("acme-auditor")).json()["findings"]
    assert [(f["kind"], f["tenant"], f["sequence"]) for f in acme] == [("gap", "acme", 3)]
    assert len(client.get("/api/integrity-findings", headers=tokens.header("admin")).json()["findings"]) == 2


def test_custom_events_are_chained_and_queryable(client, tokens, owner):
    h = tokens.header("ingest")
    for user in ("alice", "bob"):
        resp = client.post("/api/audit-events", json={
            "event_name": "audit.login", "body": f"User {user} logged in",
            "attributes": {"enduser.id": user, "audit.outcome": "success", "login.method": "oidc"}},
            headers=h)
        assert resp.status_code == 201, resp.text
        assert resp.json()["event"]["integrity"] == "ok"
    rows = owner.execute("SELECT enduser_id, sequence, principal, attributes FROM audit_events "
                         "WHERE event_name = 'audit.login' ORDER BY sequence").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("alice", 1), ("bob", 2)]
    assert rows[0][2].startswith("token:")
    assert rows[0][3] == {"login.method": "oidc"}
    # a producer-chained custom event is checked like an OTLP record
    rec = chained(1)[0]
    attrs = rec["attributes"]
    resp = client.post("/api/audit-events", json={
        "event_name": "audit.export", "body": rec["body"], "attributes": attrs,
        "time_unix_nano": rec["time_unix_nano"]}, headers=h)
    assert resp.status_code == 201
    assert resp.json()["findings"] == ["hash_mismatch"]  # event name changed after hashing
    bad = client.post("/api/audit-events", json={"event_name": "login", "body": "x"}, headers=h)
    assert bad.status_code == 422
    partial = client.post("/api/audit-events", json={"event_name": "audit.x", "body": "x",
                                                      "attributes": {"audit.sequence": 1}}, headers=h)
    assert partial.status_code == 400
    assert verify(owner).total_breaks == 1  # only the deliberately mismatched record


def test_live_stream_delivers_matching_events(server_url, tokens):
    with live_stream(server_url, tokens.header("auditor"), timeout=15, secret="live", max_events=3) as received:
        time.sleep(0.1)
        hdr = {**PB, **tokens.header("ingest")}
        httpx.post(f"{server_url}/v1/logs", content=to_protobuf(chained(2, secret="other")), headers=hdr)
        httpx.post(f"{server_url}/v1/logs", content=to_protobuf(chained(3, secret="live")), headers=hdr)
    assert [e["secret_name"] for e in received] == ["live"] * 3
    assert [e["sequence"] for e in received] == [1, 2, 3]


def test_stream_needs_auditor(server_url, tokens):
    assert httpx.get(f"{server_url}/api/audit-logs/stream").status_code == 401
    assert httpx.get(f"{server_url}/api/audit-logs/stream", headers=tokens.header("ingest")).status_code == 403


def test_retention_archives_and_drops_old_partitions(client, tokens, owner, tmp_path):
    old = chained(4, secret="old")
    prev = backdate(old, 1_579_000_000_000_000_000)  # January 2020
    stream = old[0]["attributes"]["audit.stream.id"]
    newer = chained(2, stream=stream, start_seq=5, prev=prev, secret="new")
    # through the library: the HTTP ingest would hold records this old at their receive time
    from secret_audit.store._ingest import Ingestor
    from secret_audit.store._otlp import decode_protobuf

    assert Ingestor().ingest(owner, decode_protobuf(to_protobuf(old + newer))).accepted == 6
    assert verify(owner).ok
    done = apply_retention(owner, 365, tmp_path)
    assert [(p.name, p.rows) for p in done] == [("audit_events_p202001", 4)]
    assert owner.execute("SELECT count(*) FROM audit_events").fetchone()[0] == 2
    assert verify(owner).ok, verify(owner).as_dict()  # the link into the archive still checks
    assert verify_archives([tmp_path / "audit_events_p202001.jsonl.gz"]).ok
    from secret_audit.cli import main

    assert main(["verify", "--archive", str(tmp_path / "audit_events_p202001.jsonl.gz")]) == 0
    import gzip

    lines = gzip.decompress((tmp_path / "audit_events_p202001.jsonl.gz").read_bytes()).splitlines()
    forged = orjson.loads(lines[1])
    forged["attributes"]["secret.name"] = "innocent"
    lines[1] = orjson.dumps(forged)
    (tmp_path / "forged.jsonl.gz").write_bytes(gzip.compress(b"\n".join(lines)))
    assert main(["verify", "--archive", str(tmp_path / "forged.jsonl.gz")]) == 1
    assert owner.execute("SELECT partition_name, rows FROM audit_retention_log").fetchall() == [
        ("audit_events_p202001", 4)]
    assert apply_retention(owner, 365, tmp_path) == []


def test_stream_resumes_after_last_event_id(server_url, tokens):
    hdr = {**PB, **tokens.header("ingest")}
    httpx.post(f"{server_url}/v1/logs", content=to_protobuf(chained(4, secret="resume")), headers=hdr)
    page = httpx.get(f"{server_url}/api/audit-logs", params={"secret": "resume", "order": "asc"},
                     headers=tokens.header("auditor")).json()["events"]
    second_id = page[1]["id"]
    got = []
    with httpx.stream("GET", f"{server_url}/api/audit-logs/stream",
                      params={"secret": "resume", "max_events": 2},
                      headers={**tokens.header("auditor"), "Last-Event-ID": second_id}, timeout=30) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("id: "):
                got.append(line[4:])
    assert got == [page[2]["id"], page[3]["id"]]
    bad = httpx.get(f"{server_url}/api/audit-logs/stream", headers={**tokens.header("auditor"),
                                                                     "Last-Event-ID": "x"})
    assert bad.status_code == 400


def test_the_unknown_operation_is_stored_and_filtered_like_any_other(client, tokens):
    """Redis commands outside the command table are recorded with audit.operation ``unknown``."""
    ingest(client, tokens, chained(2, secret="mod-key", **{"audit.operation": "unknown",
                                                           "audit.action": "MYMODULE.GET"}))
    ingest(client, tokens, chained(1, secret="other"))
    h = tokens.header("auditor")
    events = client.get("/api/audit-logs", params={"operation": "unknown"}, headers=h).json()["events"]
    assert len(events) == 2
    assert {(e["secret_name"], e["operation"], e["action"]) for e in events} == {
        ("mod-key", "unknown", "MYMODULE.GET")
    }
