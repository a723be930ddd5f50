"""One received record to one table row: contract checks first, then hash and row while COPY streams."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import orjson

from secret_audit import contract
from secret_audit.store._otlp import Record
from secret_audit.store._rows import _PG_EPOCH_US, COLUMNS, TYPED, stamp_of

try:
    from secret_audit.store import _native
except ImportError:  # not built (no C compiler at install time): the Python twins do the same work
    _native = None  # type: ignore[assignment]

__all__ = [
    "INTEGRITY", "JSONB_EMPTY", "ROW_ID", "Prepared", "finish", "finish_python", "finisher",
    "jsonb", "prepare", "prepare_python", "preparer",
]

_BIGINT_MAX = (1 << 63) - 1

@dataclass(slots=True)
class Prepared:
    """A record that passed the cheap checks; its hash and row are made while the COPY streams."""

    index: int
    stream_id: str
    sequence: int
    prev: str
    claimed: str
    tenant: str | None
    stamp: int  # the row's time, as _rows.stamp_of gives it
    service_name: str | None
    instance: str | None
    resource_jsonb: bytes
    rec: Record
    computed: str = ""
    row: list[Any] = field(default_factory=list)


# A row is ("id", *COLUMNS): the id slot is filled when ids are drawn, just before COPY.
ROW_ID = 0
INTEGRITY = 1 + COLUMNS.index("integrity")
_TYPED_ITEMS = tuple((key, kind) for key, (_, kind) in TYPED.items())
_TYPED_SET = frozenset(TYPED)
_STR_NAMES = tuple(name for name, kind in _TYPED_ITEMS if kind is str)
_STR_OR_NONE = frozenset({str, type(None)})
assert tuple(TYPED)[len(_STR_NAMES):] == ("audit.duration_ms", "audit.sequence")
_HASH_KEY = contract.CHAIN_HASH
# JSONB columns travel as jsonb's binary wire form (a version byte, then the JSON text), built here
# once: a request's few resources once each, the empty remainder of a fully typed record never.
JSONB_EMPTY = b"\x01{}"


def jsonb(value: Any) -> bytes:
    """A map in jsonb's binary COPY form."""
    return b"\x01" + orjson.dumps(value) if value else JSONB_EMPTY


def _is_hash(v: Any) -> TypeGuard[str]:
    # 64 lowercase hex digits: fromhex also takes upper case and spaces, which the round trip refuses
    if type(v) is not str or len(v) != 64:
        return False
    try:
        return bytes.fromhex(v).hex() == v
    except ValueError:
        return False


def _are_hashes(prev: Any, claimed: Any) -> bool:
    # both at once, the common case: one round trip over the 128 characters
    if type(prev) is not str or type(claimed) is not str or len(prev) != 64 or len(claimed) != 64:
        return False
    both = prev + claimed
    try:
        return bytes.fromhex(both).hex() == both
    except ValueError:
        return False


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def prepare_python(
    index: int, rec: Record, scope_tenant: str | None, resources: dict[int, Any] | None = None
) -> Prepared | str:
    """Check one audit record against the contract; return its row or the reason it is refused."""
    attrs = rec.attributes
    stream = attrs.get("audit.stream.id")
    seq = attrs.get("audit.sequence")
    prev: Any = attrs.get("audit.chain.prev")  # both checked by _are_hashes
    claimed: Any = attrs.get(_HASH_KEY)
    if not isinstance(stream, str) or not stream:
        return "missing audit.stream.id"
    if type(seq) is not int or not 1 <= seq <= _BIGINT_MAX:
        return "audit.sequence must be an integer >= 1"
    if attrs.get("audit.event.id") != f"{stream}:{seq}":
        return "audit.event.id must be '<audit.stream.id>:<audit.sequence>'"
    if not _are_hashes(prev, claimed):
        if not _is_hash(prev):
            return "audit.chain.prev must be 64 lowercase hex digits"
        return "audit.chain.hash must be 64 lowercase hex digits"
    body = rec.body
    if body is not None and not isinstance(body, str):
        return "body must be a string"
    if not 0 <= rec.time_unix_nano <= _BIGINT_MAX or not 0 <= rec.observed_unix_nano <= _BIGINT_MAX:
        return "timestamp out of range"
    if not 0 <= rec.severity_number <= 24:
        return "severity_number must be 0..24"
    # the other texts that reach a column unhashed (the hashed ones are checked by finish)
    if "\x00" in rec.severity_text or "\x00" in rec.scope_name or "\x00" in rec.scope_version:
        return "NUL characters cannot be stored"
    resource = rec.resource
    # a request's records share a few resources: read each once
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
    stamp = stamp_of(rec.time_unix_nano or rec.observed_unix_nano or time.time_ns())
    return Prepared(index, stream, seq, prev, claimed, tenant, stamp, service, instance, resource_jsonb, rec)


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


def finish_python(p: Prepared) -> str | None:
    """Recompute the record's hash and build its row; returns the reason when it cannot be stored."""
    rec = p.rec
    attrs = rec.attributes
    # the producer's canonical form hashes every attribute but the hash itself; a plain copy without it
    # is cheaper than the filtering the producer's function would otherwise do
    hashed = attrs.copy()
    del hashed[_HASH_KEY]
    try:
        canonical = contract.canonical_bytes(
            time_unix_nano=rec.time_unix_nano,
            event_name=rec.event_name,
            severity_number=rec.severity_number,
            body=rec.body,
            trace_id=rec.trace_id,
            span_id=rec.span_id,
            attributes=hashed,
        )
    except (TypeError, ValueError) as exc:
        return f"attributes cannot be canonicalised: {exc}"
    # orjson writes NUL as \u0000; only then is the exact (slower) check needed. Most records have no
    # backslash at all, which one memchr finds out.
    if b"\\" in canonical and b"\\u0000" in canonical and (
        _has_nul(attrs) or _has_nul(rec.body) or _has_nul(rec.event_name)
    ):
        return "NUL characters cannot be stored"
    p.computed = contract.chain_hash(canonical)
    typed = list(map(attrs.get, _STR_NAMES))
    duration = attrs.get("audit.duration_ms")
    present = len(_STR_NAMES) + 1 - typed.count(None)  # + audit.sequence, always there
    if _STR_OR_NONE.issuperset(map(type, typed)) and (duration is None or type(duration) is float):
        if duration is not None:
            present += 1
        # the common case: every attribute has its column, so nothing is left for JSONB
        rest = (JSONB_EMPTY if len(attrs) == present
                else jsonb({k: v for k, v in attrs.items() if k not in _TYPED_SET}))
        typed.append(duration)
        typed.append(p.sequence)
    else:
        # a contract field with an unexpected type stays in JSONB, exactly as sent
        typed.append(duration)
        typed.append(p.sequence)
        remainder = dict(attrs)
        for i, (name, kind) in enumerate(_TYPED_ITEMS):
            v = typed[i]
            if v is not None and type(v) is kind:
                del remainder[name]
            else:
                typed[i] = None
        rest = jsonb(remainder)
    p.row = [
        None,
        p.stamp,
        rec.time_unix_nano,
        rec.observed_unix_nano,
        rec.event_name,
        rec.severity_number,
        rec.severity_text,
        rec.body,
        rec.trace_id,
        rec.span_id,
        p.tenant,
        p.service_name,
        p.instance,
        rec.scope_name,
        rec.scope_version,
        *typed,
        rest,
        p.resource_jsonb,
        "ok",
    ]
    return None


# The C twins (secret_audit/store/_native.c) take only the common case: prepare hands every record it
# would refuse to prepare_python, which words the refusal; finish calls the same orjson and hashlib
# functions with the same arguments, and hands every record out of the ordinary to finish_python.
if _native is not None:
    _native.configure(
        dumps=orjson.dumps, sort_keys=orjson.OPT_SORT_KEYS, sha256=hashlib.sha256, jsonb=jsonb,
        fallback=finish_python, typed=_TYPED_SET, str_names=_STR_NAMES, empty=JSONB_EMPTY,
        hash_key=_HASH_KEY, duration="audit.duration_ms", prepare=prepare_python,
        facts=_resource_facts, prepared=Prepared, record=Record, epoch_us=_PG_EPOCH_US,
        keys=("audit.stream.id", "audit.sequence", "audit.chain.prev", "audit.event.id"),
    )

_Prepare = Callable[[int, Record, "str | None", "dict[int, Any] | None"], "Prepared | str"]


def preparer(native: bool = True) -> _Prepare:
    """The prepare to use: the C one when it is built and wanted, else prepare_python."""
    return _native.prepare if native and _native is not None else prepare_python


def finisher(native: bool = True) -> Callable[[Prepared], str | None]:
    """The finish to use: the C one when it is built and wanted, else finish_python."""
    return _native.finish if native and _native is not None else finish_python


prepare = preparer()
finish = finisher()
