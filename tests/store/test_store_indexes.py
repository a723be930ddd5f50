"""Each indexed filter of the query API is served by its index, as the planner sees the API's own SQL."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from secret_audit import contract
from secret_audit.store import _query, migrations
from secret_audit.store._ingest import Ingestor
from secret_audit.store._otlp import decode_protobuf
from secret_audit.store._query import Filters, and_all, search, since, where_clause

from .records import chained, rehash, store_legacy, to_protobuf

# filter -> the index (on every partition) that must answer it
INDEXED = {
    "secret": "secret",
    "principal": "principal",
    "enduser": "enduser",
    "client_address": "client",
    "trace_id": "trace",
    "stream_id": "stream_seq",
}


@pytest.fixture
def filled(db_url):
    """A database with a few hundred rows, analysed, so plans are real ones."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        for _ in range(3):
            Ingestor().ingest(conn, decode_protobuf(to_protobuf(chained(100))))
        conn.execute("ANALYZE audit_events")
        yield conn


@pytest.mark.parametrize("name", sorted(INDEXED))
def test_filter_uses_its_index(filled, name):
    cur = filled.execute("SELECT * FROM audit_events LIMIT 1")
    values = dict(zip([d.name for d in cur.description], cur.fetchone(), strict=True))
    column = {"secret": "secret_name", "enduser": "enduser_id"}.get(name, name)
    conds, params = where_clause(Filters(**{name: values[column]}), None)
    query = sql.SQL("EXPLAIN SELECT * FROM audit_events WHERE {}").format(and_all(conds))
    filled.execute("SET enable_seqscan = off")  # a tiny table would otherwise be read whole
    plan = "\n".join(r[0] for r in filled.execute(query, params).fetchall())
    parent = f"audit_events_{INDEXED[name]}"
    children = {r[0] for r in filled.execute(
        "SELECT i.relname FROM pg_inherits h JOIN pg_class i ON i.oid = h.inhrelid "
        "WHERE h.inhparent = %s::regclass", (parent,))}
    # "Index Scan using <index> on ..." or "Bitmap Index Scan on <index>"
    assert children
    assert any(f"using {child} " in plan or f"Index Scan on {child} " in plan for child in children), plan


def test_trace_index_is_a_hash_index(filled):
    method = filled.execute(
        "SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam "
        "WHERE c.relname = 'audit_events_trace'"
    ).fetchone()
    assert method == ("hash",)


BYTEWISE = ("stream_id", "secret_name", "principal", "enduser_id", "client_address")


def test_indexed_text_columns_compare_bytewise(filled):
    # schema version 5: B-tree inserts compare these keys with memcmp, not through the locale
    def collations(relation: object) -> dict[str, str]:
        return dict(filled.execute(
            "SELECT a.attname, c.collname FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation "
            "WHERE a.attrelid = %s::regclass AND a.attname = ANY(%s)", (relation, list(BYTEWISE)),
        ).fetchall())

    assert collations("audit_events") == dict.fromkeys(BYTEWISE, "C")
    # and so do the partitions, where the rows and index entries are
    part = filled.execute("SELECT inhrelid::regclass::text FROM pg_inherits "
                          "WHERE inhparent = 'audit_events'::regclass").fetchone()[0]
    assert collations(part) == dict.fromkeys(BYTEWISE, "C")


# filter -> (column, the values of two equal-length keys)
HASHED = {
    "secret": ("secret_name", "db-a", "db-b"),
    "principal": ("principal", "svc-1", "svc-2"),
    "enduser": ("enduser_id", "ann", "bob"),
    "client_address": ("client_address", "198.51.100.1", "198.51.100.2"),
}


def _attrs(first: bool) -> dict[str, str]:
    keys = {"principal": "audit.principal", "enduser": "enduser.id", "client_address": "client.address"}
    values = {name: v[1] if first else v[2] for name, v in HASHED.items()}
    return {"secret": values.pop("secret"), **{keys[k]: v for k, v in values.items()}}


def test_hashed_filters_recheck_the_value(db_url, monkeypatch):
    # Schema version 6 indexes a 64-bit hash of these values. No collision of that hash is at hand, so
    # the queries hash by length here instead: "db-a" and "db-b" collide, and only the recheck of the
    # rows read tells them apart (in the search, across pages, and in the live stream's catch-up).
    with psycopg.connect(db_url, autocommit=True) as conn:
        for first in (True, False, True, False):
            Ingestor().ingest(conn, decode_protobuf(to_protobuf(chained(5, **_attrs(first)))))
        monkeypatch.setattr(_query, "KEY_HASH", "length({})::bigint")
        for name, (column, wanted, other) in HASHED.items():
            conds, params = where_clause(Filters(**{name: wanted}), None)
            read = conn.execute(sql.SQL("SELECT {} FROM audit_events WHERE {}").format(
                sql.Identifier(column), and_all(conds)), params).fetchall()
            assert sorted({r[0] for r in read}) == [wanted, other]  # the collision is real
            seen, cursor = [], None
            while True:
                page = search(conn, Filters(**{name: wanted}), None, limit=3, cursor=cursor)
                seen += page.events
                if not (cursor := page.next_cursor):
                    break
            assert len(seen) == 10
            assert {e[column] for e in seen} == {wanted}
            missed = since(conn, Filters(**{name: wanted}), None, 0)
            assert len(missed) == 10
            assert {e[column] for e in missed} == {wanted}


def test_hashed_filter_estimates_rows_as_the_value_does(db_url):
    # Matching the value in SQL besides its hash would make the planner multiply two selectivities of
    # one fact (here 1/2 * 1/2): a frequent secret would look rare, and get a plan that reads it whole.
    with psycopg.connect(db_url, autocommit=True) as conn:
        for first in (True, False) * 3:
            Ingestor().ingest(conn, decode_protobuf(to_protobuf(chained(100, **_attrs(first)))))
        conn.execute("ANALYZE audit_events")
        conds, params = where_clause(Filters(secret="db-a"), None)
        query = sql.SQL("EXPLAIN (FORMAT JSON) SELECT * FROM audit_events WHERE {}").format(and_all(conds))
        estimate = conn.execute(query, params).fetchone()[0][0]["Plan"]["Plan Rows"]
        assert 250 <= estimate <= 350  # 300 rows have it


def test_upgrade_to_hashed_keys_rebuilds_the_filter_indexes_of_every_partition(bare_db_url, monkeypatch):
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:5])
        assert migrations.migrate(conn) == [1, 2, 3, 4, 5]
        old, prev = chained(2, **_attrs(True)), contract.GENESIS
        for r in old:  # 40 days back: a second partition
            r["time_unix_nano"] -= 40 * 86400 * 10**9
            r["attributes"]["audit.chain.prev"] = prev
            prev = rehash(r)
        recs = old + chained(2, **_attrs(True)) + chained(3, **_attrs(False))
        store_legacy(conn, recs)
        monkeypatch.undo()
        assert migrations.migrate(conn) == [6, 7]
        defs = [r[0] for r in conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename LIKE 'audit_events_p%%' "
            "AND indexdef LIKE '%%hashtextextended%%'").fetchall()]
        assert len(defs) == 8  # four filters on each of the two partitions
        for name, (column, wanted, _other) in HASHED.items():
            assert sum(f"hashtextextended({column}, " in d for d in defs) == 2
            page = search(conn, Filters(**{name: wanted}), None)
            assert len(page.events) == 4
            assert {e[column] for e in page.events} == {wanted}
