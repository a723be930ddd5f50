"""The C fast path (secret_audit.store._native) against its Python twins: same rows, same bytes, same table."""

from __future__ import annotations

import base64
import copy
import dataclasses
import math
import random
import secrets
import shutil
import sysconfig
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from psycopg import postgres, pq
from psycopg._copy_base import BinaryFormatter, _binary_signature, _binary_trailer
from psycopg.adapt import AdaptersMap, Transformer
from psycopg.types.string import BytesBinaryDumper

from secret_audit.store import _ingest, _prepare
from secret_audit.store._ingest import Ingestor
from secret_audit.store._otlp import BadPayload, Record, decode_protobuf, decode_protobuf_python
from secret_audit.store._prepare import Prepared, finish_python, prepare, prepare_python
from secret_audit.store.config import load_store_config

from .conftest import opened_store
from .records import chained, rehash, to_protobuf

try:
    from secret_audit.store import _native as native
except ImportError:  # not built: only the Python twins run (and the tests below that need both skip)
    native = None

needs_native = pytest.mark.skipif(native is None, reason="the C extension is not built here")


def test_the_extension_is_built_wherever_it_can_be():
    # the build is optional (no compiler: the Python twins); where a compiler and Python's headers are
    # present, a missing extension means the install silently lost the fast path
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if shutil.which("cc") and headers.exists():
        assert _prepare.finisher() is native.finish
        assert Ingestor().native


# ---- finish: the row and the hash ----------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8"), max_size=12)
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=6,
)
# the contract's fields that may take any value (the identity and chain fields are checked by prepare)
_TYPED = [n for n in (*_prepare._STR_NAMES, "audit.duration_ms")
          if not n.startswith(("audit.event.", "audit.stream.", "audit.chain."))]


def _as_record(d: dict[str, Any]) -> Record:
    # built directly, not through protobuf: nested maps, lists, None and bools reach finish as they are
    return Record(d["time_unix_nano"], d["observed_unix_nano"], d["severity_number"], d["severity_text"],
                  d["body"], d["event_name"], d["trace_id"], d["span_id"], d["attributes"], d["resource"],
                  "secret_audit", "1.0")


def _record(attrs: dict[str, Any], body: Any = "ok") -> Record:
    [base] = chained(1)
    base["attributes"].update(attrs)
    base["body"] = body
    rehash(base)
    return _as_record(base)


def _both(rec: Record) -> tuple[Prepared, Prepared, str | None, str | None]:
    a = prepare(0, rec, None, {})
    b = prepare(0, copy.deepcopy(rec), None, {})
    assert isinstance(a, Prepared)
    assert isinstance(b, Prepared)
    return a, b, finish_python(a), native.finish(b)


@needs_native
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    typed=st.dictionaries(st.sampled_from(_TYPED), _values | _text | st.floats(allow_nan=False)),
    extra=st.dictionaries(_text.filter(lambda k: not k.startswith("audit.")), _values, max_size=3),
    body=st.none() | _text,
)
def test_native_finish_builds_the_python_row(typed: dict[str, Any], extra: dict[str, Any], body: Any):
    a, b, ra, rb = _both(_record({**typed, **extra}, body))
    assert ra == rb
    assert a.computed == b.computed
    assert a.row == b.row
    assert [type(v) for v in a.row] == [type(v) for v in b.row]


@needs_native
@pytest.mark.parametrize(("attrs", "body"), [
    ({}, "plain"),  # every attribute has its column: no JSONB remainder
    ({"custom.flag": True, "custom.n": 3}, "plain"),  # a remainder
    ({"secret.name": 7}, "plain"),  # a contract field of the wrong type stays in JSONB
    ({"audit.duration_ms": 3}, "plain"),  # an int duration: JSONB, exactly as sent
    ({"note": 'quote " and \\ backslash'}, "tab\there"),  # escapes in the canonical form
    ({"note": "nul \x00 inside"}, "plain"),  # refused, with the Python twin's words
    ({}, "nul \x00 in the body"),
    ({"secret.name": "ünïcødé ☃ 𝄞"}, "ünïcødé"),
])
def test_native_finish_agrees_on_every_branch(attrs: dict[str, Any], body: Any):
    a, b, ra, rb = _both(_record(attrs, body))
    assert ra == rb
    assert (a.computed, a.row) == (b.computed, b.row)
    if any("\x00" in str(v) for v in (*attrs.values(), body)):
        assert ra == "NUL characters cannot be stored"
    else:
        assert ra is None
        assert a.computed == a.claimed


@needs_native
def test_native_finish_recomputes_a_forged_hash():
    rec = _record({})
    rec.attributes["secret.name"] = "changed after hashing"
    a, b, _, _ = _both(rec)
    assert a.computed == b.computed != a.claimed


def _answering(name: str, value: Any) -> property:
    """A property that answers `value` for a Record field, while the field's slot keeps what is set."""
    return property(lambda self: value, lambda self, v: getattr(Record, name).__set__(self, v))


class _Relabelled(Record):
    """A Record whose body, scope name and resource are not what its slots hold: C must ask, as
    Python does."""

    __slots__ = ()
    body = _answering("body", "said by the subclass")  # type: ignore[assignment]
    scope_name = _answering("scope_name", "subclass.scope")  # type: ignore[assignment]
    resource = _answering(  # type: ignore[assignment]
        "resource", {"service.name": "subclass-service", "service.namespace": "subclass-tenant"})


@needs_native
def test_native_paths_read_a_subclass_by_its_attributes():
    # Exactly Record and Prepared are read through their slots; anything else through attributes.
    plain = _record({})

    def relabelled() -> _Relabelled:
        return _Relabelled(*(getattr(plain, f.name) for f in dataclasses.fields(Record)))

    a, b = _prepared_both(relabelled(), None)
    assert a == b
    a, b = prepare_python(0, relabelled(), None, {}), native.prepare(0, relabelled(), None, {})
    assert isinstance(a, Prepared)
    assert isinstance(b, Prepared)
    assert (b.tenant, b.service_name) == ("subclass-tenant", "subclass-service")
    assert finish_python(a) == native.finish(b) is None
    assert (a.computed, a.row) == (b.computed, b.row)
    assert "said by the subclass" in b.row
    assert "subclass.scope" in b.row
    assert b.computed != b.claimed  # the hash covers the body the subclass answers


# ---- prepare: the contract's checks --------------------------------------------------------------

def _fields(p: Prepared | str) -> Any:
    if isinstance(p, str):
        return p
    return (p.index, p.stream_id, p.sequence, p.prev, p.claimed, p.tenant, p.stamp, p.service_name,
            p.instance, p.resource_jsonb, p.rec, p.computed, p.row)


def _prepared_both(rec: Record, scope: str | None, cache: bool = True) -> tuple[Any, Any]:
    a = prepare_python(3, rec, scope, {} if cache else None)
    b = native.prepare(3, rec, scope, {} if cache else None)
    if not cache:  # and without the argument at all, as the benchmark's baseline calls it
        assert _fields(native.prepare(3, rec, scope)) == _fields(b)
    return _fields(a), _fields(b)


_BROKEN: list[tuple[str, Any]] = [
    ("audit.stream.id", ""), ("audit.stream.id", 5), ("audit.stream.id", None),
    ("audit.sequence", 0), ("audit.sequence", -1), ("audit.sequence", 2**63), ("audit.sequence", True),
    ("audit.sequence", 1.0), ("audit.sequence", "1"), ("audit.event.id", "other:1"), ("audit.event.id", 7),
    ("audit.chain.prev", "A" * 64), ("audit.chain.prev", "0" * 63), ("audit.chain.prev", " " + "0" * 63),
    ("audit.chain.hash", "g" * 64), ("audit.chain.hash", b"0" * 64), ("audit.chain.hash", None),
]


@needs_native
@pytest.mark.parametrize(("key", "value"), _BROKEN)
def test_native_prepare_refuses_with_the_python_words(key: str, value: Any):
    rec = _record({})
    if value is None:
        del rec.attributes[key]
    else:
        rec.attributes[key] = value
    a, b = _prepared_both(rec, None)
    assert isinstance(a, str)
    assert a == b


@needs_native
@pytest.mark.parametrize(("field", "value"), [
    ("body", 5), ("body", None), ("time_unix_nano", -1), ("time_unix_nano", 2**63), ("time_unix_nano", 0),
    ("observed_unix_nano", 2**64 - 1), ("severity_number", 25), ("severity_number", -1),
    ("severity_text", "a\x00"), ("scope_name", "\x00"), ("scope_version", "v\x00"),
    ("resource", {"service.name": "x\x00"}), ("resource", {"service.namespace": "other"}),
    ("resource", {"bad": object()}), ("resource", {"service.namespace": "acme"}),
])
@pytest.mark.parametrize("scope", [None, "acme"])
def test_native_prepare_agrees_on_every_field(field: str, value: Any, scope: str | None):
    rec = _record({})
    setattr(rec, field, value)
    for cache in (True, False):
        a, b = _prepared_both(rec, scope, cache)
        assert a == b


def test_native_prepare_stamps_a_record_without_time_like_the_clock():
    rec = _record({})
    rec.time_unix_nano = rec.observed_unix_nano = 0
    b = prepare(0, rec, None, {})
    assert isinstance(b, Prepared)
    a = prepare_python(0, rec, None, {})
    assert isinstance(a, Prepared)
    assert abs(a.stamp - b.stamp) < 60_000_000  # both from time.time_ns(), a moment apart


@needs_native
def test_native_prepare_reads_each_resource_once_per_request():
    calls = []
    recs = decode_protobuf(to_protobuf(chained(4) + chained(3, tenant="acme")))
    resources: dict[int, Any] = {}
    for i, rec in enumerate(recs):
        calls.append(native.prepare(i, rec, None, resources))
    assert len(resources) == 2
    assert [p.tenant for p in calls] == [None] * 4 + ["acme"] * 3


@needs_native
@settings(max_examples=200, deadline=None)
@given(
    attrs=st.dictionaries(st.sampled_from(["audit.stream.id", "audit.sequence", "audit.event.id",
                                           "audit.chain.prev", "audit.chain.hash", "other"]),
                          _values | st.sampled_from(["0" * 64, "f" * 64, "s", "s:1"]) | st.integers(-3, 3)),
    scope=st.none() | st.sampled_from(["acme", ""]),
)
def test_native_prepare_matches_on_random_identity_fields(attrs: dict[str, Any], scope: str | None):
    rec = _record({})
    rec.attributes.update(attrs)
    a, b = _prepared_both(rec, scope)
    assert a == b


# ---- encode_rows: binary COPY --------------------------------------------------------------------

def _psycopg_copy(rows: list[list[Any]], types: tuple[str, ...]) -> bytes:
    adapters = AdaptersMap(postgres.adapters)
    adapters.register_dumper(bytes, BytesBinaryDumper)
    tx = Transformer(adapters)
    tx.set_dumper_types([postgres.types[t].oid for t in types], pq.Format.BINARY)
    formatter = BinaryFormatter(tx)
    out = b"".join(bytes(formatter.write_row(row)) for row in rows)
    return out + bytes(formatter.end())


_CODES = {"int8": "q", "int2": "h", "float8": "d", "text": "t", "bytea": "b"}
_COLUMN = {
    "int8": st.integers(-(2**63), 2**63 - 1),
    "int2": st.integers(-(2**15), 2**15 - 1),
    "float8": st.floats(allow_nan=False),
    "text": st.text(st.characters(codec="utf-8", exclude_characters="\x00")),
    "bytea": st.binary(),
}


@needs_native
@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list(_CODES)), min_size=1, max_size=8).flatmap(
    lambda types: st.tuples(
        st.just(tuple(types)),
        st.lists(st.tuples(*(st.none() | _COLUMN[t] for t in types)).map(list), max_size=5),
    )
))
def test_encode_rows_writes_psycopgs_bytes(case: tuple[tuple[str, ...], list[list[Any]]]):
    types, rows = case
    codes = "".join(_CODES[t] for t in types).encode()
    expected = _psycopg_copy(rows, types)
    assert _binary_signature + native.encode_rows(rows, codes) + _binary_trailer == expected


@needs_native
def test_encode_rows_keeps_floats_bit_for_bit():
    rows = [[v] for v in (math.inf, -math.inf, -0.0, 5e-324, math.nan)]
    got = native.encode_rows(rows, b"d")
    assert got == _psycopg_copy(rows, ("float8",))[len(_binary_signature):-2]


@needs_native
def test_the_ingest_layout_matches_psycopgs():
    # the ingest's own rows, codes and types: what the COPY would have been without the extension
    rows = []
    for i, rec in enumerate(decode_protobuf(to_protobuf(chained(20, note="x") + chained(3)))):
        p = prepare(i, rec, None, {})
        assert isinstance(p, Prepared)
        assert finish_python(p) is None
        p.row[0] = 1000 + i
        rows.append(p.row)
    assert (_ingest._SIGNATURE + native.encode_rows(rows, _ingest._CODES) + _ingest._TRAILER
            == _psycopg_copy(rows, _ingest._TYPES))


@needs_native
@pytest.mark.parametrize(("value", "code", "error", "words"), [
    ("1", b"q", TypeError, "column 0: type code q cannot take str"),
    (1.5, b"t", TypeError, "column 0: type code t cannot take float"),
    (2**63, b"q", OverflowError, "int too big to convert"),
    (2**15, b"h", OverflowError, "out of the smallint range"),
    ("a\x00b", b"t", ValueError, "cannot contain NUL"),
    ("x", b"z", ValueError, "unknown type code z"),
])
def test_encode_rows_refuses_what_copy_cannot_take(value: Any, code: bytes, error: type, words: str):
    with pytest.raises(error, match=words) as info:
        native.encode_rows([[value]], code)
    assert repr(value) not in str(info.value)  # never a value in an error message


@needs_native
def test_encode_rows_refuses_rows_of_the_wrong_width():
    with pytest.raises(TypeError, match="row 1: expected a list of 2 values"):
        native.encode_rows([[1, 2], [1]], b"qq")


@needs_native
def test_a_secret_value_never_reaches_an_encoding_error():
    canary = "canary-" + secrets.token_hex(8)
    with pytest.raises(TypeError) as info:
        native.encode_rows([[canary.encode(), canary]], b"tt")
    assert canary not in str(info.value)


# ---- the whole ingest: both paths store the same table ---------------------------------------------

_COMPARED = "time, time_unix_nano, event_name, body, trace_id, secret_name, duration_ms, sequence, " \
            "chain_prev, chain_hash, attributes, resource, integrity, tenant, service_name"


def _stored(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT {_COMPARED} FROM audit_events ORDER BY stream_id, sequence").fetchall()


@needs_native
def test_both_paths_store_the_same_rows(pg_url: str, db_url: str, template_db: str):
    recs = chained(30, note="kept in JSONB") + chained(5, **{"secret.name": 42})  # a typed field as int
    broken = chained(4)
    broken[2]["attributes"]["audit.chain.prev"] = "f" * 64  # a chain break, found by both
    rehash(broken[2])
    body = to_protobuf(recs + broken)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        other = "native_twin_" + secrets.token_hex(4)
        admin.execute(f'CREATE DATABASE "{other}" TEMPLATE "{template_db}"')
    other_url = psycopg.conninfo.make_conninfo(db_url, dbname=other)
    try:
        results = []
        for url, native_on in ((db_url, True), (other_url, False)):
            ingestor = Ingestor(native=native_on)
            assert ingestor.native is native_on
            with psycopg.connect(url, autocommit=True) as conn:
                results.append(ingestor.ingest(conn, decode_protobuf(body)))
        fast, slow = results
        assert (fast.accepted, fast.rejected) == (slow.accepted, slow.rejected) == (39, 0)
        assert [(f.kind, f.sequence) for f in fast.findings] == [(f.kind, f.sequence) for f in slow.findings]
        assert any(f.kind == "chain_break" for f in fast.findings)
        assert _stored(db_url) == _stored(other_url)
        assert len(_stored(db_url)) == 39
    finally:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{other}" WITH (FORCE)')


@pytest.mark.parametrize("native_on", [True, False])
@pytest.mark.parametrize("field", ["severity_text", "scope_name", "scope_version"])
def test_nul_in_an_unhashed_text_is_refused_per_record(owner, field: str, native_on: bool):
    # before, it reached COPY and failed the whole request with 503: a batch retried for ever
    records = decode_protobuf(to_protobuf(chained(3)))
    setattr(records[1], field, "a\x00b")
    result = Ingestor(native=native_on).ingest(owner, records)
    assert (result.accepted, result.rejected) == (2, 1)
    assert result.errors == ["record 1: NUL characters cannot be stored"]


def test_the_store_can_be_told_to_use_the_python_twins(db_url: str):
    assert load_store_config({}).native is True
    config = load_store_config({"OTEL_PYTHON_SECRET_AUDIT_STORE_NATIVE": "false"})
    assert config.native is False
    with opened_store(config, db_url) as store:
        assert store.ingestor.native is False
        with store.connection() as conn:
            assert store.ingestor.ingest(conn, decode_protobuf(to_protobuf(chained(3)))).accepted == 3


# ---- decode_logs: OTLP protobuf ------------------------------------------------------------------

def _native_decode(body: bytes) -> Any:
    return native.decode_logs(body, Record, base64.b64encode)


def _python_decode(body: bytes) -> Any:
    try:
        return decode_protobuf_python(body)
    except BadPayload:
        return BadPayload


def _agrees(body: bytes) -> Any:
    expected = _python_decode(body)
    got = _native_decode(body)
    if got is not None:  # None: "not the plain form", left to the generated classes
        assert expected is not BadPayload, "the C reader accepted what the generated classes refuse"
        assert got == expected
        assert [type(v) for r in got for v in r.attributes.values()] == \
            [type(v) for r in expected for v in r.attributes.values()]
    # and the decoder the store uses gives the generated classes' answer either way
    try:
        assert decode_protobuf(body) == expected
    except BadPayload:
        assert expected is BadPayload
    return got


_any_values = st.recursive(
    st.builds(lambda v: AnyValue(string_value=v), st.text(max_size=8))
    | st.builds(lambda v: AnyValue(int_value=v), st.integers(-(2**63), 2**63 - 1))
    | st.builds(lambda v: AnyValue(double_value=v), st.floats(allow_nan=False))
    | st.builds(lambda v: AnyValue(bool_value=v), st.booleans())
    | st.builds(lambda v: AnyValue(bytes_value=v), st.binary(max_size=8))
    | st.just(AnyValue()),
    lambda inner: st.builds(lambda vs: AnyValue(array_value=ArrayValue(values=vs)), st.lists(inner, max_size=3))
    | st.builds(lambda kvs: AnyValue(kvlist_value=KeyValueList(values=kvs)),
                st.lists(st.builds(lambda k, v: KeyValue(key=k, value=v), st.text(max_size=4), inner),
                         max_size=3)),
    max_leaves=8,
)
_kvs = st.lists(st.builds(lambda k, v: KeyValue(key=k, value=v), st.sampled_from(["a", "b", "", "ü", "audit.x"]),
                          _any_values), max_size=4)


@st.composite
def _requests(draw: Any) -> bytes:
    req = ExportLogsServiceRequest()
    for _ in range(draw(st.integers(0, 2))):
        rl = req.resource_logs.add()
        rl.resource.attributes.extend(draw(_kvs))
        for _ in range(draw(st.integers(0, 2))):
            sl = rl.scope_logs.add()
            if draw(st.booleans()):
                sl.scope.name = draw(st.text(max_size=6))
                sl.scope.version = draw(st.text(max_size=4))
            for _ in range(draw(st.integers(0, 3))):
                lr = sl.log_records.add()
                lr.time_unix_nano = draw(st.integers(0, 2**64 - 1))
                lr.observed_time_unix_nano = draw(st.integers(0, 2**64 - 1))
                lr.severity_number = draw(st.integers(-(2**31), 2**31 - 1))
                lr.severity_text = draw(st.text(max_size=5))
                lr.event_name = draw(st.sampled_from(["", "secret.access", "audit.x", "é"]))
                if draw(st.booleans()):
                    lr.body.CopyFrom(draw(_any_values))
                lr.trace_id = draw(st.binary(max_size=16))
                lr.span_id = draw(st.binary(max_size=8))
                lr.flags = draw(st.integers(0, 2**32 - 1))
                lr.attributes.extend(draw(_kvs))
    return req.SerializeToString()


@needs_native
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_requests())
def test_decode_logs_reads_what_the_generated_classes_read(body: bytes):
    assert _agrees(body) is not None  # everything the SDK writes is the plain form


@needs_native
@settings(max_examples=300, deadline=None)
@given(_requests(), st.data())
def test_decode_logs_never_accepts_a_damaged_request_differently(body: bytes, data: Any):
    damaged = bytearray(body)
    for _ in range(data.draw(st.integers(1, 3))):
        if damaged and data.draw(st.booleans()):
            damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
        else:
            damaged = damaged[: data.draw(st.integers(0, len(damaged)))]
    _agrees(bytes(damaged))


@needs_native
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_decode_logs_on_random_bytes(body: bytes):
    _agrees(body)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)
    head = varint(number << 3 | wire)
    return head + (varint(len(payload)) + payload if wire == 2 else payload)


@needs_native
@pytest.mark.parametrize(("case", "body", "plain"), [
    ("resource sent twice is merged", _field(1, 2, _field(1, 2, _field(1, 2, _field(1, 2, b"a")))
                                                   + _field(1, 2, _field(1, 2, _field(1, 2, b"b")))
                                                   + _field(2, 2, _field(2, 2, b""))), False),
    ("scope after the records", _field(1, 2, _field(2, 2, _field(2, 2, _field(12, 2, b"audit.x"))
                                                         + _field(1, 2, _field(1, 2, b"late-scope")))), True),
    ("unknown fields everywhere", _field(9, 0, b"\x05") + _field(1, 2, _field(7, 5, b"abcd")
                                  + _field(2, 2, _field(99, 1, bytes(8)) + _field(2, 2, _field(50, 2, b"x")))), True),
    ("a group", _field(1, 3, b""), False),
    ("field number 0", b"\x02\x00", False),
    ("a time with the wrong wire type", _field(1, 2, _field(2, 2, _field(2, 2, _field(1, 0, b"\x01")))), False),
    ("invalid UTF-8 in a key", _field(1, 2, _field(1, 2, _field(1, 2, _field(1, 2, b"\xff")))), False),
    ("an 11-byte varint", _field(1, 2, _field(2, 2, _field(2, 2, b"\x10" + b"\xff" * 10 + b"\x01"))), False),
    ("severity above int32", _field(1, 2, _field(2, 2, _field(2, 2, b"\x10\xff\xff\xff\xff\x0f"))), True),
    ("empty", b"", True),
    ("bad UTF-8 in a schema URL the records do not keep", _field(1, 2, _field(3, 2, b"\xc3\x28")), False),
    ("a schema URL", _field(1, 2, _field(3, 2, b"https://x") + _field(2, 2, _field(3, 2, b"s"))), True),
    ("a value overridden (the first one is still checked)", _field(1, 2, _field(2, 2, _field(2, 2, _field(
        6, 2, _field(1, 2, b"k") + _field(2, 2, _field(1, 2, b"\xff") + _field(3, 0, b"\x01")))))), False),
    ("a string-table index as the value", _field(1, 2, _field(2, 2, _field(2, 2, _field(
        6, 2, _field(1, 2, b"k") + _field(2, 2, _field(8, 0, b"\x03")))))), True),
    ("a key sent twice", _field(1, 2, _field(2, 2, _field(2, 2, _field(
        6, 2, _field(1, 2, b"a") + _field(1, 2, b"b"))))), False),
    ("the scope's attributes", _field(1, 2, _field(2, 2, _field(1, 2, _field(3, 2, _field(1, 2, b"k"))))), False),
    ("the resource's entity references", _field(1, 2, _field(1, 2, _field(3, 2, _field(2, 2, b"t")))), False),
    ("an event name sent twice", _field(1, 2, _field(2, 2, _field(2, 2, _field(12, 2, b"a")
                                                                    + _field(12, 2, b"b")))), False),
])
def test_decode_logs_edge_cases(case: str, body: bytes, plain: bool):
    got = _agrees(body)
    assert (got is not None) is plain, case


@needs_native
def test_decode_logs_leaves_deep_nesting_to_the_generated_classes():
    value = AnyValue(string_value="leaf")
    for _ in range(40):
        value = AnyValue(array_value=ArrayValue(values=[value]))
    req = ExportLogsServiceRequest()
    req.resource_logs.add().scope_logs.add().log_records.add().body.CopyFrom(value)
    assert _agrees(req.SerializeToString()) is None


@needs_native
def test_decode_logs_reads_the_benchmarks_records():
    body = to_protobuf(chained(50) + chained(5, tenant="acme"))
    records = _agrees(body)
    assert len(records) == 55
    assert records[0].resource is records[1].resource  # one dict per resource, as prepare expects
    # the contract's attribute names arrive as the interned strings the store's lookups use
    import sys

    names = [k for k in records[0].attributes if k in _prepare._TYPED_SET]
    assert len(names) >= 15
    assert all(k is sys.intern(k) for k in names)


@needs_native
def test_decode_logs_under_mutation_fuzzing():
    # damaged copies of realistic requests (schema URLs, scope version, nested bodies, bytes values):
    # whatever the C reader takes, it reads exactly as the generated classes do
    req = ExportLogsServiceRequest.FromString(to_protobuf(chained(2, tenant="t", note="x")))
    req.resource_logs[0].schema_url = "https://opentelemetry.io/schemas/1.21.0"
    scope_logs = req.resource_logs[0].scope_logs[0]
    scope_logs.schema_url = "s"
    scope_logs.scope.version = "1.2"
    scope_logs.log_records[0].body.CopyFrom(AnyValue(kvlist_value=KeyValueList(values=[KeyValue(
        key="k", value=AnyValue(array_value=ArrayValue(values=[
            AnyValue(string_value="é"), AnyValue(bytes_value=b"\x00\xff"), AnyValue(int_value=-5)]))),
    ])))
    seeds = [req.SerializeToString(), to_protobuf(chained(3, note="x")), to_protobuf(chained(1))]
    rng = random.Random(20261125)
    taken = 0
    for _ in range(30_000):
        body = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            at = rng.randrange(len(body) + 1)
            if op < 0.5 and body:
                body[rng.randrange(len(body))] = rng.randrange(256)
            elif op < 0.7:
                del body[at:rng.randrange(at, len(body) + 1)]
            elif op < 0.85:
                body[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
            else:
                other = rng.randrange(len(body) + 1)
                body[at:at] = body[min(at, other):max(at, other)]
        got = _native_decode(bytes(body))
        if got is not None:
            taken += 1
            assert got == _python_decode(bytes(body)), bytes(body).hex()
    assert taken > 1000  # the fuzzing reached the reader's accepting paths, not only its refusals


@needs_native
def test_decode_logs_calls_a_class_that_is_not_plain_slots():
    # the records are allocated straight into Record's slots; any other class gets its constructor
    import dataclasses

    # Record's fields, without slots: instances have a __dict__, so there is no slot layout
    Loose = dataclasses.make_dataclass("Loose", [(f.name, f.type) for f in dataclasses.fields(Record)])

    body = to_protobuf(chained(3))
    loose = native.decode_logs(body, Loose, base64.b64encode)
    plain = native.decode_logs(body, Record, base64.b64encode)
    assert [type(r) for r in loose] == [Loose] * 3
    assert [dataclasses.astuple(r) for r in loose] == [dataclasses.astuple(r) for r in plain]
    assert plain == decode_protobuf_python(body)


# ---- walk_plain: the chain walk's common case ----------------------------------------------------

def _walked(recs: list[Record], head_seq: int, head_hash: str, native_on: bool) -> Any:
    from secret_audit.store._ingest import IngestResult, _Walk

    batch = []
    for i, rec in enumerate(copy.deepcopy(recs)):
        p = prepare_python(i, rec, None, {})
        assert isinstance(p, Prepared)
        batch.append(p)
    batch.sort(key=lambda p: p.sequence)
    result = IngestResult()
    walk = _Walk(None, "s", None, head_seq, head_hash, batch, result,  # type: ignore[arg-type]
                 native.finish if native_on else finish_python, native.walk_plain if native_on else None)
    stored = [(p.sequence, p.row) for p in walk.run()]
    return (stored, walk.head_seq, walk.head_hash, walk.stored, result.duplicates, result.rejected,
            result.errors, [(f.kind, f.sequence, f.expected, f.actual, f.range_first, f.range_last)
                            for f in result.findings])


@needs_native
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    head=st.integers(0, 3),
    size=st.integers(1, 8),
    damage=st.lists(st.tuples(st.sampled_from(["drop", "repeat", "forge", "relink", "nul"]),
                              st.integers(0, 7)), max_size=3),
)
def test_walk_plain_agrees_with_the_python_walk(head: int, size: int, damage: list[tuple[str, int]]):
    # a stream whose first `head` records are already stored, then `size` more arrive, perhaps damaged
    full = chained(head + size)
    head_hash = full[head - 1]["attributes"]["audit.chain.hash"] if head else "0" * 64
    recs = full[head:]
    for kind, at in damage:
        at %= len(recs)
        if kind == "drop" and len(recs) > 1:
            del recs[at]
        elif kind == "repeat":
            recs.append(copy.deepcopy(recs[at]))
        elif kind == "forge":
            recs[at]["attributes"]["secret.name"] = "changed"  # the claimed hash no longer matches
        elif kind == "relink":
            recs[at]["attributes"]["audit.chain.prev"] = "e" * 64
            rehash(recs[at])
        elif kind == "nul":
            recs[at]["attributes"]["note"] = "a\x00b"  # refused by finish
    records = [_as_record(r) for r in recs]
    assert _walked(records, head, head_hash, True) == _walked(records, head, head_hash, False)


@needs_native
def test_walk_plain_takes_only_the_plain_case():
    full = chained(5)
    records = decode_protobuf(to_protobuf(full))
    batch = [prepare_python(i, r, None, {}) for i, r in enumerate(records)]
    assert native.walk_plain(batch, 0, "", "0" * 64) is True
    assert [p.computed for p in batch] == [p.claimed for p in batch]
    # after a stored head: the next sequence, linked to the head's hash
    tail = batch[2:]
    assert native.walk_plain(tail, 2, batch[1].claimed, "0" * 64) is True
    assert native.walk_plain(tail, 2, "f" * 64, "0" * 64) is False  # not linked to the head
    assert native.walk_plain(tail, 1, batch[0].claimed, "0" * 64) is False  # a gap before it
    assert native.walk_plain(batch[1:], 0, "", "0" * 64) is False  # does not start at 1


@needs_native
def test_walk_plain_leaves_a_relinked_gap_to_the_python_walk():
    # record 2 withheld, record 3 relinked to record 1 and rehashed: every link holds, but a
    # sequence is missing, which only the Python walk reports (a gap finding)
    full = chained(3)
    third = full[2]
    third["attributes"]["audit.chain.prev"] = full[0]["attributes"]["audit.chain.hash"]
    rehash(third)
    records = decode_protobuf(to_protobuf([full[0], third]))
    batch = [prepare_python(i, r, None, {}) for i, r in enumerate(records)]
    assert native.walk_plain(batch, 0, "", "0" * 64) is False
    walked = _walked(records, 0, "0" * 64, True)
    assert walked == _walked(records, 0, "0" * 64, False)
    assert [f[0] for f in walked[-1]] == ["gap"]
