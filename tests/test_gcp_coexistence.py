"""The GCP audit alongside opentelemetry-instrumentation-grpc and Google's own client tracing."""

from __future__ import annotations

import secrets
from typing import Any

import google.api_core.exceptions as gexc
import grpc
import grpc.aio
import pytest
from google.cloud.secretmanager_v1.services.secret_manager_service import async_client, client
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcInstrumentorClient

from conftest import Audit, retire_pipeline
from secret_audit.gcp import GcpSecretManagerSecretAuditInstrumentor

SERVICE = "google.cloud.secretmanager.v1.SecretManagerService"


def _originals() -> dict[str, Any]:
    return {
        "insecure_channel": grpc.insecure_channel,
        "aio.insecure_channel": grpc.aio.insecure_channel,
        "sync": client.SecretManagerServiceClient.__dict__["access_secret_version"],
        "async": async_client.SecretManagerServiceAsyncClient.__dict__["access_secret_version"],
    }


@pytest.mark.parametrize("first", ["ours", "grpc"])
@pytest.mark.parametrize("first_off", ["ours", "grpc"])
def test_both_instrumentations_in_either_order(gcp_caller, audit_env, monkeypatch, first, first_off):
    helper = Audit(audit_env)
    # the gRPC instrumentation takes the global provider when its channel is built
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", helper.tracer_provider)
    before = _originals()
    ours = GcpSecretManagerSecretAuditInstrumentor()
    sync_grpc, aio_grpc = GrpcInstrumentorClient(), GrpcAioInstrumentorClient()
    on = {
        "ours": lambda: ours.instrument(**helper.kwargs()),
        "grpc": lambda: (sync_grpc.instrument(), aio_grpc.instrument()),
    }
    off = {
        "ours": ours.uninstrument,
        "grpc": lambda: (sync_grpc.uninstrument(), aio_grpc.uninstrument()),
    }
    second, second_off = ("grpc" if first == "ours" else "ours"), ("grpc" if first_off == "ours" else "ours")
    on[first]()
    on[second]()
    try:
        tracer = helper.tracer_provider.get_tracer("app")
        name = f"projects/p-{secrets.token_hex(3)}/secrets/s/versions/1"
        parents = []
        for transport in ("grpc", "grpc_asyncio"):
            call = gcp_caller(transport)
            with tracer.start_as_current_span(f"handler-{transport}") as parent:
                with pytest.raises(gexc.NotFound):
                    call("access_secret_version", name=name)
            parents.append(parent.get_span_context())
        records = helper.attrs()
        spans = helper.spans()
    finally:
        off[first_off]()
        off[second_off]()
        retire_pipeline()
    assert [(r["audit.action"], r["audit.outcome"]) for r in records] == [
        ("AccessSecretVersion", "not_found"),
    ] * 2
    for ctx in parents:
        children = [s for s in spans if s.parent is not None and s.parent.span_id == ctx.span_id]
        audit_spans = [s for s in children if s.name == "secret.read"]
        rpc_spans = [s for s in children if (s.attributes or {}).get("rpc.service") == SERVICE]
        assert len(audit_spans) == 1, [s.name for s in children]
        assert len(rpc_spans) == 1, [s.name for s in children]
        assert rpc_spans[0].attributes["rpc.method"] == "AccessSecretVersion"
    assert _originals() == before


def test_google_builtin_client_tracing_switched_on(gcp_audit, gcp_caller, monkeypatch):
    monkeypatch.setenv("GOOGLE_SDK_EXPERIMENTAL_PYTHON_TRACING_ENABLED", "true")
    canary = "canary-" + secrets.token_hex(12)
    project = f"p-{secrets.token_hex(3)}"
    sn = f"projects/{project}/secrets/s"
    for transport in ("grpc", "grpc_asyncio", "rest"):
        call = gcp_caller(transport)
        call("create_secret", parent=f"projects/{project}", secret_id=f"s{transport}", secret={})
        call("add_secret_version", parent=f"{sn}{transport}", payload={"data": canary.encode()})
        assert call("access_secret_version", name=f"{sn}{transport}/versions/latest").payload.data
    rows = [(a["audit.action"], a["secret.version"]) for a in gcp_audit.attrs() if "secret.version" in a]
    assert rows == [("AddSecretVersion", "1"), ("AccessSecretVersion", "1")] * 3
    text = repr([dict(r.attributes) for r in gcp_audit.records()])
    text += repr([dict(s.attributes or {}) for s in gcp_audit.spans()])
    assert canary not in text
