"""``POST /api/audit-events``: custom audit events (login, export, policy change) in the chained table."""

import threading
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from secret_audit import contract
from secret_audit.store._otlp import make_record
from secret_audit.store._rows import is_audit_event
from secret_audit.store._selfaudit import Chainer, severity_for
from secret_audit.store._web import INGEST, Api
from secret_audit.store.service import Store
from secret_audit.store.tokens import Principal
from secret_audit.version import __version__

__all__ = ["RESERVED", "CustomEvent", "mount"]

# The contract's own event names: a custom event that took one would pass for a secret access, the
# store's audit of a read, a reported loss or a producer's checkpoint.
RESERVED = contract.RESERVED_EVENT_NAMES

_CHAIN_KEYS = ("audit.stream.id", "audit.sequence", "audit.event.id", "audit.chain.prev", "audit.chain.hash")
Scalar = str | int | float | bool


class CustomEvent(BaseModel):
    """A custom audit event; without chain fields the store chains it on a stream of its own."""

    event_name: str = Field(pattern=r"^audit\.[A-Za-z0-9_.-]{1,100}$", examples=["audit.login"])
    body: str = Field(max_length=4096, examples=["User alice logged in"])
    attributes: dict[Annotated[str, Field(max_length=256)], Scalar] = Field(
        default_factory=dict, max_length=128
    )
    severity_number: int | None = Field(default=None, ge=1, le=24)
    time_unix_nano: int | None = Field(default=None, ge=1, lt=1 << 63)
    trace_id: str = Field(default="", pattern=r"^([0-9a-f]{32})?$")
    span_id: str = Field(default="", pattern=r"^([0-9a-f]{16})?$")
    service_name: str | None = Field(default=None, max_length=256)


class _Chains:
    """One store-made stream per tenant for custom events that arrive without chain fields."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._by_tenant: dict[str | None, Chainer] = {}
        self._lock = threading.Lock()

    def get(self, tenant: str | None) -> Chainer:
        with self._lock:
            chainer = self._by_tenant.get(tenant)
            if chainer is None:
                chainer = Chainer(self.store.ingestor, {"service.name": "secret-audit-store.custom"}, tenant)
                self._by_tenant[tenant] = chainer
            return chainer


def _refusal(event: CustomEvent, caller: Principal) -> tuple[int, str] | None:
    """Why the event may not be posted by this caller (the status and reason), or None."""
    if event.event_name in RESERVED:
        return 422, (f"event_name {event.event_name!r} is reserved ({', '.join(sorted(RESERVED))}): "
                     "give the custom event a name of its own")
    claimed = event.attributes.get("audit.principal")
    if claimed is not None and claimed != caller.label and "audit.chain.hash" not in event.attributes:
        # the store chains this event and so vouches for who posted it: the caller, never another
        return 403, f"audit.principal must be the caller's own ({caller.label}) or left out"
    return None


def _post(store: Store, chains: _Chains, event: CustomEvent, caller: Principal) -> dict[str, Any]:
    if "\x00" in event.body or any("\x00" in k or (isinstance(v, str) and "\x00" in v)
                                   for k, v in event.attributes.items()):
        raise HTTPException(400, "NUL characters cannot be stored")
    attrs: dict[str, Any] = dict(event.attributes)
    outcome = attrs.get("audit.outcome")
    severity = severity_for(outcome if isinstance(outcome, str) else None)
    if event.severity_number is not None:
        severity = (event.severity_number, severity[1])
    chained = [k for k in _CHAIN_KEYS if k in attrs]
    with store.connection() as conn:
        if chained:
            if len(chained) != len(_CHAIN_KEYS):
                raise HTTPException(400, "give all of " + ", ".join(_CHAIN_KEYS) + " or none of them")
            resource: dict[str, Any] = {"service.name": event.service_name or "custom"}
            if caller.tenant:
                resource["service.namespace"] = caller.tenant
            rec = make_record(event.time_unix_nano or 0, 0, severity[0], severity[1], event.body,
                              event.event_name, event.trace_id, event.span_id, attrs, resource,
                              "secret_audit.custom", __version__)
            if not rec.time_unix_nano:
                raise HTTPException(400, "a pre-chained event needs its time_unix_nano")
            result = store.ingestor.ingest(conn, [rec], caller.tenant)
        else:
            attrs.setdefault("audit.principal", caller.label)
            result = chains.get(caller.tenant).append(
                conn, event_name=event.event_name, attributes=attrs, body=event.body, severity=severity,
                time_unix_nano=event.time_unix_nano, trace_id=event.trace_id, span_id=event.span_id,
            )
    store.counters.add(result.accepted, result.duplicates, result.rejected, 0)
    store.committed(result)
    if result.rejected:
        raise HTTPException(422, "; ".join(result.errors))
    events = result.events()
    return {"accepted": result.accepted, "duplicate": result.duplicates > 0,
            "event": events[0] if events else None,
            "findings": [f.kind for f in result.findings]}


def mount(app: FastAPI, api: Api) -> None:
    """Add the custom-events route to the app."""
    store = api.store
    authorize = api.authorize(INGEST, "post custom audit events")
    chains = _Chains(store)
    if not is_audit_event("audit.custom"):  # pragma: no cover - guards the naming contract
        raise RuntimeError("audit.* must stay an audit event name")

    @app.post("/api/audit-events", tags=["ingest"], status_code=201,
              summary="Append a custom audit event (chained by the store unless chain fields are given)")
    async def post_event(
        request: Request, event: CustomEvent, caller: Annotated[Principal, Depends(authorize)]
    ) -> Response:
        import orjson

        refused = _refusal(event, caller)
        if refused is not None:
            def audit_refusal() -> None:
                with store.connection() as conn:
                    api.audit(conn, caller, request, "POST /api/audit-events", "denied",
                              f"Audit store refused a custom event from {caller.name}: {refused[1]}",
                              {"audit.refused.event_name": event.event_name})
            await run_in_threadpool(audit_refusal)
            raise HTTPException(*refused)
        doc = await run_in_threadpool(_post, store, chains, event, caller)
        return Response(orjson.dumps(doc), status_code=201, media_type="application/json")
