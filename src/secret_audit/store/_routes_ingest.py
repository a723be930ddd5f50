"""``POST /v1/logs``: OTLP/HTTP logs in, OTLP partial success out."""

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import psycopg
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from google.rpc import status_pb2  # type: ignore[import-untyped]
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from starlette.concurrency import run_in_threadpool

from secret_audit.store._body import BodyError, read_body
from secret_audit.store._ingest import IngestResult
from secret_audit.store._otlp import BadPayload, RecordTuple, decode_json, protobuf_decoder
from secret_audit.store._web import INGEST, Api, json_response
from secret_audit.store.tokens import Principal

__all__ = ["STORE_ONLY", "mount"]

# Event names only the store itself writes (its own audit of reads): refused from any sender.
STORE_ONLY = frozenset({"audit.query"})

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


def mount(app: FastAPI, api: Api) -> None:
    """Add the OTLP logs route."""
    store = api.store
    authorize = api.authorize
    _json = json_response
    decode_protobuf = protobuf_decoder(store.config.native)
    # Decoding and checking hold the GIL: past a few at once, more threads only trade the GIL around.
    limit = store.config.ingest_concurrency
    slots: asyncio.Semaphore | contextlib.nullcontext[None] = (
        asyncio.Semaphore(limit) if limit else contextlib.nullcontext()
    )

    _Decode = Callable[[bytes], Sequence[RecordTuple]]

    def _ingest(body: bytes, decode: _Decode, tenant: str | None) -> IngestResult:
        records = decode(body)  # BadPayload: nothing was stored
        with store.connection() as conn:
            result = store.ingestor.ingest(conn, records, tenant, STORE_ONLY)
        store.counters.add(result.accepted, result.duplicates, result.rejected, result.dropped_non_audit)
        store.committed(result)
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
        except BodyError as exc:
            return _otlp_error(exc.status, exc.message, is_pb)
        store.counters.bump("in_flight")
        started = time.perf_counter()
        try:
            async with slots:
                # decoding and storing a batch take milliseconds: off the event loop, in one hand-off
                result = await run_in_threadpool(_ingest, body, decode_protobuf if is_pb else decode_json,
                                                 principal.tenant)
        except BadPayload as exc:
            return _otlp_error(400, str(exc), is_pb)
        except psycopg.Error as exc:
            store.counters.bump("failed_requests")
            return _otlp_error(503, f"the database refused the batch ({type(exc).__name__}); retry",
                               is_pb, {"Retry-After": "1"})
        finally:
            store.counters.bump("in_flight", -1)
            store.metrics.ingested("/v1/logs", time.perf_counter() - started)
        message = "; ".join(result.errors)
        if result.rejected > len(result.errors):
            message += f" (and {result.rejected - len(result.errors)} more)"
        if result.warnings:  # stored, but not as sent: OTLP lets a partial success carry a warning
            message = "; ".join(filter(None, [message, *result.warnings[:5]]))
        if is_pb:
            resp = ExportLogsServiceResponse()
            if result.rejected or message:
                resp.partial_success.rejected_log_records = result.rejected
                resp.partial_success.error_message = message
            return Response(resp.SerializeToString(), media_type="application/x-protobuf")
        doc: dict[str, Any] = {}
        if result.rejected or message:
            doc["partialSuccess"] = {"rejectedLogRecords": str(result.rejected), "errorMessage": message}
        return _json(doc)


def _otlp_error(status: int, message: str, protobuf: bool, headers: dict[str, str] | None = None) -> Response:
    if protobuf:
        body = status_pb2.Status(code=3 if status < 500 else 14, message=message).SerializeToString()
        return Response(body, status_code=status, media_type="application/x-protobuf", headers=headers)
    return JSONResponse({"code": 3 if status < 500 else 14, "message": message}, status, headers)
