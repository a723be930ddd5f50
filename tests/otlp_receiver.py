"""A real OTLP/HTTP receiver for tests and the demo: decodes protobuf logs, traces and metrics into dicts."""

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
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
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
        self.metrics: list[dict[str, Any]] = []  # one entry per metric per request, as exported
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
                                "flags": lr.flags,
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
                                "flags": sp.flags,
                                "status": (sp.status.code, sp.status.message),
                                "resource": {kv.key: any_value(kv.value) for kv in rs.resource.attributes},
                                "attributes": {kv.key: any_value(kv.value) for kv in sp.attributes},
                            }
                        )
            with self.lock:
                self.spans.extend(spans)
            return 200, ExportTraceServiceResponse().SerializeToString()
        if path.endswith("/v1/metrics"):
            metrics = _metrics(ExportMetricsServiceRequest.FromString(body))
            with self.lock:
                self.metrics.extend(metrics)
            return 200, ExportMetricsServiceResponse().SerializeToString()
        return 404, b""

    def latest(self, name: str) -> dict[str, Any] | None:
        """The last export of one metric: its kind, unit, scope and data points (attributes, value)."""
        with self.lock:
            found = [m for m in self.metrics if m["name"] == name]
        return found[-1] if found else None

    def audit_records(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.logs if r["event_name"] == "secret.access"]


def _metrics(req: ExportMetricsServiceRequest) -> list[dict[str, Any]]:
    """Each metric of a request as a dict; a point's value is a number, or a histogram's count and sum."""
    out = []
    for rm in req.resource_metrics:
        res = {kv.key: any_value(kv.value) for kv in rm.resource.attributes}
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                points = []
                for p in getattr(m, kind).data_points:
                    point: dict[str, Any] = {"attributes": {kv.key: any_value(kv.value) for kv in p.attributes}}
                    if kind in ("histogram", "exponential_histogram"):
                        point.update(count=p.count, sum=p.sum)
                        if kind == "histogram":
                            point.update(bounds=list(p.explicit_bounds), buckets=list(p.bucket_counts))
                    else:
                        point["value"] = getattr(p, p.WhichOneof("value"))
                    points.append(point)
                out.append({"name": m.name, "unit": m.unit, "kind": kind, "scope": sm.scope.name,
                            "resource": res, "points": points,
                            "monotonic": getattr(getattr(m, kind), "is_monotonic", None)})
    return out


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

    with serve_http(Handler, port) as url:
        receiver.url = url
        yield receiver


@contextmanager
def serve_http(handler: type[BaseHTTPRequestHandler], port: int = 0) -> Iterator[str]:
    """A threaded loopback HTTP server for the block; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def otlp_grpc_receiver() -> Iterator[Receiver]:
    """The same receiver over OTLP/gRPC: LogsService/Export and TraceService/Export, the request bytes as they are."""
    from concurrent import futures

    import grpc

    receiver = Receiver()

    def exporter(path: str) -> Any:
        def export(body: bytes, context: Any) -> bytes:
            metadata = dict(context.invocation_metadata())
            status, payload = receiver.handle(path, body, metadata)
            if status != 200:
                context.abort(grpc.StatusCode.UNAVAILABLE, "receiver set to fail")
            return payload

        return grpc.unary_unary_rpc_method_handler(export)

    handlers = [
        grpc.method_handlers_generic_handler(f"opentelemetry.proto.collector.{service}", {"Export": exporter(path)})
        for service, path in (("logs.v1.LogsService", "/v1/logs"), ("trace.v1.TraceService", "/v1/traces"))
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    receiver.url = f"http://127.0.0.1:{port}"
    server.start()
    try:
        yield receiver
    finally:
        server.stop(0)
