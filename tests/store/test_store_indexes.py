"""Each indexed filter of the query API is served by its index, as the planner sees the API's own SQL."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from secret_audit.store._ingest import Ingestor
from secret_audit.store._otlp import decode_protobuf
from secret_audit.store._query import Filters, and_all, where_clause

from .records import chained, to_protobuf

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
