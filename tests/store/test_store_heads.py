"""Stream heads as append-only history (schema version 7): the upgrade, the history, its pruning."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from secret_audit.store import migrations
from secret_audit.store._ingest import Ingestor
from secret_audit.store._otlp import decode_protobuf
from secret_audit.store.retention import prune_heads
from secret_audit.store.verify import verify

from .records import chained, store_legacy, to_protobuf


def sid(recs):
    return recs[0]["attributes"]["audit.stream.id"]


def last_hash(recs):
    return recs[-1]["attributes"]["audit.chain.hash"]


def test_upgrade_to_schema_7_moves_heads_into_history(bare_db_url, monkeypatch):
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:6])
        assert migrations.migrate(conn) == [1, 2, 3, 4, 5, 6]
        a, b = chained(5), chained(3, tenant="acme")
        store_legacy(conn, a + b)
        # what retention left behind on schema 6: a's first two records archived, their mark on its row
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM audit_events WHERE stream_id = %s AND sequence <= 2", (sid(a),))
        conn.execute("SET session_replication_role = origin")
        conn.execute("UPDATE audit_streams SET archived_count = 2, archived_through = 2, archived_hash = %s "
                     "WHERE stream_id = %s", (a[1]["attributes"]["audit.chain.hash"], sid(a)))
        monkeypatch.undo()
        assert migrations.migrate(conn) == [7]

        heads = conn.execute("SELECT stream_id, last_sequence, last_hash, record_count FROM audit_stream_heads"
                             ).fetchall()
        assert sorted(heads) == sorted([(sid(a), 5, last_hash(a), 5), (sid(b), 3, last_hash(b), 3)])
        assert conn.execute("SELECT archived_count, archived_through, archived_hash FROM audit_stream_archives"
                            ).fetchall() == [(2, 2, a[1]["attributes"]["audit.chain.hash"])]
        columns = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'audit_streams' "
            "ORDER BY ordinal_position")]
        assert columns == ["stream_id", "tenant", "service_name", "first_seen"]
        assert conn.execute("SELECT tenant FROM audit_streams WHERE stream_id = %s", (sid(b),)).fetchone() == (
            "acme",)
        report = verify(conn)
        assert report.ok, report.as_dict()  # a's link into its archive still checks

        # ingest goes on from the migrated heads, with nothing to find
        more = chained(2, stream=sid(a), start_seq=6, prev=last_hash(a))
        result = Ingestor().ingest(conn, decode_protobuf(to_protobuf(more)))
        assert (result.accepted, result.findings) == (2, [])
        assert conn.execute("SELECT last_sequence, record_count FROM audit_stream_state WHERE stream_id = %s",
                            (sid(a),)).fetchone() == (7, 7)
        assert verify(conn).ok
        # the app role may no longer move a head, and nobody may change the registry
        conn.execute("SET ROLE secret_audit_app")
        try:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("UPDATE audit_streams SET tenant = 'x'")
        finally:
            conn.execute("RESET ROLE")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute("UPDATE audit_streams SET tenant = 'x'")
        assert migrations.migrate(conn) == []


def test_each_request_appends_a_head_and_retention_prunes_only_superseded_ones(owner):
    recs = chained(6)
    ingest = Ingestor()
    for part in (recs[:2], recs[2:4], recs[4:]):
        assert ingest.ingest(owner, decode_protobuf(to_protobuf(part))).accepted == 2
    heads = owner.execute("SELECT last_sequence, record_count FROM audit_stream_heads ORDER BY id").fetchall()
    assert heads == [(2, 2), (4, 4), (6, 6)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        owner.execute("UPDATE audit_stream_heads SET last_sequence = 4")
    assert prune_heads(owner, dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)) == 0  # all too new
    assert prune_heads(owner, dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)) == 2
    assert owner.execute("SELECT last_sequence FROM audit_stream_heads").fetchall() == [(6,)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        owner.execute("DELETE FROM audit_stream_heads")  # a stream's latest head never goes
    assert verify(owner).ok
