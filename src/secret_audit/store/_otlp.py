"""Decoding OTLP/HTTP log requests (protobuf or JSON) into plain records the store can check and keep."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

try:
    from secret_audit.store import _native
except ImportError:  # not built: the generated protobuf classes decode every request
    _native = None  # type: ignore[assignment]

__all__ = [
    "BadPayload", "Record", "decode_json", "decode_protobuf", "decode_protobuf_python", "protobuf_decoder",
]


class BadPayload(ValueError):
    """The request body is not a valid OTLP logs request; the whole request is refused with 400."""


@dataclass(slots=True)
class Record:
    """One log record as received, with the resource and scope it came under."""

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


def _pb_value(v: AnyValue) -> Any:
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
        return [_pb_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _pb_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return None


def _pb_attributes(kvs: Any) -> dict[str, Any]:
    # The common kinds inline: this loop runs for every attribute of every record. A non-empty
    # string_value can only mean a string (another kind set in the oneof reads as ""), which
    # spares the oneof lookup for most attributes.
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
            out[kv.key] = _pb_value(v)
    return out


def decode_protobuf_python(body: bytes) -> list[Record]:
    """Parse an ``ExportLogsServiceRequest`` in binary protobuf form."""
    try:
        req = ExportLogsServiceRequest.FromString(body)
    except Exception as exc:  # protobuf raises DecodeError (or RuntimeError on deep nesting)
        raise BadPayload(f"malformed protobuf: {exc}") from None
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
                append(
                    Record(
                        lr.time_unix_nano,
                        lr.observed_time_unix_nano,
                        lr.severity_number,
                        lr.severity_text,
                        body_value.string_value if kind == "string_value" else _pb_value(body_value),
                        lr.event_name,
                        lr.trace_id.hex(),
                        lr.span_id.hex(),
                        _pb_attributes(lr.attributes),
                        resource,
                        scope_name,
                        scope_version,
                    )
                )
    return out


def _json_value(v: Any) -> Any:
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
        return [_json_value(x) for x in _list(_obj(v["arrayValue"]).get("values"))]
    if "kvlistValue" in v:
        return _json_kvs(_obj(v["kvlistValue"]).get("values"))
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


def _json_kvs(items: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in _list(items):
        kv = _obj(item)
        key = kv.get("key", "")  # proto3 JSON omits a default (empty) key
        if not isinstance(key, str):
            raise BadPayload("attribute key must be a string")
        out[key] = _json_value(kv.get("value"))
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
                lr = _obj(lr_item)
                out.append(
                    Record(
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


def _decode_protobuf_native(body: bytes) -> list[Record]:
    # the C reader takes the plain form; whatever it is unsure of, the generated classes decode or refuse
    records: list[Record] | None = _native.decode_logs(body, Record, base64.b64encode)
    return decode_protobuf_python(body) if records is None else records


def protobuf_decoder(native: bool = True) -> Callable[[bytes], list[Record]]:
    """The protobuf decoder to use: the C reader when it is built and wanted, else the generated classes."""
    return _decode_protobuf_native if native and _native is not None else decode_protobuf_python


decode_protobuf = protobuf_decoder()
