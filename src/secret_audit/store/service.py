"""The store's runtime: database (embedded or given), migrations, connection pool and shared state."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from secret_audit.store._bounds import TimeBounds
from secret_audit.store._embedded import EmbeddedPostgres
from secret_audit.store._hub import Hub
from secret_audit.store._ingest import Ingestor
from secret_audit.store._live import Announcement, LiveBus
from secret_audit.store._refusals import Bucket, Refusals
from secret_audit.store._rows import event_json
from secret_audit.store._selfaudit import SelfAudit
from secret_audit.store._stats import Counters
from secret_audit.store.config import StoreConfig
from secret_audit.store.migrations import migrate

__all__ = ["Store", "resolve_database"]

_log = logging.getLogger("secret_audit.store")


def resolve_database(config: StoreConfig) -> tuple[str, EmbeddedPostgres | None]:
    """The URL to use: DATABASE_URL when set, else a started embedded server on the data directory."""
    if config.database_url:
        return config.database_url, None
    embedded = EmbeddedPostgres(config.data_dir)
    return embedded.start(), embedded


class Store:
    """Owns the pool and the per-process state that the HTTP app and its tests share."""

    def __init__(self, config: StoreConfig, database_url: str | None = None) -> None:
        self.config = config
        self._url = database_url
        self._embedded: EmbeddedPostgres | None = None
        self.pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self.ingestor = Ingestor(config.non_audit, config.native,
                                 TimeBounds(config.max_clock_skew_s, config.max_record_age_days))
        self.self_audit = SelfAudit(self.ingestor)
        self.counters = Counters()
        self.hub = Hub()
        self.live: LiveBus | None = None
        self.role: str | None = None
        self.refusals = Refusals(self._write_refusals)

    @property
    def embedded(self) -> Path | None:
        """The embedded server's data directory, when this store started one."""
        return None if self._embedded is None else self._embedded.data_dir

    @property
    def url(self) -> str:
        """The database URL in use (available once opened)."""
        assert self._url is not None
        return self._url

    def open(self) -> None:
        """Start the database if embedded, apply migrations, and open the pool."""
        if self._url is None:
            self._url, self._embedded = resolve_database(self.config)
            if self._embedded is not None:
                _log.info("secret-audit store: embedded PostgreSQL, data directory %s",
                          self._embedded.data_dir)
        with psycopg.connect(self._url, autocommit=True) as conn:
            migrate(conn, self.config.app_role)
            self.role = _usable_role(conn, self.config.app_role)
        self.pool = ConnectionPool(
            self._url,
            min_size=1,
            max_size=self.config.pool_size,
            configure=self._configure,
            kwargs={"autocommit": True},
            open=True,
            name="secret-audit-store",
        )
        self.pool.wait(30)
        self.live = LiveBus(self._url, self.hub, self._announced)
        self.ingestor.live = self.live
        self.live.start()

    def _announced(self, note: Announcement) -> list[dict[str, Any]]:
        """Another store process's committed rows, read back for this process's live streams."""
        with self.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT * FROM audit_events WHERE time BETWEEN %s AND %s AND id = ANY(%s) ORDER BY id",
                (note.first, note.last, note.ids),
            )
            return [event_json(r) for r in cur.fetchall()]

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        # The service itself runs without UPDATE or DELETE rights on the audit table.
        if self.role:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(self.role)))
        conn.commit()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """Borrow a pooled connection running as the app role."""
        assert self.pool is not None, "store is not open"
        with self.pool.connection() as conn:
            yield conn

    def _write_refusals(self, buckets: list[Bucket], summaries: bool) -> None:
        """Unauthenticated calls into the store's own trail: each bucket's first call, or its summary."""
        with self.connection() as conn:
            for b in buckets:
                minute = dt.datetime.fromtimestamp(b.minute, dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
                if summaries:
                    reasons = ", ".join(f"{n} {r}" for r, n in sorted(b.reasons.items()))
                    body = (f"Audit store refused {b.count} unauthenticated calls from {b.address} in the "
                            f"minute from {minute} ({reasons}); the first was written at once")
                else:
                    body = (f"Audit store refused an unauthenticated call from {b.address}: "
                            f"{next(iter(b.reasons))}, {b.route}")
                result = self.self_audit.record(
                    conn, event_name="audit.query", action=b.route, outcome="denied", principal="anonymous",
                    client_address=b.address if b.address[0] != "(" else None, body=body,
                    extra={"audit.refused.count": b.count, "audit.refused.minute": minute,
                           "audit.refused.reasons": dict(b.reasons)},
                )
                self.hub.publish(result.events)

    def close(self) -> None:
        """Stop the live bus, close the pool and stop an embedded server we started."""
        if self.pool is not None:
            self.refusals.close()  # the summaries still pending, while the database is there
        if self.live is not None:
            self.live.stop()
            self.live = self.ingestor.live = None
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None


def _usable_role(conn: psycopg.Connection[Any], role: str) -> str | None:
    if not role:
        return None
    row = conn.execute(
        "SELECT pg_has_role(current_user, oid, 'MEMBER') FROM pg_roles WHERE rolname = %s", (role,)
    ).fetchone()
    if row is None or not row[0]:
        _log.warning("secret-audit store: role %s unavailable; relying on the append-only triggers", role)
        return None
    return role
