"""The tamper battery: the database refuses changes, and `verify` catches what a superuser forces through."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.rows import dict_row

from secret_audit import contract
from secret_audit.cli import main
from secret_audit.store._rows import COLUMNS, canonical_of_row
from secret_audit.store.verify import verify

from .records import chained, to_protobuf

PB = {"Content-Type": "application/x-protobuf"}


@pytest.fixture
def trail(client, tokens):
    recs = chained(6)
    assert client.post("/v1/logs", content=to_protobuf(recs), headers={**PB, **tokens.header("ingest")}
                       ).status_code == 200
    return recs[0]["attributes"]["audit.stream.id"]


@pytest.fixture
def forced(owner):
    """A superuser session with triggers off: the strongest attacker the chain has to expose."""
    owner.execute("SET session_replication_role = replica")
    yield owner
    owner.execute("SET session_replication_role = origin")


def test_clean_trail_verifies(trail, owner, db_url, monkeypatch, capsys):
    assert verify(owner).ok
    monkeypatch.setenv("DATABASE_URL", db_url)
    assert main(["verify"]) == 0
    assert "OK, every chain verifies" in capsys.readouterr().out


def test_app_role_and_owner_cannot_change_rows(trail, owner, store):
    with store.connection() as conn:
        for stmt in ("UPDATE audit_events SET body = 'x'", "DELETE FROM audit_events",
                     "TRUNCATE audit_events", "UPDATE audit_findings SET detail = 'x'"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(stmt)
    for stmt in ("UPDATE audit_events SET body = 'x'", "DELETE FROM audit_events", "TRUNCATE audit_events"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            owner.execute(stmt)


def first_break(conn):
    report = verify(conn)
    assert not report.ok
    return report.first_break, {b.kind for b in report.breaks}


def test_modified_row(trail, forced):
    forced.execute("UPDATE audit_events SET secret_name = 'innocent' WHERE sequence = 3")
    brk, kinds = first_break(forced)
    assert (brk.kind, brk.sequence) == ("modified", 3)
    assert kinds == {"modified"}


def test_modified_and_rehashed_row_breaks_the_next_link(trail, forced):
    forced.execute("UPDATE audit_events SET enduser_id = 'mallory' WHERE sequence = 3")
    with forced.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM audit_events WHERE sequence = 3").fetchone()
    forced.execute("UPDATE audit_events SET chain_hash = %s WHERE sequence = 3",
                   (contract.chain_hash(canonical_of_row(row)),))
    brk, kinds = first_break(forced)
    assert (brk.kind, brk.sequence) == ("chain_break", 4)


def test_deleted_row(trail, forced):
    forced.execute("DELETE FROM audit_events WHERE sequence = 4")
    brk, kinds = first_break(forced)
    assert (brk.kind, brk.sequence) == ("gap", 5)
    assert "count_mismatch" in kinds


def test_deleted_tail(trail, forced):
    forced.execute("DELETE FROM audit_events WHERE sequence = 6")
    brk, kinds = first_break(forced)
    assert kinds == {"head_mismatch"}


def test_inserted_row(trail, forced):
    cols = ", ".join(COLUMNS)
    forced.execute(f"INSERT INTO audit_events ({cols}) SELECT {cols} FROM audit_events WHERE sequence = 2")
    brk, kinds = first_break(forced)
    assert "duplicate_sequence" in kinds


def test_inserted_stream(trail, forced):
    forced.execute(
        "INSERT INTO audit_events (time, time_unix_nano, observed_unix_nano, event_name, severity_number, "
        "severity_text, body, trace_id, span_id, scope_name, scope_version, event_id, stream_id, sequence, "
        "chain_prev, chain_hash, attributes, resource, integrity) SELECT time, time_unix_nano, "
        "observed_unix_nano, event_name, severity_number, severity_text, body, trace_id, span_id, scope_name, "
        "scope_version, 'fake:1', 'fake', 1, chain_prev, chain_hash, attributes, resource, integrity "
        "FROM audit_events WHERE sequence = 1"
    )
    _, kinds = first_break(forced)
    assert "unregistered_stream" in kinds


def test_reordered_rows(trail, forced):
    forced.execute("UPDATE audit_events SET sequence = CASE sequence WHEN 2 THEN 3 ELSE 2 END "
                   "WHERE sequence IN (2, 3)")
    brk, kinds = first_break(forced)
    assert brk.kind == "modified"
    assert brk.sequence in (2, 3)


def test_cli_reports_the_first_break(trail, forced, db_url, monkeypatch, capsys):
    forced.execute("UPDATE audit_events SET outcome = 'denied' WHERE sequence = 2")
    monkeypatch.setenv("DATABASE_URL", db_url)
    assert main(["verify"]) == 1
    out = capsys.readouterr().out
    assert "first break:" in out
    assert "kind: modified" in out
    assert "sequence: 2" in out
    assert main(["verify", "--json"]) == 1
    import orjson

    doc = orjson.loads(capsys.readouterr().out)
    assert doc["first_break"]["kind"] == "modified"
    # a window that excludes every row has nothing to verify: not OK unless that is accepted
    assert main(["verify", "--end", "2000-01-01T00:00:00Z"]) == 1
    assert main(["verify", "--end", "2000-01-01T00:00:00Z", "--allow-empty"]) == 0
