"""OTLP decoding of every AnyValue kind: protobuf and JSON bodies give the same plain values."""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from secret_audit.store._otlp import Record, decode_json, decode_protobuf

# Tagged values, so an empty string and an unset value stay apart: (kind, payload).
_scalars = st.one_of(
    st.tuples(st.just("unset"), st.none()),
    st.tuples(st.just("string"), st.text(max_size=8)),
    st.tuples(st.just("int"), st.integers(-(1 << 63), (1 << 63) - 1)),
    st.tuples(st.just("double"), st.floats(allow_nan=False, allow_infinity=False)),
    st.tuples(st.just("bool"), st.booleans()),
    st.tuples(st.just("bytes"), st.binary(max_size=8)),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.tuples(st.just("array"), st.lists(inner, max_size=3)),
        st.tuples(st.just("kvlist"), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    ),
    max_leaves=8,
)


def _pb(tagged: tuple[str, Any]) -> AnyValue:
    kind, v = tagged
    out = AnyValue()
    if kind == "array":
        out.array_value.values.extend(_pb(x) for x in v)
        if not v:
            out.array_value.SetInParent()
    elif kind == "kvlist":
        out.kvlist_value.values.extend(KeyValue(key=k, value=_pb(x)) for k, x in v.items())
        if not v:
            out.kvlist_value.SetInParent()
    elif kind != "unset":
        setattr(out, kind + "_value", v)
    return out


def _plain(tagged: tuple[str, Any]) -> Any:
    """What the store must make of a value, written independently of the decoder."""
    kind, v = tagged
    if kind == "array":
        return [_plain(x) for x in v]
    if kind == "kvlist":
        return {k: _plain(x) for k, x in v.items()}
    if kind == "bytes":
        return base64.b64encode(v).decode()
    return v


@settings(max_examples=300, deadline=None)
@given(attributes=st.dictionaries(st.text(max_size=6), _values, max_size=6), body=_values)
def test_every_value_kind_decodes_the_same_from_protobuf_and_json(attributes, body):
    req = ExportLogsServiceRequest()
    record = req.resource_logs.add().scope_logs.add().log_records.add()
    record.event_name = "secret.access"
    record.attributes.extend(KeyValue(key=k, value=_pb(v)) for k, v in attributes.items())
    record.body.CopyFrom(_pb(body))
    expected = {k: _plain(v) for k, v in attributes.items()}
    from_pb = [Record(*r) for r in decode_protobuf(req.SerializeToString())]  # the C reader's are tuples
    from_json = decode_json(json_format.MessageToJson(req).encode())
    for decoded in (from_pb, from_json):
        assert len(decoded) == 1
        assert _same(decoded[0].attributes, expected)
        assert _same(decoded[0].body, _plain(body))


def _same(a: Any, b: Any) -> bool:
    # equal and of the same type all the way down: 1 == 1.0 == True would hide a wrong kind
    if isinstance(b, dict):
        return isinstance(a, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in b)
    if isinstance(b, list):
        return isinstance(a, list) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b
