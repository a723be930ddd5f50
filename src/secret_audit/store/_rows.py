"""The mapping between an audit record and a table row, in both directions, so hashes can be recomputed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import orjson

from secret_audit import contract
from secret_audit.contract import is_audit_event

__all__ = [
    "COLUMNS",
    "COLUMN_TYPES",
    "TYPED",
    "Owner",
    "attributes_of",
    "canonical_of_row",
    "event_json",
    "link_of",
    "owner_of",
    "is_audit_event",
    "stamp_of",
    "stamp_of_time",
    "time_of_stamp",
]

# attribute -> (column, python type): typed columns hold the contract's fields; the rest go to JSONB.
TYPED: dict[str, tuple[str, type]] = {
    "secret.name": ("secret_name", str),
    "secret.source": ("secret_source", str),
    "secret.resource": ("secret_resource", str),
    "secret.version": ("secret_version", str),
    "audit.operation": ("operation", str),
    "audit.action": ("action", str),
    "audit.outcome": ("outcome", str),
    "audit.result": ("result", str),
    "error.type": ("error_type", str),
    "audit.error": ("error_message", str),
    "audit.principal": ("principal", str),
    "enduser.id": ("enduser_id", str),
    "client.address": ("client_address", str),
    "audit.access_path": ("access_path", str),
    "audit.event.id": ("event_id", str),
    "audit.stream.id": ("stream_id", str),
    "audit.chain.prev": ("chain_prev", str),
    "audit.chain.hash": ("chain_hash", str),
    # the two non-string fields come last: ingest checks the string ones in one pass
    "audit.duration_ms": ("duration_ms", float),
    "audit.sequence": ("sequence", int),
}
TYPED_ATTRS = tuple(TYPED)
TYPED_COLUMNS = tuple(col for col, _ in TYPED.values())

COLUMNS = (
    "time",
    "time_unix_nano",
    "observed_unix_nano",
    "event_name",
    "severity_number",
    "severity_text",
    "body",
    "trace_id",
    "span_id",
    "tenant",
    "service_name",
    "service_instance_id",
    "scope_name",
    "scope_version",
    *TYPED_COLUMNS,
    "attributes",
    "resource",
    "integrity",
)

_KIND_TYPES = {str: "text", int: "int8", float: "float8"}
# PostgreSQL types of COLUMNS, for binary COPY.
COLUMN_TYPES = (
    "timestamptz", "int8", "int8", "text", "int2", "text", "text", "text", "text", "text", "text", "text",
    "text", "text",
    *(_KIND_TYPES[kind] for _, kind in TYPED.values()),
    "jsonb", "jsonb", "text",
)
assert len(COLUMN_TYPES) == len(COLUMNS)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_DELTA = dt.timedelta
_PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
_PG_EPOCH_US = (_PG_EPOCH - _EPOCH) // _DELTA(microseconds=1)


def stamp_of(time_unix_nano: int) -> int:
    """A record timestamp as timestamptz's binary form (microseconds since 2000), which COPY takes as is."""
    # ingest sends the time column as int8: no datetime is made per row (binary COPY carries no type)
    return time_unix_nano // 1000 - _PG_EPOCH_US


def time_of_stamp(stamp: int) -> dt.datetime:
    """The moment a stamp_of() value stands for."""
    # timedelta(days, seconds, microseconds): positional arguments are cheaper than keywords
    return _PG_EPOCH + _DELTA(0, 0, stamp)


def stamp_of_time(moment: dt.datetime) -> int:
    """The stamp_of() value of a stored row's time."""
    return (moment - _PG_EPOCH) // _DELTA(microseconds=1)


def attributes_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """Rebuild the record's full attribute map from the typed columns and the JSONB remainder."""
    attrs = dict(row["attributes"])
    for key, (col, kind) in TYPED.items():
        value = row[col]
        if value is not None:
            attrs[key] = kind(value)
    return attrs


def canonical_of_row(row: Mapping[str, Any]) -> bytes:
    """The canonical bytes of a stored row, exactly as the producer hashed them."""
    return contract.canonical_bytes(
        time_unix_nano=int(row["time_unix_nano"]),
        event_name=row["event_name"],
        severity_number=int(row["severity_number"]),
        body=row["body"],
        trace_id=row["trace_id"],
        span_id=row["span_id"],
        attributes=attributes_of(row),
    )


def event_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The API's JSON form of a stored row: its columns plus the full attribute map."""
    out: dict[str, Any] = {
        "id": str(row["id"]),
        "time": row["time"].isoformat().replace("+00:00", "Z"),
        "time_unix_nano": str(row["time_unix_nano"]),
        "observed_unix_nano": None if row["observed_unix_nano"] is None else str(row["observed_unix_nano"]),
        "received_at": row["received_at"].isoformat().replace("+00:00", "Z"),
        "event_name": row["event_name"],
        "severity_number": row["severity_number"],
        "severity_text": row["severity_text"],
        "body": row["body"],
        "trace_id": row["trace_id"],
        "span_id": row["span_id"],
        "tenant": row["tenant"],
        "service_name": row["service_name"],
        "service_instance_id": row["service_instance_id"],
        "scope_name": row["scope_name"],
        "scope_version": row["scope_version"],
        "integrity": row["integrity"],
    }
    for col in TYPED_COLUMNS:
        out[col] = row[col]
    out["attributes"] = attributes_of(row)
    out["resource"] = row["resource"]
    return out


def dumps(value: Any) -> str:
    """JSON text for a JSONB column."""
    return orjson.dumps(value).decode()


Owner = tuple[str | None, str | None, str | None]


def owner_of(row: Mapping[str, Any]) -> Owner:
    """The producer a row names: service, instance and tenant (a stream's successor shares them)."""
    return row["service_name"], row["service_instance_id"], row["tenant"]


def link_of(row: Mapping[str, Any]) -> tuple[str, int] | None:
    """The stream a stream's first record says it continues, and that stream's last durable sequence
    (``audit.stream.continued``: the producer's audit agent died); None for any other row."""
    if row["event_name"] != contract.EVENT_CONTINUED or int(row["sequence"]) != 1:
        return None
    attrs = row["attributes"]
    before, last = attrs.get(contract.PREDECESSOR_ID), attrs.get(contract.PREDECESSOR_SEQUENCE)
    return (before, last) if isinstance(before, str) and type(last) is int else None
