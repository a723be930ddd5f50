"""The agent's engine (C and its Python twin) must write exactly the records the slow path writes.

The slow path is the reference: ``fill``, ``Stream.stamp_access`` (``contract.stamp``, so
``contract.canonical_bytes``) and ``encode_log_record``. Over shapes, names (unicode, bytes,
control characters), outcomes, trace ids, durations and sequences, both engines must give the same
framed LogRecords, sequence and chain head, and opentelemetry-proto must read them back.
"""

from __future__ import annotations

import hashlib
import struct

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from secret_audit import contract
from secret_audit._internal import engine
from secret_audit._internal.builder import RecordBuilder
from secret_audit._internal.config import load_settings
from secret_audit._internal.event import Access, Item
from secret_audit._internal.otlp import RecordData, encode_log_record, encode_request_framed, varint
from secret_audit._internal.redis_source import SOURCE
from secret_audit._internal.shapes import fill
from secret_audit._internal.stream import Stream
from test_fast_records import _context, contexts, items

ENGINES = [pytest.param(engine.stamp_slots_py, id="python")]
if engine.NATIVE:
    ENGINES.append(pytest.param(engine.stamp_slots, id="c"))
# each engine's twin for raw ring slots (Ring.read_raw's bytes)
RAW = {engine.stamp_slots_py: engine.stamp_raw_py, engine.stamp_slots: engine.stamp_raw}
_RAW_SLOT = struct.Struct("<QBBHIqqQQQQ2I")  # ring.py's layout


def _raw(slots, shapes, ids=None) -> bytes:
    """Slots as the ring holds them (ids: each slot's shape ids, else 0, 1, ...)."""
    out = []
    for n, (slot, planned) in enumerate(zip(slots, shapes, strict=True)):
        index, flags, start, end, trace_id, span_id, tflags = slot[:7]
        sids = list(ids[n] if ids is not None else range(len(planned))) + [0xEEEEEEEE] * 2  # stale id bytes
        out.append(_RAW_SLOT.pack(index + 1, 1, flags, len(planned), tflags, start, end, trace_id >> 64,
                                  trace_id & (2**64 - 1), span_id, 0, *sids[:2]))
    return b"".join(out)


def _reference(stream: Stream, slots, shapes, observed: int) -> bytes:
    """The slow path, record by record, as the in-process pipeline stamps and encodes."""
    out = []
    for slot, slot_shapes in zip(slots, shapes, strict=True):
        _, _, start, end, trace_id, span_id, flags, _, _ = slot
        if not trace_id:
            span_id = flags = 0
        records, bodies = fill(slot_shapes, start, end)
        for attrs, shape, body in zip(records, slot_shapes, bodies, strict=True):
            record = RecordData(start, observed, shape.severity, shape.severity_text, body, attrs, trace_id,
                                span_id, flags, contract.EVENT_ACCESS)
            _, tail = stream.stamp_access(attrs, start, shape.severity, body,
                                          f"{trace_id:032x}" if trace_id else "",
                                          f"{span_id:016x}" if trace_id else "")
            encoded = encode_log_record(record, shape.encoded, shape.skip, tail)
            out.append(b"\x12" + varint(len(encoded)) + encoded)
    return b"".join(out)


@pytest.fixture(scope="module", params=["plain", "hashed"])
def builder(request):
    env = {"OTEL_PYTHON_SECRET_AUDIT_SPANS": "off"}
    if request.param == "hashed":
        env |= {"OTEL_PYTHON_SECRET_AUDIT_HASH_NAMES": "true", "OTEL_PYTHON_SECRET_AUDIT_HMAC_KEY": "k" * 32}
    return RecordBuilder(load_settings(env), None)


def _planned(shape):
    plan = engine.plan_of(shape.attrs, shape.body, shape.tail, shape.severity, shape.severity_text, shape.encoded)
    assert plan is not None
    return shape._replace(plan=plan)


times = st.integers(0, 2**62)
traces = st.one_of(st.just((0, 0, 0)), st.tuples(st.integers(1, 2**128 - 1), st.integers(0, 2**64 - 1),
                                                   st.integers(0, 255)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    accesses=st.lists(
        st.tuples(st.lists(items, min_size=1, max_size=3), contexts, times,
                  st.one_of(st.integers(0, 10**10), st.integers(-10**12, 10**19)), traces),
        min_size=1, max_size=5),
    sequence=st.one_of(st.integers(0, 1000), st.integers(2**20, 2**62)),
    observed=st.one_of(st.just(0), times),
)
@pytest.mark.parametrize("stamp", ENGINES)
def test_the_engine_writes_what_the_slow_path_writes(builder, stamp, accesses, sequence, observed):
    slots, shapes = [], []
    for i, (group, spec, start, duration, (trace_id, span_id, flags)) in enumerate(accesses):
        found = builder.shapes_of(Access(SOURCE, start, start + duration, _context(spec), None, tuple(group),
                                         "success"))
        assert found is not None
        end = max(min(start + duration, 2**63 - 1), -(2**63))  # a slot's times are 64-bit
        slots.append((i, 0, start, end, trace_id, span_id, flags, (), 0))
        shapes.append([_planned(s) for s in found[0]])
    reference = Stream()
    reference.sequence = sequence
    expected = _reference(reference, slots, shapes, observed)

    out = bytearray(b"kept")
    consts = engine.StreamConsts.of(reference.id)
    seq, head = stamp(slots, shapes, consts, sequence, contract.GENESIS, observed, out)
    assert bytes(out) == b"kept" + expected
    assert (seq, head) == (reference.sequence, reference.head)

    request = ExportLogsServiceRequest.FromString(encode_request_framed({"service.name": "svc"}, "secret_audit",
                                                                        "0.1.0", bytes(out[4:])))
    records = request.resource_logs[0].scope_logs[0].log_records
    assert len(records) == seq - sequence
    last = records[-1]
    attrs = {kv.key: kv.value for kv in last.attributes}
    assert attrs[contract.CHAIN_HASH].string_value == head
    assert attrs[contract.SEQUENCE].int_value == seq
    assert attrs[contract.EVENT_ID].string_value == f"{reference.id}:{seq}"

    # the same run as raw ring slots (at most two shapes a slot): the same bytes, sequence and head
    if all(len(planned) <= 2 for planned in shapes):
        raw_out = bytearray(b"kept")
        flat = [shape for planned in shapes for shape in planned]
        assert RAW[stamp](_raw(slots, shapes), flat, consts, sequence, contract.GENESIS, observed,
                          raw_out) == (seq, head)
        assert raw_out == out


def _one_shape_twice(builder):
    none = {"trace": None, "enduser": None, "client": None, "bag_user": None}
    found = builder.shapes_of(Access(SOURCE, 1, 2, _context(none), None, (Item("secret:k", "read", "GET", "found"),),
                                     "success"))
    return [[_planned(s) for s in found[0]]] * 2


@pytest.mark.parametrize("stamp", ENGINES)
def test_a_failed_run_appends_nothing(builder, stamp):
    shapes = _one_shape_twice(builder)
    slots = [(0, 0, 1, 2, 0, 0, 0, (), 0), (1, 0, -5, 2, 0, 0, 0, (), 0)]  # a negative time cannot be written
    out = bytearray(b"kept")
    with pytest.raises((ValueError, OverflowError, __import__('struct').error)):
        stamp(slots, shapes, engine.StreamConsts.of("s"), 0, contract.GENESIS, 1, out)
    assert out == b"kept"


@pytest.mark.parametrize("stamp", ENGINES)
def test_a_raw_run_with_too_few_or_too_many_shapes_appends_nothing(builder, stamp):
    shapes = _one_shape_twice(builder)
    raw = _raw([(0, 0, 1, 2, 0, 0, 0), (1, 0, 3, 4, 0, 0, 0)], shapes)
    out = bytearray(b"kept")
    for flat in (shapes[0], shapes[0] * 3):
        with pytest.raises(ValueError, match="shapes"):
            RAW[stamp](raw, flat, engine.StreamConsts.of("s"), 0, contract.GENESIS, 1, out)
    with pytest.raises(ValueError, match="72"):
        RAW[stamp](raw[:-1], shapes[0] * 2, engine.StreamConsts.of("s"), 0, contract.GENESIS, 1, out)
    assert out == b"kept"


@settings(max_examples=300, deadline=None)
@given(slots=st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 7), st.lists(st.integers(0, 12), max_size=2)),
                      max_size=20),
       known=st.sets(st.integers(0, 12)))
def test_resolve_raw_finds_each_slots_shapes_or_none(slots, known):
    """The reader's C lookup and its twin agree: shapes in slot order, records, flags or-ed, the last
    waited-on slot's index; None as soon as one id is unknown (that run takes the slot-by-slot path)."""
    table = {sid: ("shape", sid) for sid in known}
    raw = _raw([(index, flags, 0, 0, 0, 0, 0) for index, flags, _ in slots], [ids for _, _, ids in slots],
               [ids for _, _, ids in slots])
    want = None
    if all(sid in known for _, _, ids in slots for sid in ids):
        waited = [index for index, flags, _ in slots if flags & 1]
        flags_or = 0
        for _, flags, _ in slots:
            flags_or |= flags
        shapes = [table[sid] for _, _, ids in slots for sid in ids]
        want = (shapes, len(shapes), flags_or, waited[-1] if waited else -1)
    assert engine.resolve_raw_py(raw, table) == want
    if engine.NATIVE:
        assert engine._engine.resolve_raw(raw, table) == want


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_text_is_orjsons(value):
    """The C engine writes durations in the decimal range itself: it must agree with orjson."""
    assert engine.float_json(value) == orjson.dumps(value)
    if engine.NATIVE:
        assert engine._engine.float_text(value) == engine.float_json(value)


@pytest.mark.skipif(not engine.NATIVE, reason="the C engine is not built")
@given(st.binary(max_size=300))
def test_the_portable_sha256_is_sha256(data):
    """Without libcrypto in the process the C engine hashes with its own SHA-256."""
    assert engine._engine.portable_sha256(data) == hashlib.sha256(data).hexdigest()

