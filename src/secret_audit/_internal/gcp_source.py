"""google-cloud-secret-manager: which calls touch which secret, and the call core's hooks for its clients."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from opentelemetry.context import Context

from secret_audit._internal.callcore import Args, CallCore, Kwargs, Wrapper
from secret_audit._internal.errors import error_type
from secret_audit._internal.event import Access, Item
from secret_audit._internal.handoff import Handoff

__all__ = [
    "RPCS",
    "SOURCE_NAME",
    "GcpSecretManagerSource",
    "GcpWrappers",
    "Rpc",
    "build_item",
    "parse_name",
    "principal_of",
]

SOURCE_NAME = "gcp_secret_manager"
UNKNOWN = "unknown"


class Rpc(NamedTuple):
    """How one client method is audited: its GCP method name, access type and identifier shape."""

    action: str
    operation: str
    result: str | None
    field: str
    shape: str  # version | secret | new_version | create | update | list


# GCP's own audit-log categories: data access for payload reads, admin activity for the rest.
RPCS: Mapping[str, Rpc] = {
    "access_secret_version": Rpc("AccessSecretVersion", "read", "found", "name", "version"),
    "add_secret_version": Rpc("AddSecretVersion", "write", "created", "parent", "new_version"),
    "create_secret": Rpc("CreateSecret", "write", "created", "parent", "create"),
    "update_secret": Rpc("UpdateSecret", "write", "updated", "secret", "update"),
    "enable_secret_version": Rpc("EnableSecretVersion", "write", "updated", "name", "version"),
    "disable_secret_version": Rpc("DisableSecretVersion", "write", "updated", "name", "version"),
    "rotate_secret": Rpc("RotateSecret", "write", "created", "parent", "new_version"),
    "enable_managed_rotation": Rpc("EnableManagedRotation", "write", "created", "parent", "new_version"),
    "destroy_secret_version": Rpc("DestroySecretVersion", "delete", "deleted", "name", "version"),
    "delete_secret": Rpc("DeleteSecret", "delete", "deleted", "name", "secret"),
    "get_secret": Rpc("GetSecret", "metadata", "found", "name", "secret"),
    "get_secret_version": Rpc("GetSecretVersion", "metadata", "found", "name", "version"),
    "list_secrets": Rpc("ListSecrets", "metadata", None, "parent", "list"),
    "list_secret_versions": Rpc("ListSecretVersions", "metadata", None, "parent", "secret"),
    "get_iam_policy": Rpc("GetIamPolicy", "admin", None, "resource", "secret"),
    "set_iam_policy": Rpc("SetIamPolicy", "admin", "updated", "resource", "secret"),
    "test_iam_permissions": Rpc("TestIamPermissions", "admin", None, "resource", "secret"),
}

_OUTCOMES = {
    "NOT_FOUND": "not_found",
    "PERMISSION_DENIED": "denied",
    "UNAUTHENTICATED": "denied",
}
# google.rpc's canonical HTTP mapping, for REST errors that api_core only knows by HTTP status.
_HTTP_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_CODE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")


def parse_name(name: str) -> tuple[str, str | None, int]:
    """Split a global or regional resource name into (secret id, version or alias, end of secret part).

    The third value is the length of ``projects/p[/locations/l]/secrets/s``, or 0 when ``name``
    is not a secret or version name.
    """
    parts = name.split("/")
    i = 4 if len(parts) > 4 and parts[2] == "locations" else 2
    if len(parts) <= i + 1 or parts[0] != "projects" or parts[i] != "secrets" or not parts[i + 1]:
        return name, None, 0
    end = len("/".join(parts[: i + 2]))
    version = parts[i + 3] if len(parts) > i + 3 and parts[i + 2] == "versions" else None
    return parts[i + 1], version, end


def _arg(args: tuple[Any, ...], kwargs: Mapping[str, Any], key: str) -> Any:
    """Read ``key`` from a flattened argument or from ``request`` (message or dict)."""
    value = kwargs.get(key)
    if value is not None:
        return value
    request = args[0] if args else kwargs.get("request")
    if request is None:
        return None
    if isinstance(request, Mapping):
        return request.get(key)
    return getattr(request, key, None)


def _field(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


def _response_version(response: Any) -> str | None:
    """The concrete version number the server answered with, from the response's resource name."""
    # proto-plus attribute access costs microseconds; the raw protobuf message is 20x cheaper
    name = getattr(getattr(response, "_pb", response), "name", None)
    if isinstance(name, str):
        tail = name.rpartition("/")[2]
        if tail.isdigit():
            return tail
    return None


def build_item(rpc: Rpc, args: tuple[Any, ...], kwargs: Mapping[str, Any], response: Any) -> Item:
    """Turn one call into an Item with identifiers only; the payload is never looked at."""
    shape = rpc.shape
    raw = _arg(args, kwargs, rpc.field)
    if shape == "update":
        raw = _field(raw, "name")
    elif shape == "create":
        secret_id = _arg(args, kwargs, "secret_id")
        raw = f"{raw}/secrets/{secret_id}" if isinstance(raw, str) and isinstance(secret_id, str) else None
    if not isinstance(raw, str) or not raw:
        return Item(UNKNOWN, rpc.operation, rpc.action, rpc.result)
    if shape == "list":
        return Item("*", rpc.operation, rpc.action, rpc.result, raw)
    secret, version, end = parse_name(raw)
    if not end:
        # not a secret name: it is the identifier itself, so it must not repeat unhashed in resource
        return Item(raw, rpc.operation, rpc.action, rpc.result)
    resource = raw
    if shape == "new_version":
        version = _response_version(response) if response is not None else None
        resource = f"{raw[:end]}/versions/{version}" if version else raw[:end]
    elif version is not None and not version.isdigit():
        resolved = _response_version(response) if response is not None else None
        if resolved:
            version, resource = resolved, f"{raw[:end]}/versions/{resolved}"
        else:
            version = None  # an alias that could not be resolved is not a version
    return Item(secret, rpc.operation, rpc.action, rpc.result, resource, version)


def principal_of(credentials: Any) -> str | None:
    """Name the identity behind google-auth credentials in IAM member form, never a token."""
    try:
        email = getattr(credentials, "service_account_email", None)
        if isinstance(email, str) and "@" in email:
            return f"serviceAccount:{email}"
        account = getattr(credentials, "account", None)
        if isinstance(account, str) and account:
            return f"user:{account}"
    except Exception:
        return None
    return None


def _status(error: BaseException) -> str | None:
    """The canonical status name of a google.api_core error, from gRPC or from the HTTP code."""
    if not type(error).__module__.startswith("google."):
        return None
    name = getattr(getattr(error, "grpc_status_code", None), "name", None)
    if isinstance(name, str):
        return name
    code = getattr(error, "code", None)
    return _HTTP_STATUS.get(code) if isinstance(code, int) else None


class GcpSecretManagerSource:
    """Describes Secret Manager clients to the audit worker."""

    name = SOURCE_NAME

    def resource(self, target: Any) -> str | None:
        """Items carry their own resource names, so the client adds nothing here."""
        return None

    def principal(self, target: Any) -> str | None:
        """The service account or user account of the client's credentials, when it is known."""
        try:
            credentials = getattr(target.transport, "_credentials", None)
        except Exception:
            return None
        return principal_of(credentials) if credentials is not None else None

    def describe_error(self, error: BaseException) -> tuple[str, str, str]:
        """Map google.api_core errors to an outcome and a status name; never the server's text."""
        etype = error_type(error)
        status = _status(error)
        cause = getattr(error, "cause", None)
        if status is None and isinstance(cause, BaseException):
            status = _status(cause)  # RetryError: the last attempt's status
        if status is None:
            # google-auth failing to (re)authenticate the client is an authentication denial
            denied = type(error).__name__ == "RefreshError" and etype.startswith("google.auth.")
            return ("denied" if denied else "error"), etype, ""
        text = status
        reason = getattr(error, "reason", None)
        if isinstance(reason, str) and _CODE.match(reason) and reason != status:
            text = f"{status} {reason}"
        return _OUTCOMES.get(status, "error"), etype, text


SOURCE = GcpSecretManagerSource()

class _Method:
    """The call core's hooks for one client method: every call is audited, its Item made at once."""

    __slots__ = ("rpc",)

    def __init__(self, rpc: Rpc) -> None:
        self.rpc = rpc

    def describe(self, instance: Any, args: Args, kwargs: Kwargs) -> Rpc:
        return self.rpc

    def access(
        self,
        instance: Any,
        args: Args,
        kwargs: Kwargs,
        rpc: Rpc,
        start: int,
        end: int,
        ctx: Context,
        response: Any,
        error: BaseException | None,
    ) -> Access:
        """Identifiers only, from the request and (for a new or aliased version) the response."""
        item = build_item(rpc, args, kwargs, response)
        return Access(SOURCE, start, end, ctx, instance, (item,), "success", error)


class GcpWrappers:
    """The wrapt wrappers of the client methods, sync and async, from the call core."""

    def __init__(self, handoff: Handoff, *, closed: bool = False) -> None:
        self._core = CallCore(handoff, closed=closed)

    def for_method(self, method: str, is_async: bool) -> Wrapper:
        """The wrapt wrapper for one client method."""
        return self._core.wrapper(_Method(RPCS[method]), is_async=is_async)
