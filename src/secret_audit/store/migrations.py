"""Versioned schema migrations: apply the DDL scripts (``_ddl``) a database lacks, grant the app role."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
from psycopg import sql

from secret_audit.store._ddl import HASHED_FILTERS, ID_BLOCK, KEY_HASH, SCRIPTS

__all__ = [
    "HASHED_FILTERS", "ID_BLOCK", "KEY_HASH", "MIGRATIONS", "SCHEMA_VERSION", "ensure_partitions", "migrate",
    "partition_bounds", "schema_version",
]

# Role privileges: the service runs as the app role, which may insert and read but never change a row.
# Every table it may read is listed with what it may do there; anything else is revoked, also from an
# app role that older versions granted more (schema 1..6 let it UPDATE audit_streams). A table of a
# later schema is skipped while it does not exist yet (upgrade tests migrate step by step).
_ROLES = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {role_lit}) THEN
        CREATE ROLE {role} NOLOGIN;
    END IF;
END $$;
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT * FROM (VALUES
        ('audit_events', 'SELECT, INSERT'), ('audit_findings', 'SELECT, INSERT'),
        ('audit_streams', 'SELECT, INSERT'), ('audit_stream_heads', 'SELECT, INSERT'),
        ('audit_stream_archives', 'SELECT'), ('audit_tokens', 'SELECT'), ('audit_retention_log', 'SELECT'),
        ('audit_gaps', 'SELECT'), ('audit_stream_state', 'SELECT')) AS v(name, privileges)
    LOOP
        IF to_regclass(t.name) IS NOT NULL THEN
            EXECUTE format('REVOKE ALL ON %I FROM PUBLIC, %I', t.name, {role_lit});
            EXECUTE format('GRANT %s ON %I TO %I', t.privileges, t.name, {role_lit});
        END IF;
    END LOOP;
    FOR t IN SELECT * FROM (VALUES ('audit_events_id_seq'), ('audit_findings_id_seq'),
                                   ('audit_stream_heads_id_seq')) AS v(name)
    LOOP
        IF to_regclass(t.name) IS NOT NULL THEN
            EXECUTE format('REVOKE ALL ON SEQUENCE %I FROM PUBLIC, %I', t.name, {role_lit});
            EXECUTE format('GRANT USAGE ON SEQUENCE %I TO %I', t.name, {role_lit});
        END IF;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION audit_ensure_partition(timestamptz, timestamptz, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_ensure_partition(timestamptz, timestamptz, text) TO {role};
"""

MIGRATIONS: tuple[tuple[int, str], ...] = SCRIPTS
SCHEMA_VERSION = MIGRATIONS[-1][0]


def migrate(conn: psycopg.Connection[Any], app_role: str = "secret_audit_app") -> list[int]:
    """Apply every pending migration in one transaction each; returns the versions applied."""
    applied: list[int] = []
    with conn.transaction():
        conn.execute(
            "CREATE TABLE IF NOT EXISTS audit_schema_migrations "
            "(version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute("SELECT pg_advisory_xact_lock(7461626)")
        row = conn.execute("SELECT coalesce(max(version), 0) FROM audit_schema_migrations").fetchone()
        current = int(row[0]) if row else 0
        for version, script in MIGRATIONS:
            if version <= current:
                continue
            conn.execute(script.encode())
            conn.execute("INSERT INTO audit_schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
        if app_role:
            _grant(conn, app_role)
    return applied


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The store's schema version without changing anything: 0 where no store was ever created."""
    row = conn.execute("SELECT to_regclass('audit_schema_migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM audit_schema_migrations").fetchone()
    return int(row[0]) if row else 0


def _grant(conn: psycopg.Connection[Any], role: str) -> None:
    can = conn.execute(
        "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if not (can and can[0]) and not exists:
        return
    script = sql.SQL(_ROLES).format(role=sql.Identifier(role), role_lit=sql.Literal(role))
    conn.execute(script)
    member = conn.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", (role,)).fetchone()
    if not (member and member[0]):
        conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(role)))


def partition_bounds(moment: dt.datetime) -> tuple[dt.datetime, dt.datetime, str]:
    """The monthly partition holding a moment: its bounds and its name."""
    start = dt.datetime(moment.year, moment.month, 1, tzinfo=dt.timezone.utc)
    end = dt.datetime(start.year + (start.month == 12), start.month % 12 + 1, 1, tzinfo=dt.timezone.utc)
    return start, end, f"audit_events_p{start.year:04d}{start.month:02d}"


def ensure_partitions(conn: psycopg.Connection[Any], months: set[tuple[int, int]]) -> None:
    """Create the monthly partitions that a batch needs, through the owner's definer function."""
    for year, month in sorted(months):
        start, end, name = partition_bounds(dt.datetime(year, month, 1, tzinfo=dt.timezone.utc))
        conn.execute("SELECT audit_ensure_partition(%s, %s, %s)", (start, end, name))
