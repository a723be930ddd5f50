"""The read side: search, live stream, integrity findings and on-demand verification; every call audited."""

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse
from psycopg import sql
from starlette.concurrency import run_in_threadpool

from secret_audit.store._gaps import open_gaps
from secret_audit.store._query import BadFilter, Filters, and_all, search, since
from secret_audit.store._web import READ, Api, json_response, no_nul
from secret_audit.store.tokens import Principal
from secret_audit.store.verify import verify

__all__ = ["mount"]


def mount(app: FastAPI, api: Api) -> None:
    """Add the query, stream, findings and verify routes."""
    store = api.store
    authorize = api.authorize
    _audit = api.audit
    _json = json_response
    _text = no_nul

    def _filters(
        secret: str | None, source: str | None, operation: str | None, outcome: str | None,
        principal: str | None, enduser: str | None, client_address: str | None, trace_id: str | None,
        event_name: str | None, stream_id: str | None, tenant: str | None,
        start: dt.datetime | None, end: dt.datetime | None,
    ) -> Filters:
        values = {
            "secret": secret, "source": source, "operation": operation, "outcome": outcome,
            "principal": principal, "enduser": enduser, "client_address": client_address,
            "trace_id": trace_id, "event_name": event_name, "stream_id": stream_id, "tenant": tenant,
        }
        for name, value in values.items():
            _text(name, value)
        return Filters(**values, start=start, end=end)

    F = Annotated[str | None, Query(max_length=1024)]

    @app.get("/api/audit-logs", tags=["query"], summary="Search audit records (cursor pagination)")
    def audit_logs(
        request: Request,
        caller: Annotated[Principal, Depends(authorize(READ, "query the audit log"))],
        secret: F = None, source: F = None, operation: F = None, outcome: F = None,
        principal: F = None, enduser: F = None, client_address: F = None, trace_id: F = None,
        event_name: F = None, stream_id: F = None, tenant: F = None,
        start: dt.datetime | None = None, end: dt.datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
        order: Literal["asc", "desc"] = "desc",
    ) -> Response:
        filters = _filters(secret, source, operation, outcome, principal, enduser, client_address,
                           trace_id, event_name, stream_id, tenant, start, end)
        with store.connection() as conn:
            try:
                page = search(conn, filters, caller.tenant, limit=limit, cursor=_text("cursor", cursor),
                              order=order)
            except BadFilter as exc:
                raise HTTPException(400, str(exc)) from None
            _audit(conn, caller, request, "GET /api/audit-logs", "success",
                   f"Audit log queried by {caller.name}: {len(page.events)} events",
                   {"audit.query.filters": filters.describe(), "audit.query.result_count": len(page.events)})
        return _json({"events": page.events, "next_cursor": page.next_cursor})

    @app.get("/api/audit-logs/stream", tags=["query"], summary="Live audit records as server-sent events")
    async def audit_stream(
        request: Request,
        caller: Annotated[Principal, Depends(authorize(READ, "stream the audit log"))],
        secret: F = None, source: F = None, operation: F = None, outcome: F = None,
        principal: F = None, enduser: F = None, client_address: F = None, trace_id: F = None,
        event_name: F = None, stream_id: F = None, tenant: F = None,
        max_events: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
        after: Annotated[int | None, Query(ge=0, description="replay rows after this id first")] = None,
    ) -> StreamingResponse:
        filters = _filters(secret, source, operation, outcome, principal, enduser, client_address,
                           trace_id, event_name, stream_id, tenant, None, None)
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
                _audit(conn, caller, request, "GET /api/audit-logs/stream", "success",
                       f"Live audit stream opened by {caller.name}",
                       {"audit.query.filters": filters.describe(), "audit.query.replayed": len(missed)})
            return missed

        try:
            backlog = await run_in_threadpool(audit_open)
        except BaseException:
            store.hub.unsubscribe(sub)
            raise

        def frame(event: dict[str, Any]) -> bytes:
            head = b"id: " + str(event["id"]).encode() + b"\nevent: audit\ndata: "
            return head + orjson.dumps(event) + b"\n\n"

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
                    yield frame(old)
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
                    yield frame(event)
            finally:
                store.hub.unsubscribe(sub)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/api/integrity-findings", tags=["integrity"], summary="Integrity findings recorded on ingest")
    def findings(
        request: Request,
        caller: Annotated[Principal, Depends(authorize(READ, "read integrity findings"))],
        stream_id: F = None,
        kind: F = None,
        still_open: Annotated[bool | None, Query(
            alias="open",
            description="true: only findings that are still a problem (a gap counts until every missing "
                        "sequence has arrived; gap_filled never does); false: only the others")] = None,
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Response:
        conds: list[sql.Composable] = [sql.SQL("id > %s")]
        params: list[Any] = [after]
        for col, value in (("stream_id", _text("stream_id", stream_id)), ("kind", _text("kind", kind)),
                           ("tenant", caller.tenant)):
            if value is not None:
                conds.append(sql.SQL("{} = %s").format(sql.Identifier(col)))
                params.append(value)
        if still_open is not None:
            closed = sql.SQL(
                "(kind = 'gap_filled' OR id IN (SELECT id FROM audit_gaps WHERE filled >= size))"
            )
            conds.append(sql.SQL("NOT {}").format(closed) if still_open else closed)
        query = sql.SQL(
            "SELECT id, found_at, tenant, stream_id, kind, sequence, detail, expected, actual, "
            "range_first, range_last FROM audit_findings WHERE {} ORDER BY id LIMIT %s"
        ).format(and_all(conds))
        with store.connection() as conn:
            rows = conn.execute(query, [*params, limit]).fetchall()
            gap_ids = [r[0] for r in rows if r[4] == "gap"]
            still = ({g.finding_id: g.ranges for g in open_gaps(conn, caller.tenant, ids=gap_ids)}
                     if gap_ids else {})
            _audit(conn, caller, request, "GET /api/integrity-findings", "success",
                   f"Integrity findings read by {caller.name}: {len(rows)}")
        keys = ("id", "found_at", "tenant", "stream_id", "kind", "sequence", "detail", "expected", "actual",
                "range_first", "range_last")
        items = []
        for r in rows:
            item = dict(zip(keys, r, strict=True))
            if item["kind"] == "gap":
                ranges = still.get(item["id"], [])
                item["open"] = bool(ranges)
                item["open_ranges"] = [list(x) for x in ranges]
            else:
                item["open"] = item["kind"] != "gap_filled"
                item["open_ranges"] = None
            items.append(item)
        return _json({"findings": items, "next_after": items[-1]["id"] if len(items) == limit else None})

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
            _audit(conn, caller, request, "POST /api/verify", "success",
                   f"Audit log verified by {caller.name}: {report.total_breaks} breaks in {report.rows} rows",
                   {"audit.verify.rows": report.rows, "audit.verify.breaks": report.total_breaks})
        return _json(report.as_dict())
