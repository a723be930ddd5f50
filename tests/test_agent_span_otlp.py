"""The agent's audit spans by our own encoder are the SDK's spans, byte for byte and field by field."""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otlp_receiver import serve_http
from secret_audit._internal import agent_spans
from secret_audit._internal.agent_span_otlp import SpanShipper, encode_span, native_traces, traces_protocol
from secret_audit._internal.builder import RecordBuilder
from secret_audit._internal.config import load_settings
from secret_audit._internal.otlp import encode_request
from secret_audit._internal.senders import build_sender
from secret_audit._internal.shapes import SCOPE
from secret_audit.version import __version__

RESOURCE = {"service.name": "span-test", "service.instance.id": "i-1", "process.pid": 42,
            "process.command_args": ["python", "app.py"]}


def _record(name: str = "secret:a", outcome: str = "success", **extra: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {"secret.name": name, "secret.source": "redis", "secret.resource": "redis://h:1/0",
                             "audit.operation": "read", "audit.action": "GET", "audit.outcome": outcome}
    attrs.update(extra)
    attrs["audit.access_path"] = "direct"
    attrs["audit.duration_ms"] = 0.25
    return attrs


def sdk_request(resource: dict[str, Any], ids: tuple[int, int, int, int], records: list[dict[str, Any]],
                start: int, end: int) -> bytes:
    """The span as the agent's SDK path makes it (``SpanMaker`` and ``RecordBuilder.span_ids``), encoded by the SDK."""
    chosen = agent_spans._chosen()
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource(resource), id_generator=chosen)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    maker = SimpleNamespace(ids=chosen)
    context = agent_spans.SpanMaker.context(maker, *ids)  # type: ignore[arg-type]
    RecordBuilder(load_settings({}), provider).span_ids(context, records, start, end)
    spans = exporter.get_finished_spans()
    return encode_spans(spans).SerializeToString() if spans else b""


def our_request(resource: dict[str, Any], ids: tuple[int, int, int, int], records: list[dict[str, Any]],
                start: int, end: int) -> bytes:
    trace_id, span_id, flags, parent = ids
    if not flags & 1:
        return b""
    return encode_request(resource, SCOPE, __version__, [encode_span(trace_id, span_id, parent, start, end, records)])


def fields(raw: bytes) -> list[dict[str, Any]]:
    """Every field the SDK's parser finds, span by span, with its resource and scope."""
    out = []
    for rs in ExportTraceServiceRequest.FromString(raw).resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                out.append({"resource": str(rs.resource), "resource_schema": rs.schema_url, "scope": str(ss.scope),
                            "span": {f.name: str(v) for f, v in sp.ListFields()},
                            "has_status": sp.HasField("status"), "status": (sp.status.code, sp.status.message)})
    return out


def test_an_access_span_is_the_sdks_field_by_field_and_byte_for_byte():
    parent = 0x1234
    cases = [
        ([_record()], (0xABC, 0x77, 1, parent)),
        ([_record(outcome="error", **{"error.type": "ConnectionError", "audit.error": "refused"})], (5, 6, 1, parent)),
        ([_record(outcome="denied", **{"error.type": "NoPermissionError"})], (5, 6, 1, 0)),
        ([_record("secret:a"), _record("secret:b", outcome="not_found")], (9, 10, 1, parent)),
        ([_record("secret:a"), {**_record("secret:b"), "audit.operation": "write"}], (9, 10, 1, parent)),
        ([_record()], (11, 12, 0, parent)),  # the parent not sampled: no span either way
    ]
    for records, ids in cases:
        sdk = sdk_request(RESOURCE, ids, records, 1_000_000_000, 1_000_250_000)
        ours = our_request(RESOURCE, ids, records, 1_000_000_000, 1_000_250_000)
        assert fields(ours) == fields(sdk)
        assert ours == sdk
    assert fields(our_request(RESOURCE, (5, 6, 1, parent), cases[1][0], 1, 2))[0]["status"] == (2, "ConnectionError")


_text = st.text(max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    names=st.lists(_text, min_size=1, max_size=3),
    outcome=st.sampled_from(["success", "not_found", "denied", "error"]),
    error=st.one_of(st.none(), _text),
    principal=st.one_of(st.none(), _text),
    count=st.integers(min_value=2, max_value=2**40),
    duration=st.floats(allow_nan=False),
    trace_id=st.integers(min_value=1, max_value=2**128 - 1),
    span_id=st.integers(min_value=1, max_value=2**64 - 1),
    parent=st.one_of(st.just(0), st.integers(min_value=1, max_value=2**64 - 1)),
    start=st.integers(min_value=1, max_value=2**63),
    took=st.integers(min_value=0, max_value=2**40),
    service=_text,
)
def test_any_access_span_is_the_sdks(names, outcome, error, principal, count, duration, trace_id, span_id, parent,
                                      start, took, service):
    records = []
    for name in names:
        extra: dict[str, Any] = {"audit.count": count}
        if error is not None:
            extra["error.type"] = error
        if principal:
            extra["audit.principal"] = principal
        record = _record(name, outcome, **extra)
        record["audit.duration_ms"] = duration
        records.append(record)
    resource = {**RESOURCE, "service.name": service}
    ids = (trace_id, span_id, 1, parent)
    sdk = sdk_request(resource, ids, records, start, start + took)
    ours = our_request(resource, ids, records, start, start + took)
    assert fields(ours) == fields(sdk)
    assert ours == sdk


def test_plain_otlp_over_http_protobuf_or_grpc_is_ours():
    http = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    assert traces_protocol(http) == "http/protobuf"
    assert traces_protocol({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
                            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == "http/protobuf"
    assert traces_protocol({**http, "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip"}) == "http/protobuf"
    assert traces_protocol({"OTEL_TRACES_EXPORTER": "otlp_proto_http"}) == "http/protobuf"
    # gRPC, the SDK's default protocol (and so the distro's), by our encoder over a grpcio channel
    assert traces_protocol({"OTEL_TRACES_EXPORTER": "otlp"}) == "grpc"
    assert traces_protocol({**http, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}) == "grpc"
    assert traces_protocol({"OTEL_TRACES_EXPORTER": "otlp_proto_grpc", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}) == "grpc"
    grpc = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert traces_protocol({**grpc, "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_EXPORTER_OTLP_HEADERS": "a=b"}) == "grpc"
    assert traces_protocol({**http, "OTEL_EXPORTER_OTLP_CERTIFICATE": "/ca.pem"}) == "http/protobuf"  # HTTP: ours
    for other in ({**http, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
                  {**http, "OTEL_TRACES_EXPORTER": "otlp,console"},
                  {**http, "OTEL_TRACES_EXPORTER": "console"},
                  {**http, "OTEL_TRACES_EXPORTER": "none"},
                  {**http, "OTEL_EXPORTER_OTLP_COMPRESSION": "deflate"},
                  {**http, "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT": "8"},
                  {**http, "OTEL_SDK_DISABLED": "true"},
                  # a CA, client certificate or credential provider for gRPC: the SDK's exporter honours them
                  {**grpc, "OTEL_EXPORTER_OTLP_CERTIFICATE": "/ca.pem"},
                  {**grpc, "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY": "/key.pem"},
                  {**grpc, "OTEL_PYTHON_EXPORTER_OTLP_GRPC_CREDENTIAL_PROVIDER": "mine"}):
        assert not native_traces(other), other
        assert traces_protocol(other) is None, other


def test_the_grpc_traces_sender_reads_the_sdks_grpc_variables():
    """Endpoint and TLS as the SDK's OTLP/gRPC span exporter reads them, the TraceService's method."""
    cases = [
        ({}, "http://localhost:4317", True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4317"}, "https://c:4317", False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4317"}, "c:4317", False),  # no scheme, no word: TLS, as the SDK
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4317", "OTEL_EXPORTER_OTLP_INSECURE": "true"}, "c:4317", True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1",
          "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "false"}, "http://t:1", False),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://t:1", "OTEL_EXPORTER_OTLP_INSECURE": "true"}, "https://t:1",
         False),  # https is TLS whatever is said
    ]
    for env, endpoint, insecure in cases:
        sender = build_sender("grpc", None, None, env, signal="traces")
        try:
            assert (sender.endpoint, sender.insecure) == (endpoint, insecure), env
            assert sender.method == "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        finally:
            sender.close()


def test_spans_over_grpc_reach_the_trace_service_as_the_http_path_sends_them():
    from otlp_receiver import otlp_grpc_receiver

    with otlp_grpc_receiver() as rx:
        env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": rx.url, "OTEL_EXPORTER_OTLP_HEADERS": "Tenant=t1",
               "OTEL_BSP_SCHEDULE_DELAY": "20"}
        shipper = SpanShipper(build_sender("grpc", None, None, env, signal="traces"), env)
        spans = [encode_span(1, i, 0, 1, 2, [_record(f"secret:{i}")]) for i in range(1, 4)]
        for span in spans:
            shipper.add("r", {"service.name": "g"}, span)
        assert shipper.flush(10)
        shipper.sender.close()
    assert shipper.dropped == 0
    assert sorted(s["attributes"]["secret.name"] for s in rx.spans) == ["secret:1", "secret:2", "secret:3"]
    assert {s["resource"]["service.name"] for s in rx.spans} == {"g"}
    assert rx.headers[0]["tenant"] == "t1"


def test_the_traces_sender_reads_the_sdks_traces_variables():
    sender = build_sender("http/protobuf", None, None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"},
                          signal="traces")
    assert sender.endpoint == "http://c:4318/v1/traces"
    sender = build_sender("http/protobuf", None, None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                                                        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/x",
                                                        "OTEL_EXPORTER_OTLP_HEADERS": "a=1",
                                                        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "b=2"}, signal="traces")
    assert sender.endpoint == "http://t:1/x"
    assert sender._headers["b"] == "2"
    assert "a" not in sender._headers


class _Slow:
    """A traces endpoint that answers after ``pause`` seconds, keeping what it got."""

    def __init__(self, status: int = 200, pause: float = 0.0) -> None:
        self.bodies: list[bytes] = []
        self.status, self.pause = status, pause

    def handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(outer.pause)
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def test_spans_go_in_batches_grouped_by_resource_and_a_full_queue_drops_counted_and_said_once(capsys):
    sink = _Slow(pause=0.3)
    with serve_http(sink.handler()) as url:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": url, "OTEL_BSP_MAX_QUEUE_SIZE": "4", "OTEL_BSP_SCHEDULE_DELAY": "50",
               "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4"}
        shipper = SpanShipper(build_sender("http/protobuf", None, None, env, signal="traces"), env)
        spans = [encode_span(1, i, 0, 1, 2, [_record()]) for i in range(1, 13)]
        resources = [{"service.name": "a"}, {"service.name": "b"}]
        for i, span in enumerate(spans[:4]):
            shipper.add(json.dumps(resources[i % 2]), resources[i % 2], span)
        time.sleep(0.15)  # the first batch is in flight (0.3 s): four more fill the queue, four are dropped
        for i, span in enumerate(spans[4:]):
            shipper.add(json.dumps(resources[i % 2]), resources[i % 2], span)
        assert shipper.flush(10)
    got = [ExportTraceServiceRequest.FromString(body) for body in sink.bodies]
    assert shipper.dropped == 4
    assert sum(len(ss.spans) for req in got for rs in req.resource_spans for ss in rs.scope_spans) == 8
    assert [len(req.resource_spans) for req in got] == [2, 2]  # one ResourceSpans per resource
    err = capsys.readouterr().err
    assert err.count("otel-secret-audit:") == 1
    assert "OTEL_BSP_MAX_QUEUE_SIZE=4" in err


def test_a_refusing_endpoint_drops_the_batch_counted_and_records_are_not_concerned(capsys):
    sink = _Slow(status=400)
    with serve_http(sink.handler()) as url:
        env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": url + "/v1/traces", "OTEL_BSP_SCHEDULE_DELAY": "20"}
        shipper = SpanShipper(build_sender("http/protobuf", None, None, env, signal="traces"), env)
        for i in range(1, 4):
            shipper.add("r", {}, encode_span(1, i, 0, 1, 2, [_record()]))
        assert shipper.flush(10)
        for _ in range(50):  # the dropped batch is counted after its answer
            if shipper.dropped:
                break
            time.sleep(0.02)
    assert shipper.dropped == 3
    err = capsys.readouterr().err
    assert "did not take them (refused with HTTP 400)" in err
    assert "audit records are not affected" in err


@settings(max_examples=150, deadline=None)
@given(
    name=_text, outcome=st.sampled_from(["success", "not_found", "denied", "error"]),
    error=st.one_of(st.none(), _text), count=st.one_of(st.none(), st.integers(2, 2**40)),
    trace_id=st.integers(min_value=1, max_value=2**128 - 1), span_id=st.integers(min_value=1, max_value=2**64 - 1),
    parent=st.one_of(st.just(0), st.integers(min_value=1, max_value=2**64 - 1)),
    start=st.integers(min_value=1, max_value=2**62), took=st.integers(min_value=0, max_value=2**40),
)
def test_a_lone_records_span_from_its_shapes_pieces_is_encode_span(name, outcome, error, count, trace_id, span_id,
                                                                     parent, start, took):
    """The agent's common span (one record) is written from pieces kept per shape: the same bytes, first
    made or kept."""
    from secret_audit._internal.agent_span_otlp import encode_lone_span
    from secret_audit._internal.otlp import encode_attributes

    attrs = _record(name, outcome, **({"error.type": error} if error is not None else {}),
                    **({"audit.count": count} if count else {}))
    del attrs["audit.duration_ms"]
    records = [{**attrs, "audit.duration_ms": took / 1e6}]
    expected = encode_span(trace_id, span_id, parent, start, start + took, records)
    for _ in range(2):
        assert encode_lone_span(trace_id, span_id, parent, start, start + took, attrs,
                                encode_attributes(attrs)) == expected


def test_a_forked_child_gets_a_shipper_of_its_own(monkeypatch):
    """The parent's shipper thread is not in the child: a child that made spans on it would wait for
    a thread that is not there (an app's fallback that forks)."""
    import os

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(SpanShipper, "_shared", None)
    parent = SpanShipper.shared()
    parent.add("r", {}, encode_span(1, 2, 0, 1, 2, [_record()]))
    pid = os.fork()
    if pid == 0:  # the child: a new shipper, whose span is sent by a thread of its own
        fresh = SpanShipper._shared is None and SpanShipper.shared() is not parent
        os._exit(0 if fresh else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert SpanShipper.shared() is parent
