"""Validation of OCSF events against the official schema (ocsf-json-schema's packaged copies, jsonschema-rs)."""

from __future__ import annotations

from functools import cache
from typing import Any

import jsonschema_rs
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

from secret_audit import ocsf

# the version we target, and the newest the package ships: 1.x only adds, so both must accept our events
VERSIONS = (ocsf.OCSF_VERSION, "1.8.0")


@cache
def _schema(version: str) -> OcsfJsonSchemaEmbedded:
    return OcsfJsonSchemaEmbedded(get_ocsf_schema(version=version))


@cache
def _validator(version: str, class_uid: int) -> Any:
    schema = _schema(version)
    name = "base_event" if class_uid == 0 else schema.lookup_class_name_from_uid(class_uid=class_uid)
    return jsonschema_rs.Draft202012Validator(schema.get_class_schema(class_name=name, profiles=[]))


def problems(event: dict[str, Any], version: str = ocsf.OCSF_VERSION) -> list[str]:
    """Why ``event`` is not a valid OCSF event of its class in ``version`` (empty when it is)."""
    event = {**event, "metadata": {**event["metadata"], "version": version}}
    found = [f"{'/'.join(map(str, e.instance_path))}: {e.message}"
             for e in _validator(version, event["class_uid"]).iter_errors(event)]
    return found or _captions(event, version)  # captions only of ids the schema accepted


def _captions(event: dict[str, Any], version: str) -> list[str]:
    """The *_name and caption fields must say what the schema says their ids mean (jsonschema checks ids only)."""
    raw = get_ocsf_schema(version=version) if version == ocsf.OCSF_VERSION else None
    if raw is None:
        return []
    klass = raw["base_event"] if event["class_uid"] == 0 else next(
        c for c in raw["classes"].values() if c["uid"] == event["class_uid"])
    attrs = klass["attributes"]
    out = []
    if event["class_name"] != klass["caption"]:
        out.append(f"class_name {event['class_name']!r} is not {klass['caption']!r}")
    for field, uid in (("severity", "severity_id"), ("status", "status_id")):
        if uid in event and event[uid] != 99:
            caption = attrs[uid]["enum"][str(event[uid])]["caption"]
            if event.get(field) != caption:
                out.append(f"{field} {event.get(field)!r} is not {caption!r}")
    if event["activity_id"] != 99:
        caption = attrs["activity_id"]["enum"][str(event["activity_id"])]["caption"]
        if event["activity_name"] != caption:
            out.append(f"activity_name {event['activity_name']!r} is not {caption!r}")
    type_caption = attrs["type_uid"]["enum"][str(event["type_uid"])]["caption"]
    if event["type_name"] != type_caption:
        out.append(f"type_name {event['type_name']!r} is not {type_caption!r}")
    return out


def record_of_log(item: Any) -> dict[str, Any]:
    """An SDK log record (an in-memory exporter's item) in the store's event shape, for ocsf.event."""
    rec = getattr(item, "log_record", item)
    resource = getattr(rec, "resource", None) or getattr(item, "resource", None)
    scope = getattr(item, "instrumentation_scope", None)
    severity = rec.severity_number
    return {
        "time_unix_nano": rec.timestamp, "observed_unix_nano": rec.observed_timestamp,
        "event_name": rec.event_name, "severity_number": getattr(severity, "value", severity),
        "severity_text": rec.severity_text, "body": rec.body,
        "trace_id": f"{rec.trace_id:032x}" if rec.trace_id else "",
        "span_id": f"{rec.span_id:016x}" if rec.span_id else "",
        "attributes": dict(rec.attributes or {}),
        "resource": dict(resource.attributes) if resource is not None else {},
        "scope_name": scope.name if scope else None, "scope_version": scope.version if scope else None,
    }
