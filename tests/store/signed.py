"""A signed trail made for real: the Redis instrumentation with a signing key, exporting to a running store.

The ASGI tee keeps every request body the store received, so that a test can write the collector's
file copy of the same records (``records.write_copy``).
"""

from __future__ import annotations

import gzip
import urllib.parse
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from conftest import retire_pipeline
from secret_audit._internal.config import load_settings
from secret_audit._internal.pipeline import peek_pipeline
from secret_audit.cli import main
from secret_audit.signing import generate_key

from .conftest import serve


class Tee:
    """ASGI middleware that keeps each /v1/logs request body (decompressed) the store was sent."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/logs":
            await self.app(scope, receive, send)
            return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if "protobuf" in headers.get("content-type", ""):
            self.bodies.append(gzip.decompress(body) if headers.get("content-encoding") == "gzip" else body)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def produce(url: str, token: str, redis_url: str, key: Path | None, *, accesses: int = 10,
            every: int = 4, close: bool = True, **env: str) -> str:
    """Audit ``accesses`` real GETs with the signing key; ``close`` shuts down cleanly (final checkpoint).

    Returns the stream id. Without ``close`` the pipeline stays open, as a live producer's would.
    """
    from secret_audit.redis import RedisSecretAuditInstrumentor

    settings = load_settings({
        "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT": f"{url}/v1/logs",
        "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_HEADERS": "authorization=" + urllib.parse.quote(f"Bearer {token}"),
        "OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS": "20",
        "OTEL_PYTHON_SECRET_AUDIT_CHECKPOINT_RECORDS": str(every),
        "OTEL_PYTHON_SECRET_AUDIT_CHECKPOINT_INTERVAL_MS": "600000",
        **({"OTEL_PYTHON_SECRET_AUDIT_SIGNING_KEY_FILE": str(key)} if key is not None else {}),
        **env,
    })
    inst = RedisSecretAuditInstrumentor()
    inst.instrument(settings=settings)
    client = redis.Redis.from_url(redis_url)
    try:
        for i in range(accesses):
            client.get(f"secret:signed-{i % 3}")
            pipeline = peek_pipeline()
            assert pipeline is not None
            if i % 2:
                assert pipeline.flush(10)  # several drains: checkpoints land between records
        stream = pipeline.stream_id
        assert pipeline.flush(10)
    finally:
        client.close()
        inst.uninstrument()
        if close:
            retire_pipeline()
    return stream


# Fixtures of the signed-trail tests (imported by name into their modules).


@pytest.fixture
def signing_key(tmp_path: Path) -> Path:
    """A fresh signing key: audit.key and audit.key.pub."""
    path = tmp_path / "audit.key"
    generate_key(path)
    return path


@pytest.fixture
def teed(store: Any) -> Any:
    """The store served for real, with a Tee keeping every request body: (url, tee)."""
    tees: list[Tee] = []

    def wrap(app: Any) -> Tee:
        tees.append(Tee(app))
        return tees[0]

    with serve(store, wrap=wrap) as url:
        yield url, tees[0]


@pytest.fixture
def forced(owner: Any) -> Any:
    """A superuser session with triggers off."""
    owner.execute("SET session_replication_role = replica")
    yield owner
    owner.execute("SET session_replication_role = origin")


@pytest.fixture
def run(db_url: str, monkeypatch: Any, capsys: Any) -> Any:
    """``secret-audit verify ARGS`` against the test database: (exit code, JSON report or the text)."""
    monkeypatch.setenv("DATABASE_URL", db_url)

    def verify(*args: str, json_out: bool = True) -> tuple[int, Any]:
        capsys.readouterr()
        code = main(["verify", *args, *(["--json"] if json_out else [])])
        captured = capsys.readouterr()
        return code, orjson.loads(captured.out) if json_out else captured.out + captured.err

    return verify


def kinds(doc: dict[str, Any], section: str = "signed") -> dict[str, list[dict[str, Any]]]:
    """A report section's breaks and warnings by kind."""
    out: dict[str, list[dict[str, Any]]] = {}
    for b in doc[section]["details"] + doc[section]["warning_details"]:
        out.setdefault(b["kind"], []).append(b)
    return out
