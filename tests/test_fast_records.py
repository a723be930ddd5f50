"""The worker's pre-encoded records (cached per kind of access, fixed tail) must equal a full encode."""

from __future__ import annotations

from itertools import islice

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from secret_audit._internal import chain
from secret_audit._internal.config import load_settings
from secret_audit._internal.event import Access, Item
from secret_audit._internal.otlp import (
    AuditTail,
    RecordData,
    encode_attributes,
    encode_log_record,
    encode_request,
)
from secret_audit._internal.pipeline import AuditPipeline
from secret_audit._internal.redis_source import SOURCE
from secret_audit._internal.shapes import summary
from secret_audit._internal.sinks import FastSink
from secret_audit.context import audit_context
from test_otlp_encoder import sdk_bytes

names = st.one_of(st.text(max_size=70), st.binary(max_size=70))
items = st.builds(
    Item,
    name=names,
    operation=st.sampled_from(["read", "write", "delete", "metadata", "admin"]),
    action=st.sampled_from(["GET", "SET", "DEL", "HGETALL", "EXPIRE"]),
    result=st.sampled_from([None, "found", "not_found", "created", "updated", "unchanged", "deleted"]),
    resource=st.one_of(st.none(), st.just("projects/p/secrets/s")),
    version=st.one_of(st.none(), st.sampled_from(["1", "latest"])),
    error=st.one_of(st.none(), st.just(redis.ResponseError("WRONGTYPE Operation against a key"))),
    times=st.integers(1, 1000),  # a pipeline's repeats of one access, merged (audit.count)
)
contexts = st.fixed_dictionaries(
    {
        "trace": st.one_of(
            st.none(),
            st.tuples(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1), st.sampled_from([0, 1])),
        ),
        "enduser": st.one_of(st.none(), st.text(min_size=1, max_size=20)),
        "client": st.one_of(st.none(), st.just("10.0.0.7")),
        "bag_user": st.one_of(st.none(), st.text(min_size=1, max_size=20)),
    }
)


def _context(spec):
    ctx = otel_context.Context()
    if spec["trace"] is not None:
        trace_id, span_id, flags = spec["trace"]
        parent = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))
        ctx = trace.set_span_in_context(NonRecordingSpan(parent), ctx)
    if spec["bag_user"] is not None:
        ctx = baggage.set_baggage("enduser.id", spec["bag_user"], ctx)
    if spec["enduser"] is not None or spec["client"] is not None:
        token = otel_context.attach(ctx)
        try:
            with audit_context(enduser=spec["enduser"], client_address=spec["client"]):
                ctx = otel_context.get_current()
        finally:
            otel_context.detach(token)
    return ctx


@pytest.fixture(scope="module", params=["plain", "hashed"])
def pipeline(request):
    env = {
        "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9/v1/logs",
        "OTEL_PYTHON_SECRET_AUDIT_SPANS": "off",
    }
    if request.param == "hashed":
        env["OTEL_PYTHON_SECRET_AUDIT_HASH_NAMES"] = "true"
        env["OTEL_PYTHON_SECRET_AUDIT_HMAC_KEY"] = "k" * 32
    p = AuditPipeline(load_settings(env))
    p._prepare()
    yield p
    p.handoff.closed = True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    accesses=st.lists(
        st.tuples(st.lists(items, min_size=1, max_size=4), contexts, st.integers(0, 10**10)),
        min_size=1,
        max_size=4,
    ),
    sequence=st.one_of(st.integers(0, 1000), st.integers(2**20, 2**62)),
)
def test_pre_encoded_records_equal_a_full_encode(pipeline, accesses, sequence):
    sink = pipeline._backend
    assert isinstance(sink, FastSink)
    seen: list[tuple[RecordData, bytes]] = []

    def check(record: RecordData, prefix: bytes, skip: int, tail: bytes | None) -> None:
        attrs = record.attributes
        assert prefix == encode_attributes(dict(islice(attrs.items(), skip)))
        assert tuple(attrs)[skip:] == AuditTail.KEYS
        fast = encode_log_record(record, prefix, skip, tail)
        assert fast == encode_log_record(record)
        seen.append((record, fast))

    sink.add = check  # type: ignore[method-assign]
    pipeline.stream.sequence = sequence
    records = 0
    try:
        for group, spec, duration in accesses:
            start = 1_700_000_000_000_000_000
            access = Access(SOURCE, start, start + duration, _context(spec), None, tuple(group), "success")
            records += pipeline._take(access)
    finally:
        del sink.add
    assert len(seen) == records
    for record, fast in seen:
        attrs = dict(record.attributes)
        assert record.body == summary(attrs)
        digest = attrs[chain.HASH_ATTRIBUTE]
        canonical = chain.canonical_bytes(
            time_unix_nano=record.time_unix_nano,
            event_name=record.event_name,
            severity_number=record.severity_number,
            body=record.body,
            trace_id=f"{record.trace_id:032x}" if record.trace_id else "",
            span_id=f"{record.span_id:016x}" if record.span_id else "",
            attributes=attrs,
        )
        assert chain.chain_hash(canonical) == digest
    resource = Resource({"service.name": "svc"})
    scope = InstrumentationScope("secret_audit", "0.1.0")
    first, ours = seen[0]
    assert encode_request(resource.attributes, "secret_audit", "0.1.0", [ours]) == sdk_bytes(resource, scope, [first])


def test_an_unhashable_value_from_a_source_is_still_recorded(pipeline):
    sink = pipeline._backend
    seen = []
    sink.add = lambda record, prefix, skip, tail: seen.append(
        (encode_log_record(record, prefix, skip, tail), encode_log_record(record), record)
    )
    try:
        item = Item("secret:odd", "read", "GET", "found", version=["1", "2"])  # a list: not hashable
        start = 1_700_000_000_000_000_000
        assert pipeline._take(Access(SOURCE, start, start + 1, otel_context.Context(), None, (item,), "success")) == 1
    finally:
        del sink.add
    [(fast, full, record)] = seen
    assert fast == full
    assert record.attributes["secret.version"] == ["1", "2"]
