"""The attack suite: each test is one attack on the store, run against a real PostgreSQL, and what refuses
or detects it. Run it alone with ``pytest tests/store/test_attacks.py``; docs/store.md has the table.

The signed-checkpoint attacks (a forged insert by the app role, a cut tail, a re-chained stream, a
deleted stream) are the signing half's, with `verify --public-key` and `--against`.
"""

from __future__ import annotations

import datetime as dt
import gzip
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from psycopg.conninfo import make_conninfo

from secret_audit import contract
from secret_audit.store._ingest import Ingestor
from secret_audit.store._otlp import decode_protobuf
from secret_audit.store._query import Filters, search
from secret_audit.store.app import create_app
from secret_audit.store.config import StoreConfig
from secret_audit.store.migrations import ensure_partitions, migrate
from secret_audit.store.verify import verify

from .conftest import opened_store
from .records import chained, rehash, to_protobuf

PB = {"Content-Type": "application/x-protobuf"}
DAY_NS = 86400 * 10**9
# Every table verify reads: what the app role may do there, and a column to try an UPDATE on.
VERIFY_READS = {
    "audit_events": ({"SELECT", "INSERT"}, "id"),
    "audit_findings": ({"SELECT", "INSERT"}, "detail"),
    "audit_streams": ({"SELECT", "INSERT"}, "stream_id"),
    "audit_stream_heads": ({"SELECT", "INSERT"}, "last_hash"),
    "audit_stream_archives": ({"SELECT"}, "archived_hash"),
    "audit_retention_log": ({"SELECT"}, "archive"),
    "audit_tokens": ({"SELECT"}, "token_id"),
}


def sid(recs: list[dict[str, Any]]) -> str:
    return str(recs[0]["attributes"]["audit.stream.id"])


def post(client: Any, tokens: Any, recs: list[dict[str, Any]], label: str = "ingest") -> Any:
    resp = client.post("/v1/logs", content=to_protobuf(recs), headers={**PB, **tokens.header(label)})
    assert resp.status_code == 200, resp.text
    return ExportLogsServiceResponse.FromString(resp.content).partial_success


def breaks(conn: psycopg.Connection[Any]) -> set[tuple[str, int | None]]:
    return {(b.kind, b.sequence) for b in verify(conn).breaks}


def retimed(recs: list[dict[str, Any]], times: list[int]) -> list[dict[str, Any]]:
    """The records at other times, chained again as their producer would have."""
    prev = "0" * 64
    for rec, at in zip(recs, times, strict=True):
        rec["time_unix_nano"] = rec["observed_unix_nano"] = at
        rec["attributes"]["audit.chain.prev"] = prev
        prev = rehash(rec)
    return recs


@pytest.fixture(params=[True, False], ids=["native", "python"])
def paths(request: Any, db_url: str) -> Iterator[Any]:
    """A client on a store running the C ingest path, or the pure-Python one."""
    config = StoreConfig(max_body_bytes=1024 * 1024, pool_size=4, native=request.param)
    with opened_store(config, db_url) as store, TestClient(create_app(store, manage_store=False)) as c:
        assert store.ingestor.native is request.param or not request.param
        yield c


@pytest.fixture
def trail(client: Any, tokens: Any) -> str:
    recs = chained(6, tenant="acme")
    assert post(client, tokens, recs, "acme-ingest").rejected_log_records == 0
    return sid(recs)


@pytest.fixture
def superuser(owner: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """A superuser session with every trigger off."""
    owner.execute("SET session_replication_role = replica")
    yield owner
    owner.execute("SET session_replication_role = origin")


# --- the database: nothing verify relies on is a row the app role may change -------------------------

def test_app_role_cannot_move_a_stream_head(trail: str, store: Any) -> None:
    """Before schema 7 the app role could UPDATE audit_streams, the heads verify compared with."""
    with store.connection() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("UPDATE audit_streams SET service_name = 'forged' WHERE stream_id = %s", (trail,))


@pytest.mark.parametrize("table", sorted(VERIFY_READS))
def test_app_role_has_only_insert_and_select_on_what_verify_reads(table: str, trail: str, store: Any,
                                                                  owner: psycopg.Connection[Any]) -> None:
    granted = {
        p for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
        if owner.execute("SELECT has_table_privilege('secret_audit_app', %s, %s)", (table, p)).fetchone()[0]
    }
    allowed, column = VERIFY_READS[table]
    assert granted == allowed
    with store.connection() as conn:
        for stmt in (f"UPDATE {table} SET {column} = {column}", f"DELETE FROM {table}", f"TRUNCATE {table}"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(stmt)


def test_app_role_cannot_turn_triggers_off(trail: str, store: Any) -> None:
    with store.connection() as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="must be owner"):
            conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET session_replication_role = replica")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="must be owner"):
            conn.execute("DROP TRIGGER audit_events_append_only ON audit_events")


def test_the_service_connects_as_the_owner_and_only_switches_role(store: Any, owner: Any) -> None:
    """What docs/store.md says: the app role guards the service's own statements, not code running in
    its process, which can RESET ROLE back to the connecting user (the owner)."""
    with store.connection() as conn:
        assert conn.execute("SELECT current_user, session_user").fetchone() == (
            "secret_audit_app", owner.info.user)
        assert conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'audit_events'"
                            ).fetchone()[0] == owner.info.user
        conn.execute("RESET ROLE")
        try:
            assert conn.execute("SELECT current_user").fetchone()[0] == owner.info.user
        finally:
            conn.execute("SET ROLE secret_audit_app")


@pytest.fixture
def owned_db(pg_url: str, template_db: str) -> Iterator[str]:
    """A database migrated by a role that owns it and its tables but is not a superuser."""
    role, name = "sa_owner_" + uuid.uuid4().hex[:8], "sa_own_" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg_url, autocommit=True) as su:
        su.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER')
        su.execute(f'GRANT secret_audit_app TO "{role}"')  # the app role exists (the template made it)
        su.execute(f'CREATE DATABASE "{name}" OWNER "{role}"')
    url = make_conninfo(pg_url, dbname=name, user=role)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)
            assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
        yield url
    finally:
        with psycopg.connect(pg_url, autocommit=True) as su:
            su.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            su.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_table_owner_turns_triggers_off_and_hides_a_secret_name_in_jsonb(owned_db: str) -> None:
    """Not only a superuser: the tables' owner may disable their triggers (and verify names the edit)."""
    recs = chained(6, secret="db-password")
    with psycopg.connect(owned_db, autocommit=True) as conn:
        assert Ingestor().ingest(conn, decode_protobuf(to_protobuf(recs))).accepted == 6
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET session_replication_role = replica")  # a superuser's switch
        conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
        conn.execute("UPDATE audit_events SET secret_name = NULL, "
                     "attributes = attributes || jsonb_build_object('secret.name', secret_name) "
                     "WHERE sequence = 3")
        conn.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only")
        assert len(search(conn, Filters(secret="db-password"), None).events) == 5  # the row is hidden
        assert breaks(conn) == {("moved_attribute", 3)}


# --- verify checks the columns queries use against the hashed content --------------------------------

def test_superuser_hides_a_secret_name_in_jsonb(trail: str, superuser: Any) -> None:
    superuser.execute("UPDATE audit_events SET secret_name = NULL, "
                      "attributes = attributes || jsonb_build_object('secret.name', secret_name) "
                      "WHERE sequence = 3")
    assert len(search(superuser, Filters(secret="db-password"), None).events) == 5
    report = verify(superuser)
    assert {(b.kind, b.sequence) for b in report.breaks} == {("moved_attribute", 3)}
    assert "secret_name is NULL" in report.breaks[0].detail


def test_superuser_puts_a_key_in_both_column_and_jsonb(trail: str, superuser: Any) -> None:
    superuser.execute("UPDATE audit_events SET attributes = attributes || '{\"audit.outcome\": 7}' "
                      "WHERE sequence = 2")
    assert breaks(superuser) == {("moved_attribute", 2)}


def test_superuser_moves_a_row_to_another_tenant(trail: str, superuser: Any, client: Any, tokens: Any) -> None:
    superuser.execute("UPDATE audit_events SET tenant = 'globex' WHERE sequence = 4")
    seen = client.get("/api/audit-logs", headers=tokens.header("globex-auditor")).json()["events"]
    assert [e["sequence"] for e in seen] == [4]  # another tenant's auditor now sees it
    report = verify(superuser)
    assert {(b.kind, b.sequence) for b in report.breaks} == {("tenant_mismatch", 4)}
    assert {(b.expected, b.actual) for b in report.breaks} == {("acme", "globex")}


def test_superuser_moves_a_row_by_three_days(trail: str, superuser: Any) -> None:
    back = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)
    ensure_partitions(superuser, {(back.year, back.month)})  # three days back may be last month
    superuser.execute("UPDATE audit_events SET time = time - interval '3 days' WHERE sequence = 5")
    assert breaks(superuser) == {("time_mismatch", 5)}


# --- ingest never drops data silently, and one request cannot flood the partitions -------------------

def test_two_member_gzip_body_is_read_whole(paths: Any, tokens: Any, owner: Any) -> None:
    first, second = chained(3), chained(4)
    body = gzip.compress(to_protobuf(first)) + gzip.compress(to_protobuf(second))
    resp = paths.post("/v1/logs", content=body,
                      headers={**PB, "Content-Encoding": "gzip", **tokens.header("ingest")})
    assert resp.status_code == 200
    stored = owner.execute("SELECT stream_id, count(*) FROM audit_events GROUP BY 1").fetchall()
    assert dict(stored) == {sid(first): 3, sid(second): 4}


def test_gzip_body_with_trailing_garbage_is_refused(paths: Any, tokens: Any, owner: Any) -> None:
    body = gzip.compress(to_protobuf(chained(3))) + b"not a gzip member"
    resp = paths.post("/v1/logs", content=body,
                      headers={**PB, "Content-Encoding": "gzip", **tokens.header("ingest")})
    assert resp.status_code == 400
    assert "gzip" in resp.text
    assert owner.execute("SELECT count(*) FROM audit_events").fetchone() == (0,)


@pytest.mark.parametrize("offset_ns", [3 * DAY_NS, 9_000_000_000_000_000_000 - time.time_ns(), -40 * DAY_NS],
                         ids=["3-days-ahead", "year-2255", "40-days-old"])
def test_record_time_out_of_bounds_is_held_at_the_receive_time(paths: Any, tokens: Any, owner: Any,
                                                               offset_ns: int) -> None:
    now = time.time_ns()
    recs = retimed(chained(3), [now - 1000, now + offset_ns, now])
    partial = post(paths, tokens, recs)
    assert partial.rejected_log_records == 0
    assert "outside the store's bounds" in partial.error_message  # OTLP's partial success as a warning
    rows = owner.execute("SELECT sequence, time_unix_nano, extract(epoch FROM time - now()) FROM audit_events "
                         "ORDER BY sequence").fetchall()
    assert [(r[0], r[1]) for r in rows] == [(1, now - 1000), (2, now + offset_ns), (3, now)]
    assert abs(rows[1][2]) < 60  # stored at the receive time; its own time stays in time_unix_nano
    findings = owner.execute("SELECT kind, range_first, range_last FROM audit_findings").fetchall()
    assert findings == [("time_out_of_bounds", 2, 2)]
    assert verify(owner).ok
    assert owner.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'audit_events'::regclass"
                         ).fetchone()[0] <= 2


def test_one_request_cannot_flood_the_partitions(paths: Any, tokens: Any, owner: Any) -> None:
    """One tenant-scoped ingest token, 240 records one month apart (up to the year 2046)."""
    now = time.time_ns()
    recs = retimed(chained(240, tenant="acme"), [now + i * 31 * DAY_NS for i in range(240)])
    partial = post(paths, tokens, recs, "acme-ingest")
    assert partial.rejected_log_records == 0
    assert owner.execute("SELECT count(*) FROM audit_events").fetchone() == (240,)  # nothing lost
    assert owner.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'audit_events'::regclass"
                         ).fetchone()[0] <= 3
    assert owner.execute("SELECT kind, range_first, range_last FROM audit_findings").fetchall() == [
        ("time_out_of_bounds", 2, 240)]
    assert verify(owner).ok


# --- every refused call is in the trail --------------------------------------------------------------

def refusals(owner: Any) -> list[tuple[Any, ...]]:
    return owner.execute(
        "SELECT action, outcome, principal, client_address, attributes->>'audit.refused.count', body "
        "FROM audit_events WHERE event_name = 'audit.query' AND principal = 'anonymous' ORDER BY sequence"
    ).fetchall()


def test_unauthenticated_calls_are_in_the_trail(store: Any, client: Any, tokens: Any, owner: Any) -> None:
    assert client.get("/api/audit-logs").status_code == 401
    assert len(refusals(owner)) == 1
    store.refusals.clock = lambda: time.time() + 120  # a later minute: its first call is written at once
    assert client.get("/stats", headers={"Authorization": "Bearer sat_0123456789ab_nope"}).status_code == 401
    rows = refusals(owner)
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [
        ("GET /api/audit-logs", "denied", "anonymous", "testclient", "1"),
        ("GET /stats", "denied", "anonymous", "testclient", "1"),
    ]
    assert "nope" not in str(rows)  # never the presented token


def test_a_flood_of_unauthenticated_calls_is_two_records_per_address_and_minute(store: Any, client: Any,
                                                                                owner: Any) -> None:
    if time.time() % 60 > 40:  # the 200 calls take a few seconds: all in one minute
        time.sleep(60 - time.time() % 60)
    for i in range(200):
        bad = {"Authorization": "Bearer sat_0123456789ab_nope"} if i % 2 else {}
        assert client.post("/v1/logs", content=b"", headers={**PB, **bad}).status_code == 401
    assert len(refusals(owner)) == 1  # the first, at once
    later = time.time() + 60
    store.refusals.clock = lambda: later
    store.refusals.flush()  # what the timer does once the minute is over
    rows = refusals(owner)
    assert [r[4] for r in rows] == ["1", "200"]
    assert "100 no bearer token, 100 unknown or revoked token" in rows[1][5]
    assert verify(owner).ok


def test_stats_reads_are_in_the_trail(client: Any, tokens: Any, owner: Any) -> None:
    assert client.get("/stats", headers=tokens.header("auditor")).status_code == 200
    row = owner.execute("SELECT action, outcome, principal FROM audit_events WHERE event_name = 'audit.query'"
                        ).fetchone()
    assert row is not None
    assert row[:2] == ("GET /stats", "success")
    assert row[2].startswith("token:")


@pytest.mark.parametrize("name", sorted(contract.RESERVED_EVENT_NAMES))
def test_custom_events_cannot_take_reserved_names(name: str, client: Any, tokens: Any, owner: Any) -> None:
    resp = client.post("/api/audit-events", json={"event_name": name, "body": "forged"},
                       headers=tokens.header("ingest"))
    assert resp.status_code == 422
    assert owner.execute("SELECT count(*) FROM audit_events WHERE body = 'forged'").fetchone() == (0,)


def test_custom_events_cannot_claim_another_principal(client: Any, tokens: Any, owner: Any) -> None:
    resp = client.post("/api/audit-events", json={
        "event_name": "audit.login", "body": "User alice logged in",
        "attributes": {"audit.principal": "svc-root"}}, headers=tokens.header("ingest"))
    assert resp.status_code == 403
    rows = owner.execute("SELECT event_name, outcome, principal, body FROM audit_events").fetchall()
    assert len(rows) == 1
    assert rows[0][:2] == ("audit.query", "denied")
    assert rows[0][2].startswith("token:")
    assert "svc-root" not in rows[0][3]


def test_ingest_cannot_forge_the_stores_own_audit_records(paths: Any, tokens: Any, owner: Any) -> None:
    forged = chained(1, **{"audit.principal": "token:0123456789ab:alice"})
    forged[0]["event_name"] = "audit.query"
    rehash(forged[0])
    partial = post(paths, tokens, forged + chained(1))
    assert partial.rejected_log_records == 1
    assert "written only by the audit store itself" in partial.error_message
    assert owner.execute("SELECT event_name FROM audit_events").fetchall() == [("secret.access",)]
