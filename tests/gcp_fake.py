"""A local SecretManagerService that the real google-cloud-secret-manager client talks to.

One in-memory store is served three ways: gRPC (for the sync ``grpc`` and the ``grpc_asyncio``
transports, which speak the same wire protocol) for v1, v1beta2 and v1beta1, and REST over plain
HTTP for the v1 ``rest`` transport. Special project ids inject failures:

- ``denied``: every call fails with PERMISSION_DENIED; ``unauth``: UNAUTHENTICATED;
- ``broken``: INTERNAL, with the requested name echoed in the message;
- a payload starting with ``b"reject:"`` fails with INVALID_ARGUMENT and the payload echoed,
  so tests can prove that no error text of ours ever carries a value.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import grpc
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.protobuf import empty_pb2, json_format

SERVICES = {
    "v1": "google.cloud.secretmanager.v1.SecretManagerService",
    "v1beta2": "google.cloud.secretmanager.v1beta2.SecretManagerService",
    "v1beta1": "google.cloud.secrets.v1beta1.SecretManagerService",
}

_HTTP = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.INTERNAL: 500,
}


def types_for(api: str) -> ModuleType:
    """The proto-plus types module of one API version of the client library."""
    import importlib

    return importlib.import_module(f"google.cloud.secretmanager_{api}.types")


class Failure(Exception):
    """A gRPC status the fake answers with; REST turns it into the matching HTTP error."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Version:
    number: int
    data: bytes
    state: int = 1  # ENABLED=1, DISABLED=2, DESTROYED=3 in every API version


@dataclass
class _Secret:
    labels: dict[str, str] = field(default_factory=dict)
    versions: list[_Version] = field(default_factory=list)
    policy: bytes = b""


_VERSION_NAME = re.compile(
    r"^(?P<secret>projects/[^/]+(?:/locations/[^/]+)?/secrets/[^/]+)/versions/(?P<v>[^/]+)$"
)


class FakeSecretManager:
    """The store and the RPC semantics, independent of how requests arrive."""

    def __init__(self) -> None:
        self.secrets: dict[str, _Secret] = {}
        self.calls: list[str] = []
        self.rest_headers: list[dict[str, str]] = []
        self.lock = threading.Lock()

    # ---- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _gate(name: str) -> None:
        project = name.split("/")[1] if name.startswith("projects/") else ""
        if project == "denied":
            raise Failure(grpc.StatusCode.PERMISSION_DENIED, f"Permission denied on resource '{name}'")
        if project == "unauth":
            raise Failure(grpc.StatusCode.UNAUTHENTICATED, "Request had invalid authentication credentials")
        if project == "broken":
            raise Failure(grpc.StatusCode.INTERNAL, f"Internal error while serving '{name}'")

    def _secret(self, name: str) -> _Secret:
        self._gate(name)
        secret = self.secrets.get(name)
        if secret is None:
            raise Failure(grpc.StatusCode.NOT_FOUND, f"Secret [{name}] not found.")
        return secret

    def _version(self, name: str) -> tuple[str, _Secret, _Version]:
        self._gate(name)
        match = _VERSION_NAME.match(name)
        if not match:
            raise Failure(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid version name [{name}]")
        secret_name, wanted = match["secret"], match["v"]
        secret = self.secrets.get(secret_name)
        if secret is None or not secret.versions:
            raise Failure(grpc.StatusCode.NOT_FOUND, f"Secret [{secret_name}] not found or has no versions.")
        if wanted == "latest":
            version = secret.versions[-1]
        else:
            found = [v for v in secret.versions if str(v.number) == wanted]
            if not found:
                raise Failure(grpc.StatusCode.NOT_FOUND, f"Secret Version [{name}] not found.")
            version = found[0]
        return secret_name, secret, version

    @staticmethod
    def _version_msg(t: ModuleType, secret_name: str, v: _Version) -> Any:
        return t.SecretVersion(name=f"{secret_name}/versions/{v.number}", state=v.state)

    @staticmethod
    def _secret_msg(t: ModuleType, name: str, s: _Secret) -> Any:
        return t.Secret(name=name, labels=s.labels)

    def _new_version(self, t: ModuleType, parent: str, data: bytes) -> Any:
        secret = self._secret(parent)
        if data.startswith(b"reject:"):
            raise Failure(grpc.StatusCode.INVALID_ARGUMENT, f"payload {data!r} is not acceptable")
        version = _Version(len(secret.versions) + 1, data)
        secret.versions.append(version)
        return self._version_msg(t, parent, version)

    # ---- RPCs ------------------------------------------------------------------------------

    def ListSecrets(self, t: ModuleType, req: Any) -> Any:
        self._gate(req.parent)
        prefix = req.parent + "/secrets/"
        names = sorted(n for n in self.secrets if n.startswith(prefix) and "/" not in n[len(prefix):])
        return t.ListSecretsResponse(
            secrets=[self._secret_msg(t, n, self.secrets[n]) for n in names], total_size=len(names)
        )

    def CreateSecret(self, t: ModuleType, req: Any) -> Any:
        self._gate(req.parent)
        name = f"{req.parent}/secrets/{req.secret_id}"
        if name in self.secrets:
            raise Failure(grpc.StatusCode.ALREADY_EXISTS, f"Secret [{name}] already exists.")
        secret = _Secret(labels=dict(req.secret.labels))
        self.secrets[name] = secret
        return self._secret_msg(t, name, secret)

    def AddSecretVersion(self, t: ModuleType, req: Any) -> Any:
        data = bytes(req.payload.data)
        crc = "data_crc32c" in t.SecretPayload.meta.fields
        if crc and req.payload.data_crc32c and req.payload.data_crc32c != zlib.crc32(data):
            raise Failure(grpc.StatusCode.INVALID_ARGUMENT, "Checksum mismatch")
        return self._new_version(t, req.parent, data)

    def GetSecret(self, t: ModuleType, req: Any) -> Any:
        return self._secret_msg(t, req.name, self._secret(req.name))

    def UpdateSecret(self, t: ModuleType, req: Any) -> Any:
        secret = self._secret(req.secret.name)
        secret.labels = dict(req.secret.labels)
        return self._secret_msg(t, req.secret.name, secret)

    def DeleteSecret(self, t: ModuleType, req: Any) -> Any:
        self._secret(req.name)
        del self.secrets[req.name]
        return empty_pb2.Empty()

    def ListSecretVersions(self, t: ModuleType, req: Any) -> Any:
        secret = self._secret(req.parent)
        versions = [self._version_msg(t, req.parent, v) for v in reversed(secret.versions)]
        return t.ListSecretVersionsResponse(versions=versions, total_size=len(versions))

    def GetSecretVersion(self, t: ModuleType, req: Any) -> Any:
        secret_name, _, version = self._version(req.name)
        return self._version_msg(t, secret_name, version)

    def AccessSecretVersion(self, t: ModuleType, req: Any) -> Any:
        secret_name, _, version = self._version(req.name)
        if version.state != 1:
            raise Failure(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Secret Version [{secret_name}/versions/{version.number}] is not enabled.",
            )
        payload = t.SecretPayload(data=version.data)
        if "data_crc32c" in t.SecretPayload.meta.fields:
            payload.data_crc32c = zlib.crc32(version.data)
        return t.AccessSecretVersionResponse(name=f"{secret_name}/versions/{version.number}", payload=payload)

    def _set_state(self, t: ModuleType, name: str, state: int) -> Any:
        secret_name, _, version = self._version(name)
        version.state = state
        if state == 3:
            version.data = b""
        return self._version_msg(t, secret_name, version)

    def EnableSecretVersion(self, t: ModuleType, req: Any) -> Any:
        return self._set_state(t, req.name, 1)

    def DisableSecretVersion(self, t: ModuleType, req: Any) -> Any:
        return self._set_state(t, req.name, 2)

    def DestroySecretVersion(self, t: ModuleType, req: Any) -> Any:
        return self._set_state(t, req.name, 3)

    def EnableManagedRotation(self, t: ModuleType, req: Any) -> Any:
        creds = req.cloud_sql_single_user_credentials
        return self._new_version(t, req.parent, str(creds).encode())

    def RotateSecret(self, t: ModuleType, req: Any) -> Any:
        return self._new_version(t, req.parent, b"rotated")

    def SetIamPolicy(self, t: ModuleType, req: Any) -> Any:
        secret = self._secret(req.resource)
        secret.policy = req.policy.SerializeToString()
        return req.policy

    def GetIamPolicy(self, t: ModuleType, req: Any) -> Any:
        return policy_pb2.Policy.FromString(self._secret(req.resource).policy)

    def TestIamPermissions(self, t: ModuleType, req: Any) -> Any:
        self._secret(req.resource)
        return iam_policy_pb2.TestIamPermissionsResponse(permissions=list(req.permissions))

    def call(self, api: str, rpc: str, req: Any) -> Any:
        """Run one RPC under the store lock and note its name, so tests can count server calls."""
        with self.lock:
            self.calls.append(rpc)
            return getattr(self, rpc)(types_for(api), req)


# ---- gRPC ----------------------------------------------------------------------------------

_IAM = {
    "SetIamPolicy": (iam_policy_pb2.SetIamPolicyRequest, policy_pb2.Policy),
    "GetIamPolicy": (iam_policy_pb2.GetIamPolicyRequest, policy_pb2.Policy),
    "TestIamPermissions": (
        iam_policy_pb2.TestIamPermissionsRequest,
        iam_policy_pb2.TestIamPermissionsResponse,
    ),
}
_RESPONSE = {
    "ListSecrets": "ListSecretsResponse",
    "CreateSecret": "Secret",
    "AddSecretVersion": "SecretVersion",
    "GetSecret": "Secret",
    "UpdateSecret": "Secret",
    "DeleteSecret": None,
    "ListSecretVersions": "ListSecretVersionsResponse",
    "GetSecretVersion": "SecretVersion",
    "AccessSecretVersion": "AccessSecretVersionResponse",
    "EnableSecretVersion": "SecretVersion",
    "DisableSecretVersion": "SecretVersion",
    "DestroySecretVersion": "SecretVersion",
    "EnableManagedRotation": "SecretVersion",
    "RotateSecret": "SecretVersion",
}


def _codecs(api: str, rpc: str) -> tuple[Callable[[bytes], Any], Callable[[Any], bytes]] | None:
    if rpc in _IAM:
        req_t, resp_t = _IAM[rpc]
        return req_t.FromString, resp_t.SerializeToString
    t = types_for(api)
    req_cls = getattr(t, f"{rpc}Request", None)
    if req_cls is None:
        return None
    resp_name = _RESPONSE[rpc]
    if resp_name is None:
        return req_cls.deserialize, empty_pb2.Empty.SerializeToString
    return req_cls.deserialize, getattr(t, resp_name).serialize


def _grpc_handlers(fake: FakeSecretManager) -> list[grpc.GenericRpcHandler]:
    handlers = []
    for api, service in SERVICES.items():
        methods = {}
        for rpc in [*_RESPONSE, *_IAM]:
            codecs = _codecs(api, rpc)
            if codecs is None:
                continue

            def serve(request: Any, context: grpc.ServicerContext, api: str = api, rpc: str = rpc) -> Any:
                try:
                    return fake.call(api, rpc, request)
                except Failure as f:
                    context.abort(f.code, f.message)

            methods[rpc] = grpc.unary_unary_rpc_method_handler(
                serve, request_deserializer=codecs[0], response_serializer=codecs[1]
            )
        handlers.append(grpc.method_handlers_generic_handler(service, methods))
    return handlers


# ---- REST ----------------------------------------------------------------------------------


def _to_json(msg: Any) -> bytes:
    raw = msg._pb if hasattr(msg, "_pb") else msg
    return json_format.MessageToJson(raw, use_integers_for_enums=True).encode()


def _route(method: str, path: str, query: dict[str, str], body: dict[str, Any]) -> tuple[str, Any]:
    """Turn a v1 REST call into (rpc, request message) following the client's http rules."""
    t = types_for("v1")
    target, _, verb = path.rpartition(":") if ":" in path.rsplit("/", 1)[-1] else (path, "", "")
    by_verb: dict[str, tuple[str, str, Any]] = {
        "access": ("AccessSecretVersion", "name", t.AccessSecretVersionRequest),
        "addVersion": ("AddSecretVersion", "parent", t.AddSecretVersionRequest),
        "destroy": ("DestroySecretVersion", "name", t.DestroySecretVersionRequest),
        "disable": ("DisableSecretVersion", "name", t.DisableSecretVersionRequest),
        "enable": ("EnableSecretVersion", "name", t.EnableSecretVersionRequest),
        "enableManagedRotation": ("EnableManagedRotation", "parent", t.EnableManagedRotationRequest),
        "rotateSecret": ("RotateSecret", "parent", t.RotateSecretRequest),
    }
    if verb in by_verb:
        rpc, key, cls = by_verb[verb]
        req = cls.from_json(json.dumps(body), ignore_unknown_fields=True)
        setattr(req, key, target)
        return rpc, req
    if verb in ("getIamPolicy", "setIamPolicy", "testIamPermissions"):
        rpc = verb[0].upper() + verb[1:]
        pb = _IAM[rpc][0]()
        json_format.ParseDict(body, pb, ignore_unknown_fields=True)
        pb.resource = target
        return rpc, pb
    if path.endswith("/secrets"):
        parent = path[: -len("/secrets")]
        if method == "POST":
            secret = t.Secret.from_json(json.dumps(body), ignore_unknown_fields=True)
            return "CreateSecret", t.CreateSecretRequest(
                parent=parent, secret_id=query.get("secretId", ""), secret=secret
            )
        return "ListSecrets", t.ListSecretsRequest(parent=parent)
    if path.endswith("/versions"):
        return "ListSecretVersions", t.ListSecretVersionsRequest(parent=path[: -len("/versions")])
    if "/versions/" in path:
        return "GetSecretVersion", t.GetSecretVersionRequest(name=path)
    if method == "DELETE":
        return "DeleteSecret", t.DeleteSecretRequest(name=path)
    if method == "PATCH":
        secret = t.Secret.from_json(json.dumps(body), ignore_unknown_fields=True)
        secret.name = path
        return "UpdateSecret", t.UpdateSecretRequest(secret=secret)
    return "GetSecret", t.GetSecretRequest(name=path)


def _rest_handler(fake: FakeSecretManager) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return None

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            fake.rest_headers.append({k.lower(): v for k, v in self.headers.items()})
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            path = unquote(parts.path)
            try:
                if not path.startswith("/v1/"):
                    raise Failure(grpc.StatusCode.NOT_FOUND, "no such API")
                rpc, req = _route(self.command, path[len("/v1/"):], query, json.loads(raw or b"{}"))
                status, payload = 200, _to_json(fake.call("v1", rpc, req))
            except Failure as f:
                status = _HTTP.get(f.code, 500)
                payload = json.dumps(
                    {"error": {"code": status, "message": f.message, "status": f.code.name}}
                ).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = do_PATCH = _serve

    return Handler


# ---- servers -------------------------------------------------------------------------------


@dataclass
class FakeEndpoints:
    """Where the fake listens: a gRPC ``host:port`` and a REST ``http://`` base URL."""

    fake: FakeSecretManager
    grpc_target: str
    rest_url: str


@contextlib.contextmanager
def fake_secret_manager() -> Iterator[FakeEndpoints]:
    """Start the gRPC and REST servers on free loopback ports; always stops them."""
    fake = FakeSecretManager()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=_grpc_handlers(fake))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    http = ThreadingHTTPServer(("127.0.0.1", 0), _rest_handler(fake))
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield FakeEndpoints(fake, f"127.0.0.1:{port}", f"http://127.0.0.1:{http.server_address[1]}")
    finally:
        http.shutdown()
        http.server_close()
        server.stop(0).wait(5)


def main() -> None:
    """Serve until terminated, printing ``<grpc target> <rest url>`` (benchmarks run it out of process)."""
    import signal

    with fake_secret_manager() as endpoints:
        print(endpoints.grpc_target, endpoints.rest_url, flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stop.wait()


if __name__ == "__main__":
    main()
