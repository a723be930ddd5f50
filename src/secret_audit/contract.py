"""The audit record's contract, defined once so that producer, store and verifiers agree byte for byte.

Event names, attribute keys, severities, the chain's genesis, its canonical bytes and stamping, and the
bytes a signed checkpoint covers (docs/semantic-conventions.md). Trails already written depend on every
value here: change one only with a new version of the form it belongs to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = [
    "ACCESS_PATH",
    "ACTION",
    "CHAIN_HASH",
    "CHAIN_PREV",
    "CHECKPOINT_DOMAIN",
    "CHECKPOINT_FINAL",
    "CHECKPOINT_HEAD_HASH",
    "CHECKPOINT_HEAD_SEQUENCE",
    "CHECKPOINT_KEY_ID",
    "CHECKPOINT_PREV",
    "CHECKPOINT_RECORDS",
    "CHECKPOINT_SIGNATURE",
    "CLIENT_ADDRESS",
    "COUNT",
    "DROPPED_COUNT",
    "DROPPED_FIRST",
    "DROPPED_LAST",
    "DROPPED_REASON",
    "DURATION_MS",
    "ENDUSER_ID",
    "ERROR",
    "ERROR_TYPE",
    "EVENT_ACCESS",
    "EVENT_CHECKPOINT",
    "EVENT_CONTINUED",
    "EVENT_DROPPED",
    "EVENT_ID",
    "EVENT_QUERY",
    "EVENT_REFUSED",
    "GENESIS",
    "OPERATION",
    "OUTCOME",
    "PREDECESSOR_ID",
    "PREDECESSOR_SEQUENCE",
    "PRINCIPAL",
    "PRODUCER_EVENTS",
    "RESERVED_EVENT_NAMES",
    "RESULT",
    "SECRET_NAME",
    "SECRET_RESOURCE",
    "SECRET_SOURCE",
    "SECRET_VERSION",
    "SEQUENCE",
    "SEVERITY",
    "STREAM_ID",
    "canonical_bytes",
    "chain_hash",
    "checkpoint_bytes",
    "checkpoint_bytes_of",
    "is_audit_event",
    "severity_for",
    "stamp",
]

# ---- event names ---------------------------------------------------------------------------------

EVENT_ACCESS = "secret.access"
EVENT_DROPPED = "audit.dropped"
EVENT_QUERY = "audit.query"
EVENT_CHECKPOINT = "audit.checkpoint"
EVENT_REFUSED = "audit.refused"  # fail-closed calls refused because their record could not be made durable
# A stream's first record when it continues one that ended with its producer (the app's audit agent
# died): names that stream and the last sequence the agent had made durable.
EVENT_CONTINUED = "audit.stream.continued"
# Made only by the producer or the store itself: a custom event may use any other ``audit.<type>``.
RESERVED_EVENT_NAMES = frozenset(
    {EVENT_ACCESS, EVENT_DROPPED, EVENT_QUERY, EVENT_CHECKPOINT, EVENT_REFUSED, EVENT_CONTINUED}
)
# What only an instrumented process writes into its stream: a stream holding one of these is a producer's.
PRODUCER_EVENTS = frozenset({EVENT_ACCESS, EVENT_DROPPED, EVENT_CHECKPOINT, EVENT_REFUSED, EVENT_CONTINUED})


def is_audit_event(event_name: str) -> bool:
    """Audit records are ``secret.access`` and the ``audit.*`` family; everything else is telemetry."""
    return event_name == EVENT_ACCESS or event_name.startswith("audit.")


# ---- attribute keys ------------------------------------------------------------------------------

# attribute names, not secrets (ruff's S105 reads "SECRET_" as a password)
SECRET_NAME = "secret.name"  # noqa: S105
SECRET_SOURCE = "secret.source"  # noqa: S105
SECRET_RESOURCE = "secret.resource"  # noqa: S105
SECRET_VERSION = "secret.version"  # noqa: S105
OPERATION = "audit.operation"
ACTION = "audit.action"
OUTCOME = "audit.outcome"
RESULT = "audit.result"
DURATION_MS = "audit.duration_ms"
COUNT = "audit.count"
ERROR_TYPE = "error.type"
ERROR = "audit.error"
PRINCIPAL = "audit.principal"
ENDUSER_ID = "enduser.id"
CLIENT_ADDRESS = "client.address"
ACCESS_PATH = "audit.access_path"
# a record's place in its stream
EVENT_ID = "audit.event.id"
STREAM_ID = "audit.stream.id"
SEQUENCE = "audit.sequence"
CHAIN_PREV = "audit.chain.prev"
CHAIN_HASH = "audit.chain.hash"
# audit.dropped
DROPPED_COUNT = "audit.dropped.count"
DROPPED_REASON = "audit.dropped.reason"
DROPPED_FIRST = "audit.dropped.first_sequence"
DROPPED_LAST = "audit.dropped.last_sequence"
# audit.stream.continued
PREDECESSOR_ID = "audit.stream.predecessor.id"
PREDECESSOR_SEQUENCE = "audit.stream.predecessor.sequence"
# audit.checkpoint
CHECKPOINT_HEAD_SEQUENCE = "audit.checkpoint.head_sequence"
CHECKPOINT_HEAD_HASH = "audit.checkpoint.head_hash"
CHECKPOINT_RECORDS = "audit.checkpoint.records"
CHECKPOINT_KEY_ID = "audit.checkpoint.key_id"
CHECKPOINT_PREV = "audit.checkpoint.prev"
CHECKPOINT_FINAL = "audit.checkpoint.final"
CHECKPOINT_SIGNATURE = "audit.checkpoint.signature"

# ---- severities ----------------------------------------------------------------------------------

# outcome -> (OTel severity number, severity text)
SEVERITY: Mapping[str, tuple[int, str]] = {
    "success": (9, "INFO"),
    "not_found": (13, "WARN"),
    "denied": (13, "WARN"),
    "error": (17, "ERROR"),
}


def severity_for(outcome: str | None) -> tuple[int, str]:
    """The severity of an outcome: INFO for success, WARN for not_found or denied, ERROR otherwise."""
    return SEVERITY.get(outcome or "success", SEVERITY["error"])


# ---- the hash chain ------------------------------------------------------------------------------

GENESIS = "0" * 64


def canonical_bytes(
    *,
    time_unix_nano: int,
    event_name: str,
    severity_number: int,
    body: str,
    trace_id: str,
    span_id: str,
    attributes: Mapping[str, Any],
) -> bytes:
    """Serialise a record the one way every verifier reproduces: sorted-key JSON without the hash itself."""
    attrs = attributes
    if CHAIN_HASH in attributes:
        attrs = {k: v for k, v in attributes.items() if k != CHAIN_HASH}
    return orjson.dumps(
        {
            "attributes": attrs,
            "body": body,
            "event_name": event_name,
            "severity_number": severity_number,
            "span_id": span_id,
            "time_unix_nano": time_unix_nano,
            "trace_id": trace_id,
        },
        option=orjson.OPT_SORT_KEYS,
    )


def chain_hash(canonical: bytes) -> str:
    """Hash the canonical record, which already carries the previous hash in its attributes."""
    return hashlib.sha256(canonical).hexdigest()


def stamp(
    attributes: dict[str, Any],
    stream_id: str,
    sequence: int,
    prev: str,
    time_unix_nano: int,
    event_name: str,
    severity_number: int,
    body: str,
    trace_id: str = "",
    span_id: str = "",
) -> str:
    """Give a record its place in a stream (event id, stream, sequence, previous hash) and its own hash.

    Sets the five chain attributes in ``attributes`` and returns the hash; trace and span ids are hex.
    """
    attributes[EVENT_ID] = f"{stream_id}:{sequence}"
    attributes[STREAM_ID] = stream_id
    attributes[SEQUENCE] = sequence
    attributes[CHAIN_PREV] = prev
    digest = hashlib.sha256(
        canonical_bytes(
            time_unix_nano=time_unix_nano,
            event_name=event_name,
            severity_number=severity_number,
            body=body,
            trace_id=trace_id,
            span_id=span_id,
            attributes=attributes,
        )
    ).hexdigest()
    attributes[CHAIN_HASH] = digest
    return digest


# ---- signed checkpoints --------------------------------------------------------------------------

# Prefixed to what a checkpoint's signature covers, so that no other signed message can pass for one.
CHECKPOINT_DOMAIN = b"otel-secret-audit checkpoint v1\n"


def checkpoint_bytes(
    *,
    stream_id: str,
    sequence: int,
    time_unix_nano: int,
    head_sequence: int,
    head_hash: str,
    records: int,
    key_id: str,
    prev: str,
    final: bool,
) -> bytes:
    """The bytes a checkpoint's Ed25519 signature covers: the domain line, then sorted-key compact JSON."""
    return CHECKPOINT_DOMAIN + orjson.dumps(
        {
            "final": final,
            "head_hash": head_hash,
            "head_sequence": head_sequence,
            "key_id": key_id,
            "prev": prev,
            "records": records,
            "sequence": sequence,
            "stream_id": stream_id,
            "time_unix_nano": time_unix_nano,
        },
        option=orjson.OPT_SORT_KEYS,
    )


def checkpoint_bytes_of(attributes: Mapping[str, Any], time_unix_nano: int) -> bytes:
    """The signed bytes of a stored checkpoint; ValueError when a signed field is missing or mistyped."""
    fields: dict[str, Any] = {}
    for name, key, kind in _SIGNED:
        value = attributes.get(key)
        if type(value) is not kind:
            raise ValueError(f"{key} is missing or not {kind.__name__}")
        fields[name] = value
    return checkpoint_bytes(time_unix_nano=time_unix_nano, **fields)


_SIGNED = (
    ("stream_id", STREAM_ID, str),
    ("sequence", SEQUENCE, int),
    ("head_sequence", CHECKPOINT_HEAD_SEQUENCE, int),
    ("head_hash", CHECKPOINT_HEAD_HASH, str),
    ("records", CHECKPOINT_RECORDS, int),
    ("key_id", CHECKPOINT_KEY_ID, str),
    ("prev", CHECKPOINT_PREV, str),
    ("final", CHECKPOINT_FINAL, bool),
)
