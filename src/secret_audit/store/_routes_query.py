"""The read side: search, live stream, integrity findings and on-demand verification; every call audited."""

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from secret_audit.store._query import BadFilter, Equalities, Filters, integrity_findings, search, since
from secret_audit.store._web import READ, Api, json_response, no_nul
from secret_audit.store.tokens import Principal
from secret_audit.store.verify import verify

__all__ = ["mount"]

_Text = Annotated[str | None, Query(max_length=1024)]
_Equalities = Annotated[Equalities, Query()]  # the filters' fields as query parameters, in their order


def _checked(equal: Equalities, start: dt.datetime | None = None, end: dt.datetime | None = None) -> Filters:
    """The query's filters, 400 for a NUL character (no row can hold one)."""
    values = equal.model_dump()
    for name, value in values.items():
        no_nul(name, value)
    return Filters(**values, start=start, end=end)


def _frame(event: dict[str, Any]) -> bytes:
    """One server-sent event, its id the row's id (which a reconnecting client sends back)."""
    return b"id: " + str(event["id"]).encode() + b"\nevent: audit\ndata: " + orjson.dumps(event) + b"\n\n"


def mount(app: FastAPI, api: Api) -> None:
    """Add the query, stream, findings and verify routes."""
    store = api.store
    authorize = api.authorize

    @app.get("/api/audit-logs", tags=["query"], summary="Search audit records (cursor pagination)")
    def audit_logs(
        request: Request,
        caller: Annotated[Principal, Depends(authorize(READ, "query the audit log"))],
        equal: _Equalities,
        start: dt.datetime | None = None, end: dt.datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
        order: Literal["asc", "desc"] = "desc",
    ) -> Response:
        filters = _checked(equal, start, end)
        with store.connection() as conn:
            try:
                page = search(conn, filters, caller.tenant, limit=limit, cursor=no_nul("cursor", cursor),
                              order=order)
            except BadFilter as exc:
                raise HTTPException(400, str(exc)) from None
            found = len(page.events)
            api.audit(conn, caller, request, "GET /api/audit-logs", "success",
                      f"Audit log queried by {caller.name}: {found} events",
                      {"audit.query.filters": filters.describe(), "audit.query.result_count": found})
        return json_response({"events": page.events, "next_cursor": page.next_cursor})

    @app.get("/api/audit-logs/stream", tags=["query"], summary="Live audit records as server-sent events")
    async def audit_stream(
        request: Request,
        caller: Annotated[Principal, Depends(authorize(READ, "stream the audit log"))],
        equal: _Equalities,
        max_events: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
        after: Annotated[int | None, Query(ge=0, description="replay rows after this id first")] = None,
    ) -> StreamingResponse:
        filters = _checked(equal)
        resume = after
        last_id = request.headers.get("last-event-id")
        if resume is None and last_id is not None:
            if not last_id.isdigit() or len(last_id) > 19:
                raise HTTPException(400, "Last-Event-ID must be an event id this stream sent")
            resume = int(last_id)
        sub = store.hub.subscribe(filters, caller.tenant)

        def audit_open() -> list[dict[str, Any]]:
            with store.connection() as conn:
                missed = [] if resume is None else since(conn, filters, caller.tenant, resume)
                api.audit(conn, caller, request, "GET /api/audit-logs/stream", "success",
                          f"Live audit stream opened by {caller.name}",
                          {"audit.query.filters": filters.describe(), "audit.query.replayed": len(missed)})
            return missed

        try:
            backlog = await run_in_threadpool(audit_open)
        except BaseException:
            store.hub.unsubscribe(sub)
            raise

        async def events() -> AsyncIterator[bytes]:
            sent = 0
            replayed = 0
            try:
                yield b": connected\n\n"
                for old in backlog:
                    if max_events is not None and sent >= max_events:
                        return
                    replayed = max(replayed, int(old["id"]))
                    sent += 1
                    yield _frame(old)
                while max_events is None or sent < max_events:
                    try:
                        event = await asyncio.wait_for(sub.queue.get(), 15)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield b": keep-alive\n\n"
                        continue
                    if event is None:
                        yield b"event: overflow\ndata: {\"error\": \"client too slow; reconnect\"}\n\n"
                        return
                    if int(event["id"]) <= replayed:
                        continue  # already sent from the backlog
                    sent += 1
                    yield _frame(event)
            finally:
                store.hub.unsubscribe(sub)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/api/integrity-findings", tags=["integrity"], summary="Integrity findings recorded on ingest")
    def findings(
        request: Request,
        caller: Annotated[Principal, Depends(authorize(READ, "read integrity findings"))],
        stream_id: _Text = None,
        kind: _Text = None,
        still_open: Annotated[bool | None, Query(
            alias="open",
            description="true: only findings that are still a problem (a gap counts until every missing "
                        "sequence has arrived; gap_filled never does); false: only the others")] = None,
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Response:
        with store.connection() as conn:
            items = integrity_findings(conn, caller.tenant, stream_id=no_nul("stream_id", stream_id),
                                       kind=no_nul("kind", kind), still_open=still_open, after=after,
                                       limit=limit)
            api.audit(conn, caller, request, "GET /api/integrity-findings", "success",
                      f"Integrity findings read by {caller.name}: {len(items)}")
        next_after = items[-1]["id"] if len(items) == limit else None
        return json_response({"findings": items, "next_after": next_after})

    @app.post("/api/verify", tags=["integrity"], summary="Re-verify stored chains (whole store or a window)")
    def verify_now(
        request: Request,
        caller: Annotated[Principal, Depends(authorize(READ, "verify the audit log"))],
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
    ) -> Response:
        with store.connection() as conn:
            report = verify(conn, start=start, end=end, tenant=caller.tenant)
            store.alerts.verified(report, caller.tenant)
            breaks = report.total_breaks
            api.audit(conn, caller, request, "POST /api/verify", "success",
                      f"Audit log verified by {caller.name}: {breaks} breaks in {report.rows} rows",
                      {"audit.verify.rows": report.rows, "audit.verify.breaks": breaks})
        return json_response(report.as_dict())
