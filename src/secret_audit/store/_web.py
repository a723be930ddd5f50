"""What every route shares: the bearer check with roles, the self-audit of reads, JSON answers."""

from collections.abc import Callable
from typing import Annotated, Any

import orjson
import psycopg
from fastapi import HTTPException, Request, Security
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from secret_audit.store.service import Store
from secret_audit.store.tokens import Principal, authenticate

__all__ = ["INGEST", "READ", "Api", "client_of", "json_response", "no_nul"]

INGEST = ("ingest", "admin")
READ = ("auditor", "admin")


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Serialise with orjson (datetimes included)."""
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json", headers=headers)


def client_of(request: Request) -> str | None:
    """The caller's address, as recorded in the store's own audit events."""
    return request.client.host if request.client else None


def _route(request: Request) -> str:
    # the path as routed (never the query string, which may hold filters)
    return f"{request.method} {request.url.path}"[:200]


def no_nul(name: str, value: str | None) -> str | None:
    """Refuse NUL in a text parameter with 400 (PostgreSQL cannot store it)."""
    if value is not None and "\x00" in value:
        raise HTTPException(400, f"{name} must not contain NUL characters")
    return value


class Api:
    """The store plus the two things routes need from it: who is calling, and writing that down."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.bearer = HTTPBearer(
            auto_error=False, description="A token made by `secret-audit tokens create`."
        )

    def authorize(self, roles: tuple[str, ...], action: str) -> Callable[..., Principal]:
        """A FastAPI dependency: 401 without a live token, 403 (audited) for a role not in ``roles``."""
        store = self.store
        bearer = self.bearer
        audit = self.audit

        def dependency(
            request: Request,
            creds: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
        ) -> Principal:
            if creds is None:
                store.counters.bump("unauthorized")
                store.refusals.note(client_of(request), _route(request), "no bearer token")
                raise HTTPException(401, "a bearer token is required",
                                    headers={"WWW-Authenticate": "Bearer"})
            with store.connection() as conn:
                principal = authenticate(conn, creds.credentials)
                allowed = principal is not None and principal.role in roles
                if principal is not None and not allowed:
                    audit(conn, principal, request, action, "denied",
                           f"Audit store refused {action} to {principal.name} (role {principal.role})")
            if principal is None:
                store.counters.bump("unauthorized")
                # the presented token is never recorded: it may be someone's secret pasted by mistake
                store.refusals.note(client_of(request), _route(request), "unknown or revoked token")
                raise HTTPException(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
            if not allowed:
                raise HTTPException(403, f"role {principal.role!r} may not {action}")
            return principal

        return dependency

    def audit(
        self,
        conn: psycopg.Connection[Any],
        principal: Principal,
        request: Request,
        action: str,
        outcome: str,
        body: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Write one audit.query record about this call and publish it to live streams."""
        store = self.store
        extra = dict(extra or {})
        if principal.tenant:
            extra["audit.tenant"] = principal.tenant
        result = store.self_audit.record(
            conn,
            event_name="audit.query",
            action=action,
            outcome=outcome,
            principal=principal.label,
            client_address=client_of(request),
            body=body,
            extra=extra,
        )
        store.hub.publish(result.events)
