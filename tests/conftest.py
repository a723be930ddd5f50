"""Shared fixtures: a real Redis server and an audit pipeline wired to in-memory exporters."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

sys.path.insert(0, str(Path(__file__).parent))

# The default spool is per user: processes the tests start spool under here, never in the home folder.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="sa-state-")

from secret_audit._internal.config import load_settings  # noqa: E402
from secret_audit._internal.pipeline import peek_pipeline, set_pipeline  # noqa: E402
from servers import valkey_server  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz-seconds", type=float, default=30.0,
        help="how long the differential fuzz of the store's C extension runs (tests/store/fuzz.py; 0 skips it)",
    )


@pytest.fixture(scope="session")
def redis_address() -> Iterator[tuple[str, int]]:
    url = os.environ.get("REDIS_URL")
    if url:
        parsed = urlparse(url)
        yield parsed.hostname or "127.0.0.1", parsed.port or 6379
        return
    with valkey_server() as address:
        yield address


@pytest.fixture
def redis_url(redis_address: tuple[str, int]) -> str:
    host, port = redis_address
    return f"redis://{host}:{port}/0"


class Audit:
    """An instrumented process in miniature: spans and audit records land in memory."""

    def __init__(self, env: dict[str, str]) -> None:
        self.settings = load_settings(env)
        self.span_exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider(resource=Resource.create({"service.name": "tests"}))
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.span_exporter))
        self.log_exporter = InMemoryLogRecordExporter()

    def kwargs(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "audit_exporter": self.log_exporter,
            "tracer_provider": self.tracer_provider,
        }

    def flush(self) -> None:
        pipeline = peek_pipeline()
        assert pipeline is not None
        assert pipeline.flush(30)

    def records(self, event_name: str = "secret.access") -> list[Any]:
        self.flush()
        return [
            r.log_record
            for r in self.log_exporter.get_finished_logs()
            if r.log_record.event_name == event_name
        ]

    def attrs(self) -> list[dict[str, Any]]:
        return [dict(r.attributes or {}) for r in self.records()]

    def spans(self) -> list[Any]:
        self.flush()
        return list(self.span_exporter.get_finished_spans())

    def clear(self) -> None:
        self.flush()
        self.log_exporter.clear()
        self.span_exporter.clear()


@pytest.fixture
def audit_env() -> dict[str, str]:
    return {"OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS": "20", "OTEL_PYTHON_SECRET_AUDIT_SPANS": "all"}


@contextlib.contextmanager
def acl_user(admin: Any, prefix: str, keys: str) -> Iterator[tuple[str, str]]:
    """A real ACL user made through ``admin`` (a redis-py client), allowed on ``keys``, removed afterwards."""
    import secrets

    name = prefix + secrets.token_hex(4)
    password = secrets.token_hex(16)
    admin.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=[keys], commands=["+@all"])
    try:
        yield name, password
    finally:
        admin.acl_deluser(name)
        admin.close()


def retire_pipeline() -> None:
    """Drop the process pipeline, flushing and stopping it, so that the next test starts afresh."""
    old = set_pipeline(None)
    if old is not None:
        old.shutdown(5)


@contextlib.contextmanager
def instrumented(env: dict[str, str] | Audit, *instrumentors: Any) -> Iterator[Audit]:
    """Instrument with in-memory exporters; uninstrument and retire the pipeline afterwards.

    The first instrumentor gets the exporters; the others are instrumented after it, without
    arguments, and so join its pipeline, as under the launcher.
    """
    helper = env if isinstance(env, Audit) else Audit(env)
    first, *joining = instrumentors
    first.instrument(**helper.kwargs())
    for other in joining:
        other.instrument()
    try:
        yield helper
    finally:
        for other in reversed(joining):
            other.uninstrument()
        first.uninstrument()
        retire_pipeline()


@pytest.fixture
def audit(audit_env: dict[str, str]) -> Iterator[Audit]:
    from secret_audit.redis import RedisSecretAuditInstrumentor

    with instrumented(audit_env, RedisSecretAuditInstrumentor()) as helper:
        yield helper


@pytest.fixture
def r(audit: Audit, redis_url: str) -> Iterator[Any]:
    """A sync redis-py client on the test server, made after instrumentation so it is audited."""
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def key() -> str:
    """A fresh secret-looking key per test, so tests never see each other's data."""
    return f"secret:{uuid.uuid4().hex[:12]}"


# GCP Secret Manager: the local fake, real clients on every transport and an instrumented audit.
from gcp_fixtures import gcp_audit, gcp_caller, gcp_server  # noqa: E402, F401
