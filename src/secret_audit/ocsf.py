"""Audit records as OCSF events, so SIEMs and security lakes that speak OCSF take our trail as it is.

Pure functions from a record (the store's event JSON, or a LogRecord in the same shape) to one OCSF
1.1.0 event. ``docs/ocsf.md`` is the mapping, field by field; the collector's ``transform/ocsf``
(collector-config/otelcol-audit.yaml) does the same in OTTL, and the tests hold the two together.
Hashed names stay hashed and no value is added: the event carries only what the record carries.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeGuard, TypeVar

import orjson

from secret_audit import contract

__all__ = [
    "API_EVENTS",
    "IP_PATTERN",
    "MAPPING_VERSION",
    "OCSF_VERSION",
    "UNMAPPED_EXTRAS",
    "event",
    "events",
    "json_line",
]

MAPPING_VERSION = "1"  # ours: raised whenever an OCSF attribute gets another source (docs/ocsf.md)
OCSF_VERSION = "1.1.0"  # the version Amazon Security Lake's custom sources take
PRODUCT_NAME = "otel-secret-audit"
# Records about a call (a secret read, a read of the trail) are API Activity; the rest are Base Event.
API_EVENTS = frozenset({contract.EVENT_ACCESS, contract.EVENT_QUERY})
# unmapped keys for what is not an attribute, named apart from any attribute
UNMAPPED_EXTRAS = ("otlp.severity_number", "otlp.span_id", "otlp.resource", "store.integrity")
# OCSF 1.1.0's own ip_t pattern (RE2 and Python alike): client.address goes to src_endpoint.ip only
# when it matches, so no event fails the schema for a non-IP value; the OTTL uses the same text.
IP_PATTERN = (
    r"((^\s*((([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5]).){3}([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]"
    r"|25[0-5]))\s*$)|(^\s*((([0-9A-Fa-f]{1,4}:){7}([0-9A-Fa-f]{1,4}|:))|(([0-9A-Fa-f]{1,4}:){6}"
    r"(:[0-9A-Fa-f]{1,4}|((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3})|:))"
    r"|(([0-9A-Fa-f]{1,4}:){5}(((:[0-9A-Fa-f]{1,4}){1,2})|:((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(.(25[0-5]"
    r"|2[0-4]\d|1\d\d|[1-9]?\d)){3})|:))|(([0-9A-Fa-f]{1,4}:){4}(((:[0-9A-Fa-f]{1,4}){1,3})|((:[0-9A-Fa-f]"
    r"{1,4})?:((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}))|:))|(([0-9A-Fa-f]"
    r"{1,4}:){3}(((:[0-9A-Fa-f]{1,4}){1,4})|((:[0-9A-Fa-f]{1,4}){0,2}:((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
    r"(.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}))|:))|(([0-9A-Fa-f]{1,4}:){2}(((:[0-9A-Fa-f]{1,4}){1,5})|"
    r"((:[0-9A-Fa-f]{1,4}){0,3}:((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}))"
    r"|:))|(([0-9A-Fa-f]{1,4}:){1}(((:[0-9A-Fa-f]{1,4}){1,6})|((:[0-9A-Fa-f]{1,4}){0,4}:((25[0-5]|2[0-4]\d"
    r"|1\d\d|[1-9]?\d)(.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}))|:))|(:(((:[0-9A-Fa-f]{1,4}){1,7})|((:"
    r"[0-9A-Fa-f]{1,4}){0,5}:((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}))"
    r"|:)))(%.+)?\s*$))"
)
_IP = re.compile(IP_PATTERN, re.ASCII)

# audit.operation -> (activity_id, activity_name) of API Activity; a write is Create when it created
_ACTIVITY = {"read": (2, "Read"), "metadata": (2, "Read"), "write": (3, "Update"),
             "delete": (4, "Delete"), "admin": (99, "Admin")}
_ACTIVITY_CAPTION = {0: "Unknown", 1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"}
_SEVERITY = ((1, 1, "Informational"), (13, 3, "Medium"), (17, 4, "High"), (21, 6, "Fatal"))  # from number
_STATUS = {"success": (1, "Success"), "not_found": (2, "Failure"), "denied": (2, "Failure"),
           "error": (2, "Failure")}
# attributes mapped one to one (when of their type): left out of unmapped. Derived fields (activity,
# severity, duration, count, status_detail) keep their source in unmapped, since they lose detail.
_ALL_CLASSES: dict[str, type] = {contract.EVENT_ID: str, contract.SEQUENCE: int, contract.STREAM_ID: str,
                                 contract.OUTCOME: str}
_API_CLASS: dict[str, type] = {contract.ACTION: str, contract.SECRET_SOURCE: str, contract.ERROR_TYPE: str,
                               contract.ERROR: str, contract.PRINCIPAL: str, contract.SECRET_NAME: str,
                               contract.SECRET_RESOURCE: str}


_T = TypeVar("_T")


def _of(value: Any, kind: type[_T]) -> TypeGuard[_T]:
    return type(value) is kind  # bool is not an int here, nor an int a float


def _ms(nanos: int) -> int:
    return nanos // 1_000_000


def _stamp(value: Any) -> int:
    """An OTLP time as int: the store's JSON sends int64 as a decimal string."""
    return int(value) if value not in (None, "") else 0


def _severity(number: int) -> tuple[int, str]:
    found = (0, "Unknown")
    for lowest, uid, caption in _SEVERITY:
        if number >= lowest:
            found = (uid, caption)
    return found if number <= 24 else (99, "Other")


def _received(value: Any) -> int | None:
    if not isinstance(value, str) or not value:
        return None
    moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return int(moment.timestamp() * 1000)


def _api_class(ev: dict[str, Any], attrs: Mapping[str, Any], resource: Mapping[str, Any]) -> list[str]:
    """API Activity's own attributes; returns the attributes mapped one to one."""
    operation = attrs.get(contract.OPERATION)
    activity, name = _ACTIVITY.get(operation, (0, "Unknown")) if _of(operation, str) else (0, "Unknown")
    if activity == 3 and attrs.get(contract.RESULT) == "created":
        activity, name = 1, "Create"
    ev.update(class_uid=6003, class_name="API Activity", category_uid=6, category_name="Application Activity",
              activity_id=activity, activity_name=name, type_uid=600300 + activity,
              type_name=f"API Activity: {_ACTIVITY_CAPTION[activity]}")
    done = [k for k, kind in _API_CLASS.items() if _of(attrs.get(k), kind)]
    action = attrs.get(contract.ACTION)
    api: dict[str, Any] = {"operation": action if _of(action, str) else "unknown"}
    if _of(source := attrs.get(contract.SECRET_SOURCE), str):
        api["service"] = {"name": source}
    pairs = (("error", contract.ERROR_TYPE), ("error_message", contract.ERROR))
    response = {key: attrs[k] for key, k in pairs if _of(attrs.get(k), str)}
    if response:
        api["response"] = response
    ev["api"] = api
    secret = {key: attrs[k] for key, k in (("name", contract.SECRET_NAME), ("uid", contract.SECRET_RESOURCE))
              if _of(attrs.get(k), str)}
    if secret:
        if _of(version := attrs.get(contract.SECRET_VERSION), str):
            secret["version"] = version
            done.append(contract.SECRET_VERSION)
        ev["resources"] = [{**secret, "type": "secret"}]
    actor: dict[str, Any] = {}
    if _of(principal := attrs.get(contract.PRINCIPAL), str):
        actor["user"] = {"name": principal}
    if _of(stream := attrs.get(contract.STREAM_ID), str):
        actor["process"] = {"uid": stream}
        if _of(service := resource.get("service.name"), str):
            actor["process"]["name"] = service
    ev["actor"] = actor
    endpoint: dict[str, Any] = {}
    if _of(service := resource.get("service.name"), str):
        endpoint["svc_name"] = service
    if _of(client := attrs.get(contract.CLIENT_ADDRESS), str) and _IP.match(client):
        endpoint["ip"] = client
        done.append(contract.CLIENT_ADDRESS)
    ev["src_endpoint"] = endpoint
    return done


def event(record: Mapping[str, Any]) -> dict[str, Any]:
    """One record (the store's event JSON, or a LogRecord in its shape) as one OCSF event."""
    attrs: Mapping[str, Any] = record.get("attributes") or {}
    resource: Mapping[str, Any] = record.get("resource") or {}
    event_name = str(record.get("event_name") or "")
    nanos = _stamp(record.get("time_unix_nano"))
    ev: dict[str, Any] = {}
    if event_name in API_EVENTS:
        done = _api_class(ev, attrs, resource)
    else:
        ev.update(class_uid=0, class_name="Base Event", category_uid=0, category_name="Uncategorized",
                  activity_id=99, activity_name=event_name, type_uid=99, type_name="Base Event: Other")
        done = []
    done += [k for k, kind in _ALL_CLASSES.items() if _of(attrs.get(k), kind)]
    number = int(record.get("severity_number") or 0)
    ev["severity_id"], ev["severity"] = _severity(number)
    ev["time"] = _ms(nanos)
    ev["timezone_offset"] = 0
    if isinstance(body := record.get("body"), str):
        ev["message"] = body
    if _of(outcome := attrs.get(contract.OUTCOME), str):
        ev["status_id"], ev["status"] = _STATUS.get(outcome, (99, "Other"))
        ev["status_code"] = outcome
    for key in (contract.RESULT, contract.DROPPED_REASON, "audit.refused.reason"):
        if _of(attrs.get(key), str):
            ev["status_detail"] = attrs[key]
            break
    for key in (contract.COUNT, contract.DROPPED_COUNT, "audit.refused.count"):
        if _of(attrs.get(key), int):
            ev["count"] = attrs[key]
            break
    duration = attrs.get(contract.DURATION_MS)
    if _of(duration, float) or _of(duration, int):
        ev["duration"] = int(duration)
    ev["metadata"] = _metadata(record, attrs, resource, event_name, nanos)
    unmapped = {k: v for k, v in attrs.items() if k not in done}
    unmapped["otlp.severity_number"] = number
    if span := record.get("span_id"):
        unmapped["otlp.span_id"] = span
    unmapped["otlp.resource"] = dict(resource)
    if record.get("integrity") is not None:
        unmapped["store.integrity"] = record["integrity"]
    ev["unmapped"] = unmapped
    return ev


def _metadata(record: Mapping[str, Any], attrs: Mapping[str, Any], resource: Mapping[str, Any],
              event_name: str, nanos: int) -> dict[str, Any]:
    product: dict[str, Any] = {"name": PRODUCT_NAME, "vendor_name": PRODUCT_NAME}
    if scope_version := record.get("scope_version"):
        product["version"] = scope_version
    meta: dict[str, Any] = {"version": OCSF_VERSION, "product": product, "event_code": event_name,
                            "original_time": str(nanos)}
    if scope := record.get("scope_name"):
        meta["log_provider"] = scope
    if severity_text := record.get("severity_text"):
        meta["log_level"] = severity_text
    for key, attribute, kind in (("uid", contract.EVENT_ID, str), ("log_name", contract.STREAM_ID, str),
                                 ("sequence", contract.SEQUENCE, int)):
        if _of(value := attrs.get(attribute), kind):
            meta[key] = value
    if trace := record.get("trace_id"):
        meta["correlation_uid"] = trace
    if observed := _stamp(record.get("observed_unix_nano")):
        meta["logged_time"] = _ms(observed)
    if (received := _received(record.get("received_at"))) is not None:
        meta["processed_time"] = received
    if _of(tenant := resource.get("service.namespace"), str) and tenant:
        meta["tenant_uid"] = tenant
    return meta


def events(records: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """Each record as its OCSF event, in order."""
    return (event(r) for r in records)


def json_line(record: Mapping[str, Any]) -> str:
    """One record's OCSF event as one line of JSON (keys sorted, so copies compare byte for byte)."""
    return orjson.dumps(event(record), option=orjson.OPT_SORT_KEYS).decode()
