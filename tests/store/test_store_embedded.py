"""The embedded server's WAL settings: written once into a new data directory, never over an owner's."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg

from secret_audit.store._embedded import SETTINGS, EmbeddedPostgres


def _shown(uri: str, want: dict[str, str], timeout: float = 10.0) -> dict[str, str]:
    # pg_reload_conf() only signals the server: a backend started a moment later may not see it yet
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(uri, autocommit=True) as conn:
            got = {n: str(conn.execute(f"SHOW {n}").fetchone()[0]) for n in want}  # type: ignore[index]
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_a_new_data_directory_gets_the_ingest_settings_and_stays_durable(tmp_path: Path):
    server = EmbeddedPostgres(tmp_path / "pgdata", delete_on_stop=True)
    uri = server.start()
    try:
        assert _shown(uri, SETTINGS) == SETTINGS
        durable = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
        assert _shown(uri, durable) == durable
    finally:
        server.stop()


def test_an_owners_change_survives_a_restart(tmp_path: Path):
    data = tmp_path / "pgdata"
    first = EmbeddedPostgres(data)
    uri = first.start()
    try:
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET max_wal_size = '2GB'")
    finally:
        first.stop()
    again = EmbeddedPostgres(data, delete_on_stop=True)
    uri = again.start()
    try:
        want = {"max_wal_size": "2GB", "min_wal_size": "1GB"}  # the owner's, and ours where they left it
        assert _shown(uri, want) == want
    finally:
        again.stop()
