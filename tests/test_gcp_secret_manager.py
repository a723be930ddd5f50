"""Exact spans and records for the real google-cloud-secret-manager client against the local fake."""

from __future__ import annotations

import secrets
import zlib
from typing import Any

import google.api_core.exceptions as gexc
import pytest
from google.cloud import secretmanager_v1
from opentelemetry import trace

from gcp_fixtures import TRANSPORTS

FIELDS = (
    "audit.action",
    "audit.operation",
    "audit.outcome",
    "audit.result",
    "secret.name",
    "secret.resource",
    "secret.version",
)


def rows(audit: Any) -> list[tuple[Any, ...]]:
    return [tuple(a.get(f) for f in FIELDS) for a in audit.attrs()]


def exported_text(audit: Any) -> str:
    """Everything the audit exported, as one string, for leak checks."""
    parts = []
    for rec in audit.records():
        parts += [str(rec.body), repr(dict(rec.attributes or {}))]
    for span in audit.spans():
        parts += [span.name, repr(dict(span.attributes or {})), repr(span.status.description)]
        parts += [repr(e.attributes) for e in span.events]
    return "\n".join(parts)


def uid(prefix: str = "p") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def run_every_rpc(call: Any, project: str, secret: str, payload: bytes) -> list[tuple[Any, ...]]:
    """Call every audited RPC once; return the rows the audit must show, in order."""
    sn = f"projects/{project}/secrets/{secret}"
    v = sn + "/versions/"
    call("create_secret", parent=f"projects/{project}", secret_id=secret, secret={"replication": {}})
    call("add_secret_version", parent=sn, payload={"data": payload, "data_crc32c": zlib.crc32(payload)})
    assert call("access_secret_version", name=v + "latest").payload.data == payload
    call("get_secret", name=sn)
    call("get_secret_version", name=v + "1")
    call("list_secrets", parent=f"projects/{project}")
    call("list_secret_versions", parent=sn)
    call("update_secret", secret={"name": sn, "labels": {"team": "a"}}, update_mask={"paths": ["labels"]})
    call("disable_secret_version", name=v + "1")
    call("enable_secret_version", name=v + "1")
    call("rotate_secret", parent=sn)
    call("enable_managed_rotation", parent=sn)
    call("set_iam_policy", request={"resource": sn, "policy": {"etag": b"e1"}})
    call("get_iam_policy", request={"resource": sn})
    call("test_iam_permissions", request={"resource": sn, "permissions": ["secretmanager.versions.access"]})
    call("destroy_secret_version", name=v + "1")
    call("delete_secret", name=sn)
    return [
        ("CreateSecret", "write", "success", "created", secret, sn, None),
        ("AddSecretVersion", "write", "success", "created", secret, v + "1", "1"),
        ("AccessSecretVersion", "read", "success", "found", secret, v + "1", "1"),
        ("GetSecret", "metadata", "success", "found", secret, sn, None),
        ("GetSecretVersion", "metadata", "success", "found", secret, v + "1", "1"),
        ("ListSecrets", "metadata", "success", None, "*", f"projects/{project}", None),
        ("ListSecretVersions", "metadata", "success", None, secret, sn, None),
        ("UpdateSecret", "write", "success", "updated", secret, sn, None),
        ("DisableSecretVersion", "write", "success", "updated", secret, v + "1", "1"),
        ("EnableSecretVersion", "write", "success", "updated", secret, v + "1", "1"),
        ("RotateSecret", "write", "success", "created", secret, v + "2", "2"),
        ("EnableManagedRotation", "write", "success", "created", secret, v + "3", "3"),
        ("SetIamPolicy", "admin", "success", "updated", secret, sn, None),
        ("GetIamPolicy", "admin", "success", None, secret, sn, None),
        ("TestIamPermissions", "admin", "success", None, secret, sn, None),
        ("DestroySecretVersion", "delete", "success", "deleted", secret, v + "1", "1"),
        ("DeleteSecret", "delete", "success", "deleted", secret, sn, None),
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_rpc_is_classified_on_every_transport(gcp_audit, gcp_caller, transport):
    call = gcp_caller(transport)
    canary = b"canary-" + secrets.token_hex(12).encode()
    expected = run_every_rpc(call, uid(), "db-password", canary)
    assert rows(gcp_audit) == expected
    for attrs in gcp_audit.attrs():
        assert attrs["secret.source"] == "gcp_secret_manager"
        assert attrs["audit.access_path"] == "internal"
        assert "audit.principal" not in attrs
        assert "error.type" not in attrs
    spans = gcp_audit.spans()
    assert [s.name for s in spans] == [f"secret.{r[1]}" for r in expected]
    assert canary.decode() not in exported_text(gcp_audit)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exact_record_span_and_body_for_one_access(gcp_audit, gcp_caller, gcp_server, transport):
    call = gcp_caller(transport)
    project = uid()
    sn = f"projects/{project}/secrets/api-key"
    call("create_secret", parent=f"projects/{project}", secret_id="api-key", secret={})
    call("add_secret_version", parent=sn, payload={"data": b"x"})
    gcp_audit.clear()
    tracer = gcp_audit.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("handler") as parent:
        call("access_secret_version", name=sn + "/versions/latest")
    [record] = gcp_audit.records()
    attrs = dict(record.attributes)
    seq = attrs.pop("audit.sequence")
    stream = attrs.pop("audit.stream.id")
    assert attrs.pop("audit.event.id") == f"{stream}:{seq}"
    assert len(attrs.pop("audit.chain.prev")) == 64
    assert len(attrs.pop("audit.chain.hash")) == 64
    duration = attrs.pop("audit.duration_ms")
    assert isinstance(duration, float)
    assert duration > 0
    assert attrs == {
        "secret.name": "api-key",
        "secret.source": "gcp_secret_manager",
        "secret.resource": sn + "/versions/1",
        "secret.version": "1",
        "audit.operation": "read",
        "audit.action": "AccessSecretVersion",
        "audit.outcome": "success",
        "audit.result": "found",
        "audit.access_path": "internal",
    }
    assert record.event_name == "secret.access"
    assert record.severity_text == "INFO"
    assert record.body.startswith("Secret accessed: api-key from gcp_secret_manager (")
    spans = {s.name: s for s in gcp_audit.spans()}
    span = spans["secret.read"]
    assert span.parent.span_id == parent.get_span_context().span_id
    assert record.trace_id == span.context.trace_id == parent.get_span_context().trace_id
    assert record.span_id == span.context.span_id
    assert span.attributes["audit.chain.hash"] == record.attributes["audit.chain.hash"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_request_message_dict_positional_and_flattened_forms(gcp_audit, gcp_caller, transport):
    call = gcp_caller(transport)
    project = uid()
    sn = f"projects/{project}/secrets/token"
    call(
        "create_secret",
        request=secretmanager_v1.CreateSecretRequest(parent=f"projects/{project}", secret_id="token"),
    )
    call("add_secret_version", {"parent": sn, "payload": {"data": b"v"}})
    req = secretmanager_v1.AccessSecretVersionRequest(name=sn + "/versions/1")
    call("access_secret_version", request=req)
    call("access_secret_version", request={"name": sn + "/versions/latest"})
    call("access_secret_version", secretmanager_v1.AccessSecretVersionRequest(name=sn + "/versions/1"))
    call("access_secret_version", name=sn + "/versions/1")
    call("update_secret", request=secretmanager_v1.UpdateSecretRequest(secret={"name": sn}))
    call("set_iam_policy", {"resource": sn, "policy": {}})
    from google.iam.v1 import iam_policy_pb2

    call("get_iam_policy", request=iam_policy_pb2.GetIamPolicyRequest(resource=sn))
    assert [(r[0], r[4], r[5], r[6]) for r in rows(gcp_audit)] == [
        ("CreateSecret", "token", sn, None),
        ("AddSecretVersion", "token", sn + "/versions/1", "1"),
        *[("AccessSecretVersion", "token", sn + "/versions/1", "1")] * 4,
        ("UpdateSecret", "token", sn, None),
        ("SetIamPolicy", "token", sn, None),
        ("GetIamPolicy", "token", sn, None),
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_regional_names_and_aliases(gcp_audit, gcp_caller, transport):
    call = gcp_caller(transport)
    parent = f"projects/{uid()}/locations/europe-west4"
    sn = f"{parent}/secrets/regional"
    call("create_secret", parent=parent, secret_id="regional", secret={})
    for i in range(3):
        call("add_secret_version", parent=sn, payload={"data": b"%d" % i})
    gcp_audit.clear()
    call("access_secret_version", name=sn + "/versions/latest")
    call("get_secret_version", name=sn + "/versions/2")
    call("list_secrets", parent=parent)
    with pytest.raises(gexc.NotFound):
        call("access_secret_version", name=f"{parent}/secrets/absent/versions/latest")
    assert [(r[2], r[4], r[5], r[6]) for r in rows(gcp_audit)] == [
        ("success", "regional", sn + "/versions/3", "3"),
        ("success", "regional", sn + "/versions/2", "2"),
        ("success", "*", parent, None),
        # an alias that the server did not resolve is kept in the resource, never as a version
        ("not_found", "absent", f"{parent}/secrets/absent/versions/latest", None),
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("project", "exc_type", "outcome", "status", "rest_type"),
    [
        ("real", gexc.NotFound, "not_found", "NOT_FOUND", gexc.NotFound),
        ("denied", gexc.PermissionDenied, "denied", "PERMISSION_DENIED", gexc.Forbidden),
        ("unauth", gexc.Unauthenticated, "denied", "UNAUTHENTICATED", gexc.Unauthorized),
        ("broken", gexc.InternalServerError, "error", "INTERNAL", gexc.InternalServerError),
    ],
)
def test_outcomes_from_api_core_exceptions(
    gcp_audit, gcp_caller, transport, project, exc_type, outcome, status, rest_type
):
    if transport == "rest" and project == "unauth":
        # google-auth answers a REST 401 by refreshing; credentials that cannot refresh raise
        from google.auth.exceptions import RefreshError
        from google.oauth2.credentials import Credentials

        call = gcp_caller(transport, credentials=Credentials(token="expired-token"))
        rest_type, status = RefreshError, ""
    else:
        call = gcp_caller(transport)
    name = f"projects/{project}/secrets/missing-{secrets.token_hex(3)}/versions/4"
    with pytest.raises(exc_type if transport != "rest" else rest_type) as info:
        call("access_secret_version", name=name)
    [record] = gcp_audit.records()
    attrs = dict(record.attributes)
    err_cls = type(info.value)
    assert attrs["audit.outcome"] == outcome
    assert attrs["error.type"] == f"{err_cls.__module__}.{err_cls.__qualname__}"
    assert attrs.get("audit.error") == (status or None)
    assert attrs["secret.version"] == "4"
    assert "audit.result" not in attrs
    assert record.severity_text == ("ERROR" if outcome == "error" else "WARN")
    [span] = gcp_audit.spans()
    expected = trace.StatusCode.ERROR if outcome in ("error", "denied") else trace.StatusCode.UNSET
    assert span.status.status_code == expected


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_failed_precondition_and_client_side_errors(gcp_audit, gcp_caller, transport):
    call = gcp_caller(transport)
    project = uid()
    sn = f"projects/{project}/secrets/s"
    call("create_secret", parent=f"projects/{project}", secret_id="s", secret={})
    call("add_secret_version", parent=sn, payload={"data": b"v"})
    call("disable_secret_version", name=sn + "/versions/1")
    gcp_audit.clear()
    with pytest.raises(gexc.GoogleAPICallError):
        call("access_secret_version", name=sn + "/versions/1")
    with pytest.raises(ValueError):
        call("access_secret_version", request={"name": sn + "/versions/1"}, name=sn + "/versions/1")
    first, second = gcp_audit.attrs()
    assert first["audit.outcome"] == "error"
    assert first["audit.error"] in ("FAILED_PRECONDITION", "INVALID_ARGUMENT")
    assert second["audit.outcome"] == "error"
    assert second["error.type"] == "ValueError"
    assert "audit.error" not in second


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_canary_payload_never_exported_even_in_failures(gcp_audit, gcp_caller, gcp_server, transport):
    call = gcp_caller(transport)
    project = uid()
    sn = f"projects/{project}/secrets/s"
    canary = "canary-" + secrets.token_hex(16)
    call("create_secret", parent=f"projects/{project}", secret_id="s", secret={})
    call("add_secret_version", parent=sn, payload={"data": canary.encode()})
    assert call("access_secret_version", name=sn + "/versions/1").payload.data == canary.encode()
    # the fake echoes a rejected payload in its error text: the client's exception carries it
    with pytest.raises(gexc.GoogleAPICallError) as info:
        call("add_secret_version", parent=sn, payload={"data": b"reject:" + canary.encode()})
    assert canary in str(info.value)
    call("add_secret_version", parent=sn, payload={"data": canary})  # str, encoded by the client
    call("enable_managed_rotation", parent=sn, cloud_sql_single_user_credentials={"password": canary})
    text = exported_text(gcp_audit)
    assert len(gcp_audit.records()) >= 5
    assert canary not in text
    assert "reject" not in text


def test_principal_from_service_account_and_user_credentials(gcp_audit, gcp_caller):
    from google.auth import crypt
    from google.oauth2 import credentials as user_credentials
    from google.oauth2 import service_account

    class Signer(crypt.Signer):
        key_id = "k"

        def sign(self, message: bytes) -> bytes:
            return b"sig"

    token = "ya29.canary-" + secrets.token_hex(8)
    sa = service_account.Credentials(Signer(), "reader@proj.iam.gserviceaccount.com", "https://t.invalid")
    user = user_credentials.Credentials(token=token, account="alice@example.com")
    name = f"projects/{uid()}/secrets/none/versions/1"
    for transport, creds in [("grpc", sa), ("grpc_asyncio", sa), ("rest", user), ("grpc", user)]:
        call = gcp_caller(transport, credentials=creds)
        with pytest.raises(gexc.NotFound):
            call("access_secret_version", name=name)
    anon = gcp_caller("rest")
    with pytest.raises(gexc.NotFound):
        anon("access_secret_version", name=name)
    assert [a.get("audit.principal") for a in gcp_audit.attrs()] == [
        "serviceAccount:reader@proj.iam.gserviceaccount.com",
        "serviceAccount:reader@proj.iam.gserviceaccount.com",
        "user:alice@example.com",
        "user:alice@example.com",
        None,
    ]
    assert token not in exported_text(gcp_audit)


def test_principal_and_enduser_from_audit_context(gcp_audit, gcp_caller):
    from secret_audit import audit_context

    call = gcp_caller("grpc")
    with audit_context(enduser="bob@example.com", client_address="198.51.100.9", principal="svc:checkout"):
        with pytest.raises(gexc.NotFound):
            call("access_secret_version", name=f"projects/{uid()}/secrets/s/versions/1")
    [attrs] = gcp_audit.attrs()
    assert attrs["enduser.id"] == "bob@example.com"
    assert attrs["client.address"] == "198.51.100.9"
    assert attrs["audit.access_path"] == "external"
    assert attrs["audit.principal"] == "svc:checkout"


@pytest.mark.parametrize("api", ["v1beta2", "v1beta1"])
@pytest.mark.parametrize("transport", ["grpc", "grpc_asyncio"])
def test_beta_api_surfaces_are_audited(gcp_audit, gcp_caller, api, transport):
    call = gcp_caller(transport, api=api)
    project = uid()
    sn = f"projects/{project}/secrets/beta"
    call("create_secret", parent=f"projects/{project}", secret_id="beta", secret={"replication": {}})
    call("add_secret_version", parent=sn, payload={"data": b"b"})
    call("access_secret_version", name=sn + "/versions/latest")
    call("delete_secret", name=sn)
    assert [(r[0], r[3], r[5]) for r in rows(gcp_audit)] == [
        ("CreateSecret", "created", sn),
        ("AddSecretVersion", "created", sn + "/versions/1"),
        ("AccessSecretVersion", "found", sn + "/versions/1"),
        ("DeleteSecret", "deleted", sn),
    ]


def test_async_concurrent_accesses_each_get_a_record(gcp_audit, gcp_caller):
    import asyncio

    call = gcp_caller("grpc_asyncio")
    project = uid()
    sn = f"projects/{project}/secrets/s"
    call("create_secret", parent=f"projects/{project}", secret_id="s", secret={})
    call("add_secret_version", parent=sn, payload={"data": b"v"})
    gcp_audit.clear()

    async def many() -> list[Any]:
        return await asyncio.gather(
            *[call.client.access_secret_version(name=f"{sn}/versions/{v}") for v in ("1", "latest") * 5]
        )

    results = call.loop.run_until_complete(many())
    assert [r.payload.data for r in results] == [b"v"] * 10
    assert [r[3] for r in rows(gcp_audit)] == ["found"] * 10
    assert {r[5] for r in rows(gcp_audit)} == {sn + "/versions/1"}


def test_hashed_names_hide_the_secret_id_in_name_and_resource(gcp_caller, audit_env):
    from conftest import Audit, retire_pipeline
    from secret_audit.gcp import GcpSecretManagerSecretAuditInstrumentor
    from secret_audit.hashing import hash_name

    key = "k" * 32
    helper = Audit({**audit_env, "OTEL_PYTHON_SECRET_AUDIT_HASH_NAMES": "true",
                    "OTEL_PYTHON_SECRET_AUDIT_HMAC_KEY": key})
    inst = GcpSecretManagerSecretAuditInstrumentor()
    inst.instrument(**helper.kwargs())
    try:
        call = gcp_caller("grpc")
        with pytest.raises(gexc.NotFound):
            call("access_secret_version", name="projects/p/secrets/stripe-live-key/versions/latest")
        [attrs] = helper.attrs()
    finally:
        inst.uninstrument()
        retire_pipeline()
    hashed = hash_name("stripe-live-key", key)
    assert attrs["secret.name"] == hashed
    assert attrs["secret.resource"] == f"projects/p/secrets/{hashed}/versions/latest"
    assert "stripe-live-key" not in repr(attrs)


def test_a_failure_in_our_code_never_breaks_the_call(gcp_audit, gcp_caller, monkeypatch):
    from secret_audit._internal import gcp_source

    call = gcp_caller("grpc")
    project = uid()
    call("create_secret", parent=f"projects/{project}", secret_id="s", secret={})

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("audit bug")

    from secret_audit._internal.pipeline import peek_pipeline

    before = peek_pipeline().stats()["call_errors"]
    monkeypatch.setattr(gcp_source, "build_item", boom)
    result = call("get_secret", name=f"projects/{project}/secrets/s")
    assert result.name == f"projects/{project}/secrets/s"
    with pytest.raises(gexc.NotFound):
        call("get_secret", name=f"projects/{project}/secrets/nope")
    assert peek_pipeline().stats()["call_errors"] == before + 2


def test_uninstrument_restores_the_original_methods(gcp_server):
    from google.cloud.secretmanager_v1.services.secret_manager_service import async_client, client

    from secret_audit.gcp import GcpSecretManagerSecretAuditInstrumentor

    originals = {
        (cls, m): cls.__dict__[m]
        for cls in (client.SecretManagerServiceClient, async_client.SecretManagerServiceAsyncClient)
        for m in ("access_secret_version", "set_iam_policy", "list_secrets")
    }
    inst = GcpSecretManagerSecretAuditInstrumentor()
    from conftest import Audit, retire_pipeline

    helper = Audit({})
    inst.instrument(**helper.kwargs())
    try:
        for (cls, m), fn in originals.items():
            assert cls.__dict__[m] is not fn
            assert getattr(cls.__dict__[m], "__wrapped__", None) is fn
    finally:
        inst.uninstrument()
        retire_pipeline()
    for (cls, m), fn in originals.items():
        assert cls.__dict__[m] is fn
    from google.cloud import secretmanager

    assert secretmanager.SecretManagerServiceClient is client.SecretManagerServiceClient


def test_entry_point_and_missing_library(monkeypatch):
    from importlib.metadata import entry_points

    import secret_audit.gcp as gcp_module
    from secret_audit._internal.pipeline import peek_pipeline
    from secret_audit.gcp import GcpSecretManagerSecretAuditInstrumentor

    group = entry_points(group="opentelemetry_instrumentor")
    [ep] = [e for e in group if e.name == "secret_audit_gcp_secret_manager"]
    assert ep.load() is GcpSecretManagerSecretAuditInstrumentor
    assert list(GcpSecretManagerSecretAuditInstrumentor().instrumentation_dependencies()) == [
        "google-cloud-secret-manager >= 2.16.0"
    ]

    real_find_spec = gcp_module.importlib.util.find_spec

    def missing(name: str, *args: Any) -> Any:
        return None if name.startswith("google.cloud.secretmanager") else real_find_spec(name, *args)

    # the launcher skips the per-instrumentor dependency check: a missing library must be a no-op
    monkeypatch.setattr(gcp_module.importlib.util, "find_spec", missing)
    before = peek_pipeline()
    inst = GcpSecretManagerSecretAuditInstrumentor()
    inst.instrument(skip_dep_check=True)
    try:
        assert peek_pipeline() is before
    finally:
        inst.uninstrument()
