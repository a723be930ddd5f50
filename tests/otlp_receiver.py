"""A real OTLP/HTTP receiver for tests and the demo: decodes protobuf logs and traces into dicts."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def any_value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


class Receiver:
    """Collects what was exported, with every byte of each request kept for leak checks."""

    def __init__(self) -> None:
        self.logs: list[dict[str, Any]] = []
        self.spans: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.status = 200  # set to 503 to simulate an unavailable receiver
        self.url = ""

    def handle(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        with self.lock:
            self.raw.append(body)
            self.headers.append(headers)
            if self.status != 200:
                return self.status, b""
        if path.endswith("/v1/logs"):
            req = ExportLogsServiceRequest.FromString(body)
            out = []
            for rl in req.resource_logs:
                res = {kv.key: any_value(kv.value) for kv in rl.resource.attributes}
                for sl in rl.scope_logs:
                    for lr in sl.log_records:
                        out.append(
                            {
                                "resource": res,
                                "scope": sl.scope.name,
                                "time_unix_nano": lr.time_unix_nano,
                                "severity_number": lr.severity_number,
                                "severity_text": lr.severity_text,
                                "event_name": lr.event_name,
                                "body": any_value(lr.body),
                                "trace_id": lr.trace_id.hex(),
                                "span_id": lr.span_id.hex(),
                                "attributes": {kv.key: any_value(kv.value) for kv in lr.attributes},
                            }
                        )
            with self.lock:
                self.logs.extend(out)
            return 200, ExportLogsServiceResponse().SerializeToString()
        if path.endswith("/v1/traces"):
            req = ExportTraceServiceRequest.FromString(body)
            spans = []
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        spans.append(
                            {
                                "name": sp.name,
                                "trace_id": sp.trace_id.hex(),
                                "span_id": sp.span_id.hex(),
                                "parent_span_id": sp.parent_span_id.hex(),
                                "attributes": {kv.key: any_value(kv.value) for kv in sp.attributes},
                            }
                        )
            with self.lock:
                self.spans.extend(spans)
            return 200, ExportTraceServiceResponse().SerializeToString()
        return 404, b""

    def audit_records(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.logs if r["event_name"] == "secret.access"]


@contextmanager
def otlp_receiver(port: int = 0) -> Iterator[Receiver]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload = receiver.handle(self.path, body, headers)
            self.send_response(status)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def otlp_grpc_receiver() -> Iterator[Receiver]:
    """The same receiver over OTLP/gRPC: LogsService/Export with the request bytes as they are."""
    from concurrent import futures

    import grpc

    receiver = Receiver()

    def export(body: bytes, context: Any) -> bytes:
        metadata = dict(context.invocation_metadata())
        status, payload = receiver.handle("/v1/logs", body, metadata)
        if status != 200:
            context.abort(grpc.StatusCode.UNAVAILABLE, "receiver set to fail")
        return payload

    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.logs.v1.LogsService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    receiver.url = f"http://127.0.0.1:{port}"
    server.start()
    try:
        yield receiver
    finally:
        server.stop(0)
