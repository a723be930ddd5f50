"""The attacks of issue 18 on a stored stream, done as an attacker would: the store's own role, or a superuser.

Each one leaves the trail consistent by the unkeyed rules: every row's hash matches its content and every
link matches its predecessor, and the stream's head (its latest audit_stream_heads row) is set to agree.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from secret_audit.contract import chain_hash
from secret_audit.store._rows import COLUMNS, canonical_of_row


def rows(conn: psycopg.Connection[Any], stream: str) -> list[dict[str, Any]]:
    """A stream's rows in sequence order."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM audit_events WHERE stream_id = %s ORDER BY sequence", (stream,)).fetchall()


def insert(conn: psycopg.Connection[Any], row: dict[str, Any]) -> None:
    cols = ", ".join(COLUMNS)
    marks = ", ".join(["%s"] * len(COLUMNS))
    values = [psycopg.types.json.Jsonb(row[c]) if c in ("attributes", "resource") else row[c] for c in COLUMNS]
    conn.execute(f"INSERT INTO audit_events ({cols}) VALUES ({marks})", values)


def set_head(conn: psycopg.Connection[Any], stream: str, last: dict[str, Any], count: int) -> bool:
    """Append a head naming the forged last record, as ingest appends one (schema 7: heads are only ever
    inserted, and a stream's head is its latest row); False when the role may not (the store refused it)."""
    try:
        with conn.transaction():
            conn.execute("INSERT INTO audit_stream_heads (stream_id, last_sequence, last_hash, record_count, findings) "
                         "SELECT %s, %s, %s, %s, coalesce((SELECT findings FROM audit_stream_heads "
                         "WHERE stream_id = %s ORDER BY id DESC LIMIT 1), 0)",
                         (stream, last["sequence"], last["chain_hash"], count, stream))
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


def append_forged(app: psycopg.Connection[Any], stream: str, secret: str = "forged-secret") -> dict[str, Any]:
    """As the app role: a correctly chained record after the stream's last one, and the head moved to it."""
    old = rows(app, stream)
    last = old[-1]
    forged = dict(last)
    seq = int(last["sequence"]) + 1
    forged.update(sequence=seq, event_id=f"{stream}:{seq}", chain_prev=last["chain_hash"], event_name="secret.access",
                  secret_name=secret, secret_source="redis", operation="read", action="GET", outcome="success",
                  body=f"Secret accessed: {secret} from redis (1.00ms)", severity_number=9, severity_text="INFO",
                  attributes={}, duration_ms=1.0, access_path="internal")
    forged["chain_hash"] = chain_hash(canonical_of_row(forged))
    insert(app, forged)
    set_head(app, stream, forged, len(old) + 1)
    return forged


def cut_tail(forced: psycopg.Connection[Any], stream: str, count: int) -> None:
    """As superuser with triggers off: delete the stream's last ``count`` records and set the head back."""
    old = rows(forced, stream)
    keep = old[:-count]
    forced.execute("DELETE FROM audit_events WHERE stream_id = %s AND sequence > %s", (stream, keep[-1]["sequence"]))
    set_head(forced, stream, keep[-1], len(keep))


def alter_and_rechain(forced: psycopg.Connection[Any], stream: str, sequence: int, **changes: Any) -> None:
    """As superuser with triggers off: change one record, then re-chain every record after it, and the head."""
    old = rows(forced, stream)
    prev = None
    for row in old:
        if row["sequence"] < sequence:
            prev = row["chain_hash"]
            continue
        if row["sequence"] == sequence:
            row.update(changes)
        row["chain_prev"] = prev if prev is not None else row["chain_prev"]
        row["chain_hash"] = chain_hash(canonical_of_row(row))
        forced.execute("UPDATE audit_events SET chain_prev = %s, chain_hash = %s, " +
                       ", ".join(f"{k} = %s" for k in changes) + " WHERE stream_id = %s AND sequence = %s",
                       (row["chain_prev"], row["chain_hash"], *(row[k] for k in changes), stream, row["sequence"]))
        prev = row["chain_hash"]
    set_head(forced, stream, old[-1], len(old))


def delete_stream(forced: psycopg.Connection[Any], stream: str) -> None:
    """As superuser with triggers off: the stream's rows, findings and head, gone."""
    forced.execute("DELETE FROM audit_events WHERE stream_id = %s", (stream,))
    forced.execute("DELETE FROM audit_findings WHERE stream_id = %s", (stream,))
    forced.execute("DELETE FROM audit_stream_heads WHERE stream_id = %s", (stream,))
    forced.execute("DELETE FROM audit_streams WHERE stream_id = %s", (stream,))
