"""Who is behind a secret access, carried in the OpenTelemetry context so it follows threads and tasks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry.context import Context

__all__ = [
    "ACCESS_PATHS",
    "AuditContext",
    "audit_context",
    "current_audit_context",
]

ACCESS_PATHS = ("internal", "external")

_KEY = otel_context.create_key("secret_audit.audit_context")

# W3C baggage keys an upstream service may set; principal is deliberately not read from baggage.
BAGGAGE_ENDUSER = "enduser.id"
BAGGAGE_CLIENT_ADDRESS = "client.address"
BAGGAGE_ACCESS_PATH = "audit.access_path"


@dataclass(frozen=True)
class AuditContext:
    """The accessor facts for one unit of work; frozen so a worker thread can read it safely."""

    enduser: str | None = None
    client_address: str | None = None
    access_path: str | None = None
    principal: str | None = None


@contextmanager
def audit_context(
    *,
    enduser: str | None = None,
    client_address: str | None = None,
    access_path: str | None = None,
    principal: str | None = None,
) -> Iterator[AuditContext]:
    """Attach accessor facts to every secret access made inside the block, in sync or async code.

    Values not given are inherited from an enclosing ``audit_context``.
    """
    if access_path is not None and access_path not in ACCESS_PATHS:
        raise ValueError(f"access_path={access_path!r} is not valid: expected internal or external")
    outer = current_audit_context()
    merged = AuditContext(
        enduser=enduser if enduser is not None else outer.enduser,
        client_address=client_address if client_address is not None else outer.client_address,
        access_path=access_path if access_path is not None else outer.access_path,
        principal=principal if principal is not None else outer.principal,
    )
    token = otel_context.attach(otel_context.set_value(_KEY, merged))
    try:
        yield merged
    finally:
        otel_context.detach(token)


_EMPTY = AuditContext()


def current_audit_context(ctx: Context | None = None) -> AuditContext:
    """Return the audit context set by ``audit_context``, or an empty one."""
    value = otel_context.get_value(_KEY, ctx)
    return value if isinstance(value, AuditContext) else _EMPTY


# the context key baggage lives under (private to the API: without it, baggage is always asked)
_BAGGAGE_KEY: str | None = getattr(baggage, "_BAGGAGE_KEY", None)
_DEFAULTS = {path: AuditContext(None, None, path, None) for path in ACCESS_PATHS}


def resolve(ctx: Context | None, default_access_path: str) -> AuditContext:
    """Merge the explicit audit context with W3C baggage, explicit values winning."""
    if ctx is not None and _BAGGAGE_KEY is not None and _KEY not in ctx and _BAGGAGE_KEY not in ctx:
        # neither set (a request span's context, say): the shared default, without looking further
        return _DEFAULTS.get(default_access_path) or AuditContext(None, None, default_access_path)
    explicit = current_audit_context(ctx)
    bag = baggage.get_all(ctx)
    if explicit is _EMPTY and not bag:
        return _DEFAULTS.get(default_access_path) or AuditContext(None, None, default_access_path)
    enduser = explicit.enduser or _str(bag.get(BAGGAGE_ENDUSER))
    client_address = explicit.client_address or _str(bag.get(BAGGAGE_CLIENT_ADDRESS))
    access_path = explicit.access_path or _str(bag.get(BAGGAGE_ACCESS_PATH))
    if access_path not in ACCESS_PATHS:
        access_path = "external" if (enduser or client_address) else default_access_path
    return AuditContext(enduser, client_address, access_path, explicit.principal)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
