"""Seed 000: one audit trail across the Redis cache and GCP Secret Manager, in-process and launched."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import test_launcher_e2e as launcher
from conftest import Audit, instrumented
from gcp_fixtures import make_client
from otlp_receiver import otlp_receiver

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import get_secret as example  # noqa: E402

FIRST_CALL = [
    ("redis", "GET", "read", "not_found", None),
    ("gcp_secret_manager", "AccessSecretVersion", "read", "success", "found"),
    ("redis", "SET", "write", "success", "created"),
]
SECOND_CALL = [("redis", "GET", "read", "success", "found")]


def summary(attrs: dict[str, Any]) -> tuple[Any, ...]:
    return (
        attrs["secret.source"],
        attrs["audit.action"],
        attrs["audit.operation"],
        attrs["audit.outcome"],
        attrs.get("audit.result"),
    )


@pytest.fixture
def trail(audit_env: dict[str, str]) -> Iterator[Audit]:
    """Both instrumentors on one pipeline: the second one joins the stream the first one made."""
    from secret_audit.gcp import GcpSecretManagerSecretAuditInstrumentor
    from secret_audit.redis import RedisSecretAuditInstrumentor

    with instrumented(audit_env, RedisSecretAuditInstrumentor(), GcpSecretManagerSecretAuditInstrumentor()) as helper:
        yield helper


def seed(endpoints: Any, project: str, name: str, value: bytes) -> None:
    client = make_client(endpoints, "grpc")
    client.create_secret(parent=f"projects/{project}", secret_id=name, secret={"replication": {}})
    client.add_secret_version(parent=f"projects/{project}/secrets/{name}", payload={"data": value})
    client.transport.close()


def test_get_secret_gives_one_trail_across_cache_and_vault(trail, gcp_server, redis_url, monkeypatch):
    monkeypatch.setattr(example, "_tracer", trail.tracer_provider.get_tracer("examples.get_secret"))
    project, name = f"p-{secrets.token_hex(4)}", f"db-password-{secrets.token_hex(3)}"
    value = b"canary-" + secrets.token_hex(12).encode()
    seed(gcp_server, project, name, value)
    cache = redis.Redis.from_url(redis_url)
    vault = make_client(gcp_server, "grpc")
    fetcher = example.SecretFetcher(cache, vault, project, ttl=60)
    trail.clear()
    served = len(gcp_server.fake.calls)

    assert fetcher.get_secret(name) == value
    records = trail.records()
    assert [summary(dict(r.attributes)) for r in records] == FIRST_CALL
    [root] = [s for s in trail.spans() if s.name == "get_secret"]
    assert {r.trace_id for r in records} == {root.context.trace_id}
    redis_get, gcp, redis_set = (dict(r.attributes) for r in records)
    assert redis_get["secret.name"] == redis_set["secret.name"] == f"secret:{name}"
    assert gcp["secret.name"] == name
    assert gcp["secret.resource"] == f"projects/{project}/secrets/{name}/versions/1"
    assert gcp["secret.version"] == "1"
    seqs = [a["audit.sequence"] for a in (redis_get, gcp, redis_set)]
    assert seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2]  # one stream, one chain across both sources
    assert gcp["audit.chain.prev"] == redis_get["audit.chain.hash"]
    assert gcp_server.fake.calls[served:] == ["AccessSecretVersion"]
    assert 0 < cache.ttl(f"secret:{name}") <= 60

    trail.clear()
    assert fetcher.get_secret(name) == value
    assert [summary(a) for a in trail.attrs()] == SECOND_CALL
    assert gcp_server.fake.calls[served:] == ["AccessSecretVersion"]  # no second GCP call
    vault.transport.close()
    cache.close()


def launch(rx_url: str, endpoints: Any, redis_url: str, project: str, name: str, **extra: str) -> Any:
    return launcher.launch(
        rx_url, redis_url, str(ROOT / "examples" / "get_secret.py"), name,
        timeout=300,
        OTEL_SERVICE_NAME="seed-000",
        GCP_PROJECT=project,
        SECRET_MANAGER_GRPC_TARGET=endpoints.grpc_target,
        **extra,
    )


def test_disabling_the_gcp_entry_point_leaves_redis_audited(gcp_server, redis_url):
    project, name = f"p-{secrets.token_hex(4)}", f"api-token-{secrets.token_hex(3)}"
    seed(gcp_server, project, name, b"v")
    with otlp_receiver() as rx:
        proc = launch(
            rx.url, gcp_server, redis_url, project, name,
            OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="secret_audit_gcp_secret_manager",
        )
        assert proc.returncode == 0, proc.stderr
        records = rx.audit_records()
    assert [summary(r["attributes"]) for r in records] == [FIRST_CALL[0], FIRST_CALL[2], *SECOND_CALL]


def test_seed_flow_under_opentelemetry_instrument_end_to_end(gcp_server, redis_url):
    project, name = f"p-{secrets.token_hex(4)}", f"api-token-{secrets.token_hex(3)}"
    value = b"canary-" + secrets.token_hex(16).encode()
    seed(gcp_server, project, name, value)
    with otlp_receiver() as rx:
        proc = launch(rx.url, gcp_server, redis_url, project, name)
        assert proc.returncode == 0, proc.stderr
        records = rx.audit_records()
        spans = {s["span_id"]: s for s in rx.spans}
        raw = b"".join(rx.raw)
    size = len(value)
    assert proc.stdout.splitlines() == [f"{name} (cold): {size} bytes", f"{name} (warm): {size} bytes"]
    assert [summary(r["attributes"]) for r in records] == FIRST_CALL + SECOND_CALL
    first_trace = {r["trace_id"] for r in records[:3]}
    assert len(first_trace) == 1
    assert records[3]["trace_id"] not in first_trace
    for rec in records:
        span = spans[rec["span_id"]]
        assert span["name"] == f"secret.{rec['attributes']['audit.operation']}"
        assert span["trace_id"] == rec["trace_id"]
        assert rec["resource"]["service.name"] == "seed-000"
    # the launcher also loaded opentelemetry-instrumentation-grpc: its client span sits in the trail's trace
    rpc = [s for s in rx.spans if s["attributes"].get("rpc.method") == "AccessSecretVersion"]
    assert [s["trace_id"] for s in rpc] == list(first_trace)
    assert [r["attributes"]["audit.sequence"] for r in records] == [1, 2, 3, 4]
    assert value not in raw
