"""One received record to one table row: the contract's checks first, then the hash while COPY streams.

This is the store's per-record hot loop, in Python whichever decoder made the records: the C reader
hands over tuples with the typed columns already picked out (see _otlp.Record), so what is left here
is the contract's policy, which has one definition.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from secret_audit import contract
from secret_audit.store._otlp import RecordTuple
from secret_audit.store._rows import _PG_EPOCH_US, COLUMNS, TYPED, TYPED_ATTRS

__all__ = [
    "INTEGRITY", "JSONB_EMPTY", "P_COMPUTED", "P_INDEX", "P_REC", "P_ROW", "P_SEQUENCE", "Prepared",
    "ROW_ID", "ROW_PREV", "ROW_CLAIMED", "ROW_SEQUENCE", "ROW_STREAM", "ROW_TENANT", "ROW_TIME",
    "finish", "jsonb", "prepare",
]

_BIGINT_MAX = (1 << 63) - 1

# A row is ("id", *COLUMNS), as COPY takes it: the id slot is filled when ids are drawn, just before COPY.
ROW_ID = 0
ROW_TIME = 1 + COLUMNS.index("time")
ROW_TENANT = 1 + COLUMNS.index("tenant")
ROW_STREAM = 1 + COLUMNS.index("stream_id")
ROW_SEQUENCE = 1 + COLUMNS.index("sequence")
ROW_PREV = 1 + COLUMNS.index("chain_prev")
ROW_CLAIMED = 1 + COLUMNS.index("chain_hash")
_ROW_REST = 1 + COLUMNS.index("attributes")
INTEGRITY = 1 + COLUMNS.index("integrity")
assert COLUMNS[COLUMNS.index("scope_version") + 1:COLUMNS.index("attributes")] == tuple(
    column for column, _ in TYPED.values()), "the typed columns follow scope_version, in TYPED's order"

# A prepared record is a list (one is made per record, and a class's __init__ would cost more than
# its checks): [sequence, index in the request, row, the record, its recomputed hash].
Prepared = list[Any]
P_SEQUENCE, P_INDEX, P_ROW, P_REC, P_COMPUTED = range(5)

# where the checked attributes are in a record's typed columns
_EVENT_ID, _STREAM_ID, _PREV, _CLAIMED, _SEQUENCE = (
    TYPED_ATTRS.index(name) for name in (contract.EVENT_ID, contract.STREAM_ID, contract.CHAIN_PREV,
                                          contract.CHAIN_HASH, contract.SEQUENCE))
_TYPED_SET = frozenset(TYPED)
_N_TYPED = len(TYPED)
_HASH_KEY = contract.CHAIN_HASH
_canonical = contract.canonical_bytes
# JSONB columns travel as jsonb's binary wire form (a version byte, then the JSON text), built here
# once: a request's few resources once each, the empty remainder of a fully typed record never.
JSONB_EMPTY = b"\x01{}"


def jsonb(value: Any) -> bytes:
    """A map in jsonb's binary COPY form."""
    return b"\x01" + orjson.dumps(value) if value else JSONB_EMPTY


def _are_hashes(prev: Any, claimed: Any) -> bool:
    # both at once, the common case: one round trip over the 128 characters (fromhex also takes upper
    # case and spaces, which the round trip refuses)
    if prev is None or claimed is None or len(prev) != 64 or len(claimed) != 64:
        return False
    both: str = prev + claimed
    try:
        return bytes.fromhex(both).hex() == both
    except ValueError:
        return False


def _is_hash(v: Any) -> bool:
    return _are_hashes(v, v)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def prepare(
    index: int, rec: RecordTuple, scope_tenant: str | None, resources: dict[int, Any] | None = None
) -> Prepared | str:
    """Check one audit record against the contract; its prepared form, or the reason it is refused.

    The row is whole but for its id, its JSONB remainder and its integrity, which finish and the chain
    walk set. ``resources`` caches what each resource (a dict shared by a request's records) gives."""
    (time_unix_nano, observed, severity, severity_text, body, _, _, _, _, resource, scope_name,
     scope_version, typed) = rec
    stream = typed[_STREAM_ID]  # each typed column holds a value of its type or None
    seq = typed[_SEQUENCE]
    if not stream:
        return "missing audit.stream.id"
    if "\x00" in stream:  # it reaches the request's statements before finish checks the hashed texts
        return "NUL characters cannot be stored"
    if seq is None or not 1 <= seq <= _BIGINT_MAX:
        return "audit.sequence must be an integer >= 1"
    if typed[_EVENT_ID] != f"{stream}:{seq}":
        return "audit.event.id must be '<audit.stream.id>:<audit.sequence>'"
    if not _are_hashes(typed[_PREV], typed[_CLAIMED]):
        if not _is_hash(typed[_PREV]):
            return "audit.chain.prev must be 64 lowercase hex digits"
        return "audit.chain.hash must be 64 lowercase hex digits"
    if body is not None and type(body) is not str:
        return "body must be a string"
    if not 0 <= time_unix_nano <= _BIGINT_MAX or not 0 <= observed <= _BIGINT_MAX:
        return "timestamp out of range"
    if not 0 <= severity <= 24:
        return "severity_number must be 0..24"
    # the other texts that reach a column unhashed (the hashed ones are checked by finish)
    if "\x00" in severity_text or "\x00" in scope_name or "\x00" in scope_version:
        return "NUL characters cannot be stored"
    key = id(resource)
    facts = resources.get(key) if resources is not None else None
    if facts is None:
        facts = _resource_facts(resource)
        if resources is not None:
            resources[key] = facts
    problem, tenant, service, instance, resource_jsonb = facts
    if problem:
        return problem
    if scope_tenant is not None:
        if tenant not in (None, scope_tenant):
            return f"tenant {tenant!r} is outside this token's scope"
        tenant = scope_tenant
    stamp = (time_unix_nano or observed or time.time_ns()) // 1000 - _PG_EPOCH_US  # _rows.stamp_of, inline
    row = [None, stamp, time_unix_nano, observed, rec[5], severity, severity_text, body, rec[6], rec[7],
           tenant, service, instance, scope_name, scope_version, *typed, None, resource_jsonb, "ok"]
    return [seq, index, row, rec, ""]


def _resource_facts(
    resource: dict[str, Any],
) -> tuple[str | None, str | None, str | None, str | None, bytes]:
    """Why a resource cannot be stored (or None), its tenant, service name, instance id and jsonb form."""
    namespace = resource.get("service.namespace")
    service = resource.get("service.name")
    instance = resource.get("service.instance.id")
    problem = "NUL characters cannot be stored" if _has_nul(resource) else None
    try:
        encoded = jsonb(resource)
    except TypeError as exc:  # orjson's JSONEncodeError is a TypeError
        problem, encoded = problem or f"resource cannot be stored as JSON: {exc}", JSONB_EMPTY
    return (
        problem,
        namespace if isinstance(namespace, str) and namespace else None,
        service if isinstance(service, str) else None,
        instance if isinstance(instance, str) else None,
        encoded,
    )


def finish(p: Prepared) -> str | None:
    """Recompute the record's hash (into p[P_COMPUTED]) and complete its row with the attributes that
    have no column; returns the reason when it cannot be stored."""
    rec = p[P_REC]
    attrs = rec[8]
    # the producer's canonical form hashes every attribute but the hash itself; a plain copy without it
    # is cheaper than the filtering canonical_bytes would otherwise do
    hashed = attrs.copy()
    del hashed[_HASH_KEY]
    try:
        canonical = _canonical(time_unix_nano=rec[0], event_name=rec[5], severity_number=rec[2], body=rec[4],
                               trace_id=rec[6], span_id=rec[7], attributes=hashed)
    except (TypeError, ValueError) as exc:
        return f"attributes cannot be canonicalised: {exc}"
    # orjson writes NUL as \u0000; only then is the exact (slower) check needed. Most records have no
    # backslash at all, which one memchr finds out.
    if b"\\" in canonical and b"\\u0000" in canonical and (
        _has_nul(attrs) or _has_nul(rec[4]) or _has_nul(rec[5])
    ):
        return "NUL characters cannot be stored"
    p[P_COMPUTED] = contract.chain_hash(canonical)
    typed = rec[12]
    # an attribute has its column when its value has the column's type; any other stays in JSONB as sent
    if len(attrs) == _N_TYPED - typed.count(None):
        rest = JSONB_EMPTY  # the common case: every attribute has its column
    else:
        rest = jsonb({k: v for k, v in attrs.items()
                      if k not in _TYPED_SET or typed[TYPED_ATTRS.index(k)] is None})
    p[P_ROW][_ROW_REST] = rest
    return None
