"""Decoding OTLP/HTTP log requests (protobuf or JSON) into record tuples the store can check and keep."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from secret_audit.store._rows import TYPED, TYPED_ATTRS

try:
    from secret_audit.store import _native
except ImportError:  # not built: the generated protobuf classes decode every request
    _native = None  # type: ignore[assignment]

__all__ = [
    "MAX_DEPTH", "MAX_ITEMS", "MAX_RECORDS", "BadPayload", "Record", "RecordTuple", "decode_json",
    "decode_protobuf", "decode_protobuf_python", "make_record", "protobuf_decoder", "typed_of",
]

# Limits on what one request may hold, the same for every decoder (the C reader's are compared with
# these by a test). Past one of them the request is refused whole with 400: the C reader before it
# makes the objects, the generated classes after they have parsed the request. Lengths need no limit
# of their own: each is a slice of the body, which the server bounds (..._STORE_MAX_BODY_BYTES).
MAX_DEPTH = 32  # AnyValue nesting: a body or attribute value is 1, each array or kvlist adds 1
MAX_RECORDS = 100_000  # log records in one request
MAX_ITEMS = 10_000  # KeyValues in one attribute map or kvlist, values in one array

_TOO_DEEP = f"a value nested deeper than {MAX_DEPTH} levels"
_TOO_MANY_RECORDS = f"more than {MAX_RECORDS} log records in one request"
_TOO_MANY_ITEMS = f"more than {MAX_ITEMS} items in one attribute map, array or key-value list"


class BadPayload(ValueError):
    """The request body is not a valid OTLP logs request; the whole request is refused with 400."""


class Record(NamedTuple):
    """One log record as received, with the resource and scope it came under, and its typed columns."""

    time_unix_nano: int
    observed_unix_nano: int
    severity_number: int
    severity_text: str
    body: Any
    event_name: str
    trace_id: str
    span_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope_name: str
    scope_version: str
    # for each attribute of _rows.TYPED, in its order: the value when it has the column's type, else None
    typed: tuple[Any, ...]


# What ingest takes: a Record, or the plain tuple in Record's order that the C reader makes.
RecordTuple = tuple[int, int, int, str, Any, str, str, str, dict[str, Any], dict[str, Any], str, str,
                    tuple[Any, ...]]

_KINDS = tuple(kind for _, kind in TYPED.values())
_CODES = bytes({str: ord("t"), float: ord("d"), int: ord("q")}[kind] for kind in _KINDS)


def typed_of(attributes: Mapping[str, Any]) -> tuple[Any, ...]:
    """The typed columns of an attribute map: each one's value when it has the column's type (exactly: a
    bool is not an int), else None; any other value stays in the JSONB remainder, as sent."""
    return tuple([v if type(v) is kind else None
                  for v, kind in zip(map(attributes.get, TYPED_ATTRS), _KINDS, strict=True)])


def make_record(
    time_unix_nano: int, observed_unix_nano: int, severity_number: int, severity_text: str, body: Any,
    event_name: str, trace_id: str, span_id: str, attributes: dict[str, Any], resource: dict[str, Any],
    scope_name: str, scope_version: str,
) -> Record:
    """A Record with its typed columns read from its attributes."""
    return Record(time_unix_nano, observed_unix_nano, severity_number, severity_text, body, event_name,
                  trace_id, span_id, attributes, resource, scope_name, scope_version, typed_of(attributes))


def _pb_value(v: AnyValue, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise BadPayload(_TOO_DEEP)
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return v.int_value
    if kind == "double_value":
        return v.double_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "array_value":
        values = v.array_value.values
        if len(values) > MAX_ITEMS:
            raise BadPayload(_TOO_MANY_ITEMS)
        return [_pb_value(x, depth + 1) for x in values]
    if kind == "kvlist_value":
        return _pb_attributes(v.kvlist_value.values, depth + 1)
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return None


def _pb_attributes(kvs: Any, depth: int = 1) -> dict[str, Any]:
    # The common kinds inline: this loop runs for every attribute of every record. A non-empty
    # string_value can only mean a string (another kind set in the oneof reads as ""), which
    # spares the oneof lookup for most attributes.
    if len(kvs) > MAX_ITEMS:
        raise BadPayload(_TOO_MANY_ITEMS)
    if kvs and depth > MAX_DEPTH:  # every value here is at this depth, a string as much as a list
        raise BadPayload(_TOO_DEEP)
    out: dict[str, Any] = {}
    for kv in kvs:
        v = kv.value
        text = v.string_value
        if text:
            out[kv.key] = text
            continue
        kind = v.WhichOneof("value")
        if kind == "int_value":
            out[kv.key] = v.int_value
        elif kind == "double_value":
            out[kv.key] = v.double_value
        else:
            out[kv.key] = _pb_value(v, depth)
    return out


def decode_protobuf_python(body: bytes) -> list[Record]:
    """Parse an ``ExportLogsServiceRequest`` in binary protobuf form."""
    try:
        req = ExportLogsServiceRequest.FromString(body)
    except Exception as exc:  # protobuf raises DecodeError (or RuntimeError on deep nesting)
        raise BadPayload(f"malformed protobuf: {exc}") from None
    if sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs) > MAX_RECORDS:
        raise BadPayload(_TOO_MANY_RECORDS)
    out: list[Record] = []
    append = out.append
    for rl in req.resource_logs:
        resource = _pb_attributes(rl.resource.attributes)
        for sl in rl.scope_logs:
            scope_name = sl.scope.name
            scope_version = sl.scope.version
            for lr in sl.log_records:
                body_value = lr.body
                kind = body_value.WhichOneof("value")
                attributes = _pb_attributes(lr.attributes)
                append(
                    Record(
                        lr.time_unix_nano,
                        lr.observed_time_unix_nano,
                        lr.severity_number,
                        lr.severity_text,
                        body_value.string_value if kind == "string_value" else _pb_value(body_value, 1),
                        lr.event_name,
                        lr.trace_id.hex(),
                        lr.span_id.hex(),
                        attributes,
                        resource,
                        scope_name,
                        scope_version,
                        typed_of(attributes),
                    )
                )
    return out


def _json_value(v: Any, depth: int = 1) -> Any:
    if depth > MAX_DEPTH:
        raise BadPayload(_TOO_DEEP)
    if not isinstance(v, dict) or not v:
        return None
    if "stringValue" in v:
        return _expect(v["stringValue"], str)
    if "intValue" in v:
        return _json_int(v["intValue"], "intValue")
    if "doubleValue" in v:
        d = v["doubleValue"]
        if isinstance(d, bool) or not isinstance(d, (int, float, str)):
            raise BadPayload("doubleValue must be a number")
        try:
            return float(d)
        except ValueError:
            raise BadPayload("doubleValue must be a number") from None
    if "boolValue" in v:
        return _expect(v["boolValue"], bool)
    if "arrayValue" in v:
        return [_json_value(x, depth + 1) for x in _items(_obj(v["arrayValue"]).get("values"))]
    if "kvlistValue" in v:
        return _json_kvs(_obj(v["kvlistValue"]).get("values"), depth + 1)
    if "bytesValue" in v:
        return _expect(v["bytesValue"], str)
    return None


def _expect(v: Any, kind: type) -> Any:
    if not isinstance(v, kind):
        raise BadPayload(f"expected a {kind.__name__}, got {type(v).__name__}")
    return v


def _obj(v: Any) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise BadPayload(f"expected an object, got {type(v).__name__}")
    return v


def _list(v: Any) -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise BadPayload(f"expected an array, got {type(v).__name__}")
    return v


def _items(v: Any) -> list[Any]:
    items = _list(v)
    if len(items) > MAX_ITEMS:
        raise BadPayload(_TOO_MANY_ITEMS)
    return items


def _json_int(v: Any, what: str) -> int:
    if isinstance(v, bool):
        raise BadPayload(f"{what} must be an integer")
    if isinstance(v, str):
        with contextlib.suppress(ValueError):
            v = int(v)
    if isinstance(v, int) and not isinstance(v, bool):
        if not -(1 << 63) <= v < (1 << 64):
            raise BadPayload(f"{what} is out of the 64-bit range")
        return v
    raise BadPayload(f"{what} must be an integer (a JSON number or a decimal string)")


def _json_kvs(items: Any, depth: int = 1) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in _items(items):
        kv = _obj(item)
        key = kv.get("key", "")  # proto3 JSON omits a default (empty) key
        if not isinstance(key, str):
            raise BadPayload("attribute key must be a string")
        out[key] = _json_value(kv.get("value"), depth)
    return out


def _hex_id(v: Any, size: int, what: str) -> str:
    if v is None or v == "":
        return ""
    if not isinstance(v, str):
        raise BadPayload(f"{what} must be a hex string")
    try:
        raw = bytes.fromhex(v)
    except ValueError:
        raise BadPayload(f"{what} must be a hex string") from None
    if len(raw) != size:
        raise BadPayload(f"{what} must be {size} bytes")
    return raw.hex()


def _severity(v: Any) -> int:
    if isinstance(v, str) and v.startswith("SEVERITY_NUMBER_"):
        from opentelemetry.proto.logs.v1.logs_pb2 import SeverityNumber

        try:
            return int(SeverityNumber.Value(v))
        except ValueError:
            raise BadPayload(f"unknown severityNumber {v!r}") from None
    return _json_int(v if v is not None else 0, "severityNumber")


def decode_json(body: bytes) -> list[Record]:
    """Parse an OTLP/JSON logs request (proto3 JSON mapping, hex trace and span ids)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadPayload(f"malformed JSON: {exc}") from None
    out: list[Record] = []
    for rl_item in _list(_obj(doc).get("resourceLogs")):
        rl = _obj(rl_item)
        resource = _json_kvs(_obj(rl.get("resource")).get("attributes"))
        for sl_item in _list(rl.get("scopeLogs")):
            sl = _obj(sl_item)
            scope = _obj(sl.get("scope"))
            for lr_item in _list(sl.get("logRecords")):
                if len(out) == MAX_RECORDS:
                    raise BadPayload(_TOO_MANY_RECORDS)
                lr = _obj(lr_item)
                out.append(
                    make_record(
                        _json_int(lr.get("timeUnixNano", 0), "timeUnixNano"),
                        _json_int(lr.get("observedTimeUnixNano", 0), "observedTimeUnixNano"),
                        _severity(lr.get("severityNumber")),
                        _expect(lr.get("severityText", ""), str),
                        _json_value(lr.get("body")),
                        _expect(lr.get("eventName", ""), str),
                        _hex_id(lr.get("traceId"), 16, "traceId"),
                        _hex_id(lr.get("spanId"), 8, "spanId"),
                        _json_kvs(lr.get("attributes")),
                        resource,
                        _expect(scope.get("name", ""), str),
                        _expect(scope.get("version", ""), str),
                    )
                )
    return out


def _decode_protobuf_native(body: bytes) -> Sequence[RecordTuple]:
    # the C reader takes the plain form; whatever it is unsure of, the generated classes decode or refuse
    try:
        records = _native.decode_logs(body, TYPED_ATTRS, _CODES)
    except ValueError as exc:  # past one of the limits, which the generated classes would refuse too
        raise BadPayload(str(exc)) from None
    return decode_protobuf_python(body) if records is None else records


def protobuf_decoder(native: bool = True) -> Callable[[bytes], Sequence[RecordTuple]]:
    """The protobuf decoder to use: the C reader when it is built and wanted, else the generated classes."""
    return _decode_protobuf_native if native and _native is not None else decode_protobuf_python


decode_protobuf = protobuf_decoder()
