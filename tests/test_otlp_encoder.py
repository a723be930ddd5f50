"""The specialised encoder must produce the SDK encoder's bytes exactly, for any audit-like record."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, TraceFlags

from secret_audit._internal.otlp import RecordData, encode_log_record, encode_request

scalars = st.one_of(
    st.text(max_size=40),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
)
attr_keys = st.text(min_size=1, max_size=30)
severities = st.sampled_from([SeverityNumber.INFO, SeverityNumber.WARN, SeverityNumber.ERROR])


def sdk_bytes(resource, scope, recs):
    batch = []
    for r in recs:
        log = LogRecord(
            timestamp=r.time_unix_nano,
            observed_timestamp=r.observed_time_unix_nano,
            trace_id=r.trace_id,
            span_id=r.span_id,
            trace_flags=TraceFlags(r.flags),
            severity_text=r.severity_text,
            severity_number=SeverityNumber(r.severity_number),
            body=r.body,
            attributes=dict(r.attributes),
            event_name=r.event_name,
        )
        batch.append(ReadableLogRecord(log_record=log, resource=resource, instrumentation_scope=scope))
    return encode_logs(batch).SerializeToString()


@settings(max_examples=300, deadline=None)
@given(
    recs=st.lists(
        st.builds(
            RecordData,
            time_unix_nano=st.integers(min_value=1, max_value=2**63),
            observed_time_unix_nano=st.integers(min_value=1, max_value=2**63),
            severity_number=severities.map(lambda s: s.value),
            severity_text=st.sampled_from(["INFO", "WARN", "ERROR"]),
            body=st.text(max_size=80),
            attributes=st.dictionaries(attr_keys, scalars, max_size=25),
            trace_id=st.one_of(st.just(0), st.integers(min_value=1, max_value=2**128 - 1)),
            span_id=st.one_of(st.just(0), st.integers(min_value=1, max_value=2**64 - 1)),
            flags=st.sampled_from([0, 1]),
            event_name=st.sampled_from(["secret.access", "audit.dropped", "audit.custom"]),
        ),
        min_size=1,
        max_size=5,
    ),
    res_attrs=st.dictionaries(attr_keys, scalars, max_size=6),
)
def test_matches_sdk_encoder_byte_for_byte(recs, res_attrs):
    resource = Resource(res_attrs)
    scope = InstrumentationScope("secret_audit", "0.1.0")
    ours = encode_request(resource.attributes, "secret_audit", "0.1.0", [encode_log_record(r) for r in recs])
    assert ours == sdk_bytes(resource, scope, recs)
    decoded = ExportLogsServiceRequest.FromString(ours)
    assert len(decoded.resource_logs[0].scope_logs[0].log_records) == len(recs)


def test_real_audit_record_round_trips():
    ctx = SpanContext(0x1234, 0x99, is_remote=False, trace_flags=TraceFlags(1))
    rec = RecordData(
        1_700_000_000_000_000_000,
        1_700_000_000_000_001_000,
        SeverityNumber.INFO.value,
        "INFO",
        "Secret accessed: secret:x from redis (0.14ms)",
        {"secret.name": "secret:x", "audit.sequence": 7, "audit.duration_ms": 0.14, "ok": True},
        ctx.trace_id,
        ctx.span_id,
        1,
        "secret.access",
    )
    resource = Resource({"service.name": "svc"})
    ours = encode_request(resource.attributes, "secret_audit", "0.1.0", [encode_log_record(rec)])
    assert ours == sdk_bytes(resource, InstrumentationScope("secret_audit", "0.1.0"), [rec])
    lr = ExportLogsServiceRequest.FromString(ours).resource_logs[0].scope_logs[0].log_records[0]
    assert lr.event_name == "secret.access"
    assert lr.trace_id.hex() == f"{0x1234:032x}"
    assert {kv.key for kv in lr.attributes} == {"secret.name", "audit.sequence", "audit.duration_ms", "ok"}
