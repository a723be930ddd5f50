"""The HTTP service: OTLP/HTTP ingest, the query API, live stream, stats and health, behind bearer tokens."""


import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import orjson
import psycopg
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from google.rpc import status_pb2  # type: ignore[import-untyped]
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from psycopg import sql
from starlette.concurrency import run_in_threadpool

from secret_audit.store import _events
from secret_audit.store._body import BodyError, read_body
from secret_audit.store._ingest import IngestResult
from secret_audit.store._limit import BodyLimit
from secret_audit.store._otlp import BadPayload, Record, decode_json, decode_protobuf
from secret_audit.store._query import BadFilter, Filters, and_all, search, since
from secret_audit.store.service import Store
from secret_audit.store.tokens import Principal, authenticate
from secret_audit.store.verify import verify
from secret_audit.version import __version__

__all__ = ["create_app"]

INGEST = ("ingest", "admin")
READ = ("auditor", "admin")
_PROTOBUF = ("application/x-protobuf", "application/protobuf")
_JSON = "application/json"

_OTLP_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type=_JSON, headers=headers)


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def _text(name: str, value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise HTTPException(400, f"{name} must not contain NUL characters")
    return value


def create_app(store: Store, *, manage_store: bool = True) -> FastAPI:
    """Build the ASGI app around a Store; with manage_store it opens and closes the store itself."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_store and store.pool is None:
            await run_in_threadpool(store.open)
        try:
            yield
        finally:
            if manage_store:
                await run_in_threadpool(store.close)

    app = FastAPI(
        title="secret-audit store",
        version=__version__,
        description="Append-only, verifiable store of secret-access audit records (OTLP/HTTP logs in).",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    bearer = HTTPBearer(auto_error=False, description="A token made by `secret-audit tokens create`.")
    app.add_middleware(BodyLimit, limit=store.config.max_body_bytes)

    @app.exception_handler(psycopg.OperationalError)
    async def database_unavailable(request: Request, exc: psycopg.OperationalError) -> Response:
        # The database is down or the pool is exhausted: a retryable condition, never a bare 500.
        store.counters.bump("failed_requests")
        return _json({"detail": f"database unavailable ({type(exc).__name__}); retry"}, 503,
                     {"Retry-After": "1"})

    def authorize(roles: tuple[str, ...], action: str) -> Callable[..., Principal]:
        def dependency(
            request: Request,
            creds: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
        ) -> Principal:
            if creds is None:
                store.counters.bump("unauthorized")
                raise HTTPException(401, "a bearer token is required",
                                    headers={"WWW-Authenticate": "Bearer"})
            with store.connection() as conn:
                principal = authenticate(conn, creds.credentials)
                allowed = principal is not None and principal.role in roles
                if principal is not None and not allowed:
                    _audit(conn, principal, request, action, "denied",
                           f"Audit store refused {action} to {principal.name} (role {principal.role})")
            if principal is None:
                store.counters.bump("unauthorized")
                raise HTTPException(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
            if not allowed:
                raise HTTPException(403, f"role {principal.role!r} may not {action}")
            return principal

        return dependency

    def _audit(
        conn: psycopg.Connection[Any],
        principal: Principal,
        request: Request,
        action: str,
        outcome: str,
        body: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        extra = dict(extra or {})
        if principal.tenant:
            extra["audit.tenant"] = principal.tenant
        result = store.self_audit.record(
            conn,
            event_name="audit.query",
            action=action,
            outcome=outcome,
            principal=principal.label,
            client_address=_client(request),
            body=body,
            extra=extra,
        )
        store.hub.publish(result.events)

    # ---- ingest ------------------------------------------------------------------------------

    def _ingest(records: list[Record], tenant: str | None) -> IngestResult:
        with store.connection() as conn:
            result = store.ingestor.ingest(conn, records, tenant)
        store.counters.add(result.accepted, result.duplicates, result.rejected, result.dropped_non_audit)
        store.hub.publish(result.events)
        return result

    @app.post("/v1/logs", openapi_extra=_OTLP_BODY, tags=["ingest"],
              summary="OTLP/HTTP logs export (protobuf or JSON, optionally gzip)")
    async def otlp_logs(
        request: Request, principal: Annotated[Principal, Depends(authorize(INGEST, "ingest audit records"))]
    ) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        is_pb = ctype in _PROTOBUF
        if not is_pb and ctype != _JSON:
            return _otlp_error(415, "content-type must be application/x-protobuf or application/json", False)
        try:
            body = await read_body(request, store.config.max_body_bytes)
            records = decode_protobuf(body) if is_pb else decode_json(body)
        except BodyError as exc:
            return _otlp_error(exc.status, exc.message, is_pb)
        except BadPayload as exc:
            return _otlp_error(400, str(exc), is_pb)
        store.counters.bump("in_flight")
        try:
            result = await run_in_threadpool(_ingest, records, principal.tenant)
        except psycopg.Error as exc:
            store.counters.bump("failed_requests")
            return _otlp_error(503, f"the database refused the batch ({type(exc).__name__}); retry",
                               is_pb, {"Retry-After": "1"})
        finally:
            store.counters.bump("in_flight", -1)
        message = "; ".join(result.errors)
        if result.rejected > len(result.errors):
            message += f" (and {result.rejected - len(result.errors)} more)"
        if is_pb:
            resp = ExportLogsServiceResponse()
            if result.rejected or message:
                resp.partial_success.rejected_log_records = result.rejected
                resp.partial_success.error_message = message
            return Response(resp.SerializeToString(), media_type="application/x-protobuf")
        doc: dict[str, Any] = {}
        if result.rejected:
            doc["partialSuccess"] = {"rejectedLogRecords": str(result.rejected), "errorMessage": message}
        return _json(doc)

    _events.mount(app, store, authorize(INGEST, "post custom audit events"))

    # ---- query -------------------------------------------------------------------------------

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
        query = sql.SQL(
            "SELECT id, found_at, tenant, stream_id, kind, sequence, detail, expected, actual "
            "FROM audit_findings WHERE {} ORDER BY id LIMIT %s"
        ).format(and_all(conds))
        with store.connection() as conn:
            rows = conn.execute(query, [*params, limit]).fetchall()
            _audit(conn, caller, request, "GET /api/integrity-findings", "success",
                   f"Integrity findings read by {caller.name}: {len(rows)}")
        keys = ("id", "found_at", "tenant", "stream_id", "kind", "sequence", "detail", "expected", "actual")
        items = [dict(zip(keys, r, strict=True)) for r in rows]
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
            _audit(conn, caller, request, "POST /api/verify", "success",
                   f"Audit log verified by {caller.name}: {report.total_breaks} breaks in {report.rows} rows",
                   {"audit.verify.rows": report.rows, "audit.verify.breaks": report.total_breaks})
        return _json(report.as_dict())

    # ---- operations --------------------------------------------------------------------------

    @app.get("/stats", tags=["operations"], summary="Ingest rate, queue depth, findings, stream heads")
    def stats(caller: Annotated[Principal, Depends(authorize(READ, "read store statistics"))]) -> Response:
        scope = sql.SQL("WHERE tenant = %s" if caller.tenant else "")
        params = [caller.tenant] if caller.tenant else []
        with store.connection() as conn:
            kinds = conn.execute(
                sql.SQL("SELECT kind, count(*) FROM audit_findings {} GROUP BY kind").format(scope), params
            ).fetchall()
            streams = conn.execute(
                sql.SQL(
                    "SELECT stream_id, tenant, service_name, last_sequence, record_count, findings, "
                    "last_seen FROM audit_streams {} ORDER BY last_seen DESC LIMIT 1000"
                ).format(scope),
                params,
            ).fetchall()
        out = store.counters.snapshot()
        pool = store.pool.get_stats() if store.pool is not None else {}
        out["queue_depth"] += int(pool.get("requests_waiting", 0))
        out["live_streams"] = store.hub.active
        out["integrity_findings"] = {str(k): int(n) for k, n in kinds}
        out["streams"] = [
            {
                "stream_id": s[0], "tenant": s[1], "service_name": s[2], "last_sequence": s[3],
                "records": s[4], "missing": max(0, int(s[3]) - int(s[4])), "findings": s[5],
                "last_seen": s[6],
            }
            for s in streams
        ]
        return _json(out)

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process answers")
    def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz", tags=["operations"], summary="Readiness: the database answers")
    def readyz() -> Response:
        try:
            with store.connection() as conn:
                conn.execute("SELECT 1")
        except Exception as exc:
            return _json({"status": "unavailable", "reason": type(exc).__name__}, 503)
        return _json({"status": "ready"})

    return app


def _otlp_error(status: int, message: str, protobuf: bool, headers: dict[str, str] | None = None) -> Response:
    if protobuf:
        body = status_pb2.Status(code=3 if status < 500 else 14, message=message).SerializeToString()
        return Response(body, status_code=status, media_type="application/x-protobuf", headers=headers)
    return JSONResponse({"code": 3 if status < 500 else 14, "message": message}, status, headers)
