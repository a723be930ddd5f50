"""The C extension (secret_audit.store._native) against its Python twins: same records, same bytes, same table.

Its whole surface is decode_logs (an OTLP request to record tuples) and encode_rows (rows to binary
COPY). The twins are the reference: the generated protobuf classes (_otlp.decode_protobuf_python) and
psycopg's COPY. Everything that decides (checks, hashing, the chain walk) is Python for either path.
"""

from __future__ import annotations

import copy
import math
import re
import secrets
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList

from secret_audit.store import _ingest, _otlp
from secret_audit.store._ingest import Ingestor, IngestResult
from secret_audit.store._otlp import (
    BadPayload,
    Record,
    decode_protobuf,
    decode_protobuf_python,
    protobuf_decoder,
)
from secret_audit.store._prepare import P_ROW, P_SEQUENCE, Prepared, finish, prepare
from secret_audit.store._walk import Walk
from secret_audit.store.config import load_store_config

from . import fuzz
from .conftest import opened_store
from .records import chained, rehash, to_protobuf

native = fuzz.load_native()
needs_native = pytest.mark.skipif(native is None, reason="the C extension is not built here")
STORE = Path(__file__).resolve().parents[2] / "src" / "secret_audit" / "store"
# the module's C files (_native.c, its init and method table, and its parts) and the header they share
SOURCES = sorted(STORE.glob("_native*.c"))
HEADER = STORE / "_native.h"
HEADERS = Path(sysconfig.get_paths()["include"]) / "Python.h"


def test_the_extension_is_built_wherever_it_can_be():
    # the build is optional (no compiler: the Python twins); where a compiler and Python's headers are
    # present, a missing extension means the install silently lost the fast path
    if shutil.which("cc") and HEADERS.exists():
        assert native is not None
        assert protobuf_decoder() is _otlp._decode_protobuf_native
        assert Ingestor().native


# ---- the limited API: nothing of the interpreter's internals ------------------------------------------

# What the code of turn 2 read or wrote behind the API's back (member descriptors and their slot
# offsets, type slots, object layouts) and the non-limited accessors; none may come back.
_INTERNALS = re.compile(
    r"structmember\.h|PyMemberDescr|d_member|->offset|tp_alloc|tp_dictoffset|tp_getattro|tp_setattro"
    r"|tp_name|->ob_|PyUnicode_(1BYTE|2BYTE|4BYTE)_DATA|PyUnicode_(GET_LENGTH|KIND|IS_ASCII|New)\b"
    r"|Py(List|Tuple|Bytes|Float)_(GET_ITEM|SET_ITEM|GET_SIZE|AS_STRING|AS_DOUBLE)|PyDict_GET_SIZE"
    r"|\b_Py[A-Za-z]|Py_BUILD_CORE|internal/pycore"
)


def _code(path: Path) -> str:
    return re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)  # comments may name what the code does not do


def _includes(code: str) -> list[str]:
    return re.findall(r"#include\s*[<\"](\w+)", code)


def test_the_c_source_uses_only_the_limited_api():
    assert STORE / "_native.c" in SOURCES
    assert len(SOURCES) > 1
    for path in [HEADER, *SOURCES]:
        assert [m.group(0) for m in _INTERNALS.finditer(_code(path))] == [], path.name
    # the limited API of Python 3.10, declared before Python.h is included (so that anything else
    # fails to compile), and no other header of the interpreter's
    header = _code(HEADER)
    assert header.index("#define Py_LIMITED_API 0x030A0000") < header.index("#include <Python.h>")
    assert _includes(header) == ["Python", "stdint", "string"]
    # every file gets that through the header, and includes nothing else
    for path in SOURCES:
        assert _includes(_code(path)) == ["_native"], path.name


@pytest.mark.skipif(not (shutil.which("cc") and HEADERS.exists()), reason="no C compiler or Python headers")
def test_the_c_source_compiles_against_the_limited_api_without_a_warning(tmp_path: Path):
    # a function outside the limited API is undeclared there, which -Werror turns into a failure
    out = tmp_path / "_native.abi3.so"
    done = subprocess.run(
        ["cc", "-shared", "-fPIC", "-O1", "-Wall", "-Wextra", "-Werror", "-Wimplicit-function-declaration",
         f"-I{HEADERS.parent}", *map(str, SOURCES), "-o", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert fuzz.load_native(str(out)).decode_logs(to_protobuf(chained(2)), _otlp.TYPED_ATTRS, _otlp._CODES)


@needs_native
def test_the_installed_build_is_the_stable_abi_one():
    assert native.__file__.endswith(".abi3.so"), native.__file__
    assert (native.MAX_DEPTH, native.MAX_RECORDS, native.MAX_ITEMS) == (
        _otlp.MAX_DEPTH, _otlp.MAX_RECORDS, _otlp.MAX_ITEMS)
    assert sorted(n for n in dir(native) if not n.startswith("_")) == [
        "MAX_DEPTH", "MAX_ITEMS", "MAX_RECORDS", "decode_logs", "encode_rows"]


# ---- decode_logs: OTLP protobuf -----------------------------------------------------------------------

def _native_decode(body: bytes) -> Any:
    return native.decode_logs(body, _otlp.TYPED_ATTRS, _otlp._CODES)


def _agrees(body: bytes) -> Any:
    """The C reader's answer, after checking it against the reference's (see fuzz.check)."""
    stats = fuzz.Stats()
    fuzz.check(native, body, stats)
    assert stats.differences == []
    got = None if stats.refused else _native_decode(body)
    # and the decoder the store uses gives the reference's answer either way
    try:
        expected = decode_protobuf_python(body)
    except BadPayload:
        with pytest.raises(BadPayload):
            decode_protobuf(body)
    else:
        assert fuzz.same(decode_protobuf(body), expected)
    return got


_any_values = st.recursive(
    st.builds(lambda v: AnyValue(string_value=v), st.text(max_size=8))
    | st.builds(lambda v: AnyValue(int_value=v), st.integers(-(2**63), 2**63 - 1))
    | st.builds(lambda v: AnyValue(double_value=v), st.floats())  # NaN too: compared bit for bit
    | st.builds(lambda v: AnyValue(bool_value=v), st.booleans())
    | st.builds(lambda v: AnyValue(bytes_value=v), st.binary(max_size=8))
    | st.just(AnyValue()),
    lambda inner: st.builds(lambda vs: AnyValue(array_value=ArrayValue(values=vs)), st.lists(inner, max_size=3))
    | st.builds(lambda kvs: AnyValue(kvlist_value=KeyValueList(values=kvs)),
                st.lists(st.builds(lambda k, v: KeyValue(key=k, value=v), st.text(max_size=4), inner),
                         max_size=3)),
    max_leaves=8,
)
# the typed columns' names among others, so that each kind of value lands in each of them
_kvs = st.lists(st.builds(lambda k, v: KeyValue(key=k, value=v),
                          st.sampled_from(["a", "", "ü", "secret.name", "audit.sequence", "audit.duration_ms",
                                           "audit.chain.hash", "enduser.id"]), _any_values), max_size=5)


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
    # (a saved example once failed here on a NaN: the readers agreed bit for bit, but NaN != NaN made
    # the records compare unequal; fuzz.same compares floats by their bits)
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
    head = fuzz._varint(number << 3 | wire)
    return head + (fuzz._varint(len(payload)) + payload if wire == 2 else payload)


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
def test_decode_logs_reads_the_producers_requests(signing_key: Path):
    # requests as the real audit pipeline exports them, checkpoints included: all taken, all the same
    bodies = fuzz.produced_requests(200, str(signing_key))
    records = [r for body in bodies for r in _agrees(body)]
    assert len(records) > 200  # the accesses and the signed checkpoints
    assert {r[5] for r in records} == {"secret.access", "audit.checkpoint"}


@needs_native
def test_decode_logs_picks_the_typed_columns_with_the_names_it_was_given():
    body = to_protobuf(chained(50, note="kept in JSONB") + chained(5, tenant="acme", **{"secret.name": 42}))
    records = _agrees(body)
    assert len(records) == 55
    assert records[0][9] is records[1][9]  # one dict per resource, as prepare's cache expects
    first, odd = Record(*records[0]), Record(*records[-1])
    assert first.typed == _otlp.typed_of(first.attributes)
    assert odd.typed[_otlp.TYPED_ATTRS.index("secret.name")] is None  # an int in a text column: JSONB
    # a typed attribute's key is the very str it was asked for, so lookups match by identity
    names = {id(n) for n in _otlp.TYPED_ATTRS}
    assert [k for k in first.attributes if id(k) in names] == [k for k in first.attributes if k in _otlp.TYPED]


@needs_native
@pytest.mark.parametrize("decode", ["native", "python", "json"])
@pytest.mark.parametrize(("limit", "over"), [
    ("MAX_DEPTH", "a value nested deeper than 32 levels"),
    ("MAX_ITEMS", "more than 10000 items in one attribute map, array or key-value list"),
    ("MAX_RECORDS", "more than 100000 log records in one request"),
])
def test_every_decoder_refuses_a_request_past_a_limit_and_takes_one_at_it(limit: str, over: str, decode: str):
    from google.protobuf import json_format

    def request(n: int) -> ExportLogsServiceRequest:
        req = ExportLogsServiceRequest()
        lr = req.resource_logs.add().scope_logs.add().log_records.add()
        if limit == "MAX_DEPTH":  # a body n levels deep
            value = AnyValue(string_value="leaf")
            for _ in range(n - 1):
                value = AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key="k", value=value)]))
            lr.body.CopyFrom(value)
        elif limit == "MAX_ITEMS":
            lr.body.CopyFrom(AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1)] * n)))
        else:
            req.resource_logs[0].scope_logs[0].log_records.extend([lr] * (n - 1))
        return req

    def decoded(req: ExportLogsServiceRequest) -> Any:
        if decode == "json":
            return _otlp.decode_json(json_format.MessageToJson(req).encode())
        body = req.SerializeToString()
        return decode_protobuf(body) if decode == "native" else decode_protobuf_python(body)

    at = getattr(_otlp, limit)
    assert len(decoded(request(at))) == (at if limit == "MAX_RECORDS" else 1)
    with pytest.raises(BadPayload, match=over):
        decoded(request(at + 1))


@needs_native
def test_the_differential_fuzz(request: pytest.FixtureRequest):
    # generated and mutated real requests through both readers, and random rows through both COPY
    # writers, for --fuzz-seconds (30 by default); scripts/fuzz-asan.sh runs the same under ASan
    seconds = request.config.getoption("--fuzz-seconds")
    if not seconds:
        pytest.skip("--fuzz-seconds 0")
    stats = fuzz.run(native, seconds)
    assert stats.differences == [], "\n".join(stats.differences[:3])
    # it reached the reader's accepting paths and its limits, not only its refusals
    assert stats.taken > 1000
    assert stats.refused > 0
    assert stats.rows > 100


@pytest.mark.skipif(not (shutil.which("gcc") and HEADERS.exists()), reason="no gcc or Python headers")
def test_the_fuzz_runs_under_address_sanitizer():
    root = STORE.parents[2]
    done = subprocess.run(["bash", "scripts/fuzz-asan.sh", "3", "1"], cwd=root, capture_output=True, text=True,
                          check=False, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "refused past a limit), " in done.stdout
    assert done.stdout.rstrip().endswith("; 0 differences")


# ---- encode_rows: binary COPY --------------------------------------------------------------------

_CODES = {"int8": "q", "int2": "h", "float8": "d", "text": "t", "bytea": "b"}
_COLUMN = {
    "int8": st.integers(-(2**63), 2**63 - 1),
    "int2": st.integers(-(2**15), 2**15 - 1),
    "float8": st.floats(),
    "text": st.text(st.characters(codec="utf-8", exclude_characters="\x00")),
    "bytea": st.binary(),
}


def _copy(rows: list[list[Any]], codes: bytes) -> bytes:
    return fuzz.COPY_HEADER + native.encode_rows(rows, codes) + fuzz.COPY_TRAILER


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
    assert _copy(rows, "".join(_CODES[t] for t in types).encode()) == fuzz.psycopg_copy(rows, types)


@needs_native
def test_encode_rows_keeps_floats_bit_for_bit():
    rows = [[v] for v in (math.inf, -math.inf, -0.0, 5e-324, math.nan)]
    assert _copy(rows, b"d") == fuzz.psycopg_copy(rows, ("float8",))


@needs_native
def test_the_ingest_layout_matches_psycopgs():
    # the ingest's own rows, codes and types: what the COPY would have been without the extension
    rows = []
    for i, rec in enumerate(decode_protobuf(to_protobuf(chained(20, note="x") + chained(3)))):
        p = prepare(i, rec, None, {})
        assert not isinstance(p, str)
        assert finish(p) is None
        p[P_ROW][0] = 1000 + i
        rows.append(p[P_ROW])
    assert (_ingest._SIGNATURE + native.encode_rows(rows, _ingest._CODES) + _ingest._TRAILER
            == fuzz.psycopg_copy(rows, _ingest._TYPES))


class _Str(str):
    def encode(self, *args: Any) -> bytes:  # pragma: no cover - must never be called
        raise AssertionError("encode_rows ran Python code")


@needs_native
def test_encode_rows_reads_a_subclass_by_its_value_without_running_its_code():
    assert _copy([[_Str("abc"), True]], b"tq") == fuzz.psycopg_copy([["abc", 1]], ("text", "int8"))


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
                results.append(ingestor.ingest(conn, protobuf_decoder(native_on)(body)))
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
    records = [Record(*r) for r in protobuf_decoder(native_on)(to_protobuf(chained(3)))]
    records[1] = records[1]._replace(**{field: "a\x00b"})
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


# ---- the chain walk's common case, judged in one pass ----------------------------------------------------

def _walked(recs: list[dict[str, Any]], head_seq: int, head_hash: str, plain: bool,
            monkeypatch: pytest.MonkeyPatch) -> Any:
    batch: list[Prepared] = []
    for i, rec in enumerate(decode_protobuf_python(to_protobuf(copy.deepcopy(recs)))):
        p = prepare(i, rec, None, {})
        assert not isinstance(p, str)
        batch.append(p)
    batch.sort(key=lambda p: p[P_SEQUENCE])
    result = IngestResult()
    with monkeypatch.context() as m:
        if not plain:
            m.setattr(Walk, "_plain", lambda self: False)
        walk = Walk(None, "s", None, head_seq, head_hash, batch, result)  # type: ignore[arg-type]
        stored = [(p[P_SEQUENCE], p[P_ROW]) for p in walk.run()]
    return (stored, walk.head_seq, walk.head_hash, walk.stored, result.duplicates, result.rejected,
            result.errors, [(f.kind, f.sequence, f.expected, f.actual, f.range_first, f.range_last)
                            for f in result.findings])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(
    head=st.integers(0, 3),
    size=st.integers(1, 8),
    damage=st.lists(st.tuples(st.sampled_from(["drop", "repeat", "forge", "relink", "nul"]),
                              st.integers(0, 7)), max_size=3),
)
def test_the_plain_walk_agrees_with_the_record_by_record_walk(head: int, size: int, damage: list[tuple[str, int]],
                                                              monkeypatch: pytest.MonkeyPatch):
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
    assert (_walked(recs, head, head_hash, True, monkeypatch)
            == _walked(recs, head, head_hash, False, monkeypatch))


def test_the_plain_walk_leaves_a_relinked_gap_to_the_record_by_record_walk(monkeypatch: pytest.MonkeyPatch):
    # record 2 withheld, record 3 relinked to record 1 and rehashed: every link holds, but a
    # sequence is missing, which only the record-by-record walk reports (a gap finding)
    full = chained(3)
    third = full[2]
    third["attributes"]["audit.chain.prev"] = full[0]["attributes"]["audit.chain.hash"]
    rehash(third)
    walked = _walked([full[0], third], 0, "0" * 64, True, monkeypatch)
    assert walked == _walked([full[0], third], 0, "0" * 64, False, monkeypatch)
    assert [f[0] for f in walked[-1]] == ["gap"]
