"""The agent's per-record engine: a run of ring slots to chained, encoded LogRecords in one call.

What repeats between records of one shape is worked out once, as a ``Plan``: its canonical JSON
(``contract.canonical_bytes``) cut into pieces around the fields that vary (duration, event id,
stream, sequence, previous hash, the body's took, span and trace ids, time) and its OTLP bytes.
A record then costs splicing its numbers into both plus one SHA-256. ``stamp_slots`` is the batch
call: many slots, the stream's sequence and head in, framed LogRecords appended to ``out``, the new
sequence and head out. It runs in C (``_engine``, limited API, optional) when the extension is
built, and as the pure-Python ``stamp_slots_py`` below otherwise; tests/test_engine.py holds the two
to each other and to ``contract.stamp`` with ``encode_log_record`` byte for byte.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
import struct
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import orjson

from secret_audit import contract
from secret_audit._internal.otlp import AuditTail, _event_name_field, _severity_field, ld, varint

__all__ = [
    "NATIVE", "Plan", "StreamConsts", "float_json", "malloc_arenas", "malloc_trim", "plan_of", "resolve_raw",
    "resolve_raw_py", "stamp_raw",
    "stamp_raw_py", "stamp_slots", "stamp_slots_py",
]

# The holes of a plan's canonical JSON, in the order they appear (the sort of ``canonical_bytes``).
_DURATION, _EVENT_ID, _STREAM, _SEQUENCE, _PREV, _TOOK, _SPAN, _TIME, _TRACE = b"DESQPTIMR"
_TOKEN = "zq" + secrets.token_hex(12)  # a per-process marker that no static value holds (checked)


class Plan(NamedTuple):
    """One shape's record, precomputed: canonical JSON pieces around its holes, and its OTLP parts."""

    pieces: tuple[bytes, ...]  # canonical JSON: pieces[0] hole codes[0] pieces[1] ... pieces[-1]
    codes: bytes  # the holes, one letter each (see _DURATION ...)
    severity: bytes  # OTLP severity number and text fields
    body: bytes  # the whole OTLP body field, or the UTF-8 of the body before the took
    tail: bytes | None  # the UTF-8 of the body after the took; None: ``body`` is the whole field
    attrs: bytes  # the shape's static attributes as OTLP fields (``Shape.encoded``)
    event: bytes  # the OTLP event name field
    joined: bytes  # the pieces as one buffer, for C ...
    ends: bytes  # ... and where each piece ends in it (u32, little-endian)


class StreamConsts(NamedTuple):
    """A stream's fixed bytes: its id, and the OTLP heads of the six attributes a record ends with."""

    sid: bytes  # the stream id, ASCII
    duration: bytes  # audit.duration_ms's KeyValue up to its double
    event_key: bytes  # audit.event.id's key field
    stream: bytes  # audit.stream.id's whole attribute field
    sequence_key: bytes  # audit.sequence's key field
    prev: bytes  # audit.chain.prev's attribute field up to its 64 hex digits
    digest: bytes  # audit.chain.hash's, likewise

    @classmethod
    def of(cls, stream_id: str) -> StreamConsts:
        return cls(stream_id.encode(), *AuditTail(stream_id).heads())


def plan_of(attrs: dict[str, Any], body: str, tail: str | None, severity: int, severity_text: str,
            encoded: bytes) -> Plan | None:
    """A shape's plan; None when its canonical JSON cannot be cut safely (its records take the slow path)."""
    token = {code: f"{_TOKEN}{chr(code)}" for code in b"DESQPTIMR"}
    holes = {**attrs, contract.DURATION_MS: token[_DURATION], contract.EVENT_ID: token[_EVENT_ID],
             contract.STREAM_ID: token[_STREAM], contract.SEQUENCE: token[_SEQUENCE],
             contract.CHAIN_PREV: token[_PREV]}
    holes.pop(contract.CHAIN_HASH, None)
    text = body if tail is None else f"{body}{token[_TOOK]}{tail}"
    try:
        canonical = contract.canonical_bytes(
            time_unix_nano=token[_TIME], event_name=contract.EVENT_ACCESS,  # type: ignore[arg-type]
            severity_number=severity, body=text, trace_id=token[_TRACE], span_id=token[_SPAN],
            attributes=holes)
    except TypeError:  # a value orjson cannot write: the slow path raises the same way, per record
        return None
    found = []
    for code, tok in token.items():
        if code == _TOOK and tail is None:
            continue
        mark = tok.encode() if code == _TOOK else f'"{tok}"'.encode()
        if canonical.count(mark) != 1:
            return None
        found.append((canonical.index(mark), code, mark))
    if canonical.count(_TOKEN.encode()) != len(found):
        return None  # a static value holds the marker
    found.sort()
    pieces, at = [], 0
    for pos, _, mark in found:
        pieces.append(canonical[at:pos])
        at = pos + len(mark)
    pieces.append(canonical[at:])
    ends = list(itertools.accumulate(len(piece) for piece in pieces))
    codes = bytes(c for _, c, _ in found)
    severity_field, event = _severity_field(severity, severity_text), _event_name_field(contract.EVENT_ACCESS)
    joined, packed = b"".join(pieces), struct.pack(f"<{len(ends)}I", *ends)
    if tail is None:
        whole = ld(b"\x2a", ld(b"\x0a", body.encode("utf-8")))
        return Plan(tuple(pieces), codes, severity_field, whole, None, encoded, event, joined, packed)
    return Plan(tuple(pieces), codes, severity_field, body.encode("utf-8"), tail.encode("utf-8"), encoded,
                event, joined, packed)


def float_json(value: float) -> bytes:
    """A duration as ``canonical_bytes`` writes it (orjson's shortest form)."""
    return orjson.dumps(value)


def _took(ms: float) -> bytes:
    return (f"{ms:.0f}ms" if ms >= 10 else f"{ms:.2f}ms").encode()


_pack_d = struct.Struct("<d").pack
_pack_q = struct.Struct("<Q").pack
_pack_i = struct.Struct("<I").pack
_sha256 = hashlib.sha256


def stamp_slots_py(slots: Sequence[Any], shapes: Sequence[Sequence[Any]], consts: StreamConsts, seq: int,
                   head: str, observed: int, out: bytearray, plan_at: int = 8,
                   float_text: Callable[[float], bytes] = float_json) -> tuple[int, str]:
    """Stamp and encode each slot's records (one per shape, in order); the new sequence and head.

    ``slots`` are ring slots (index, flags, start, end, trace id, span id, trace flags, ...);
    ``shapes[i]`` the shapes of slot i, whose field ``plan_at`` is its Plan. Framed LogRecords
    (ScopeLogs field 2) are appended to ``out``, all or none.
    """
    sid = consts.sid
    stream_json = b'"' + sid + b'"'
    parts: list[bytes] = []
    append = parts.append
    prev = head.encode()
    observed_field = b"\x59" + _pack_q(observed) if observed else b""
    for slot, slot_shapes in zip(slots, shapes):  # noqa: B905 - built together
        start, end, trace_id = slot[2], slot[3], slot[4]
        if trace_id:
            span_id, flags = slot[5], slot[6]
            trace_json, span_json = f'"{trace_id:032x}"'.encode(), f'"{span_id:016x}"'.encode()
            ids = b"".join((b"\x45" + _pack_i(flags) if flags else b"",
                            b"\x4a\x10" + trace_id.to_bytes(16, "big"),
                            b"\x52\x08" + span_id.to_bytes(8, "big") if span_id else b""))
        else:
            trace_json = span_json = b'""'
            ids = b""
        duration = (end - start) / 1e6
        duration_json = float_text(duration)
        took = _took(duration)
        time_json = str(start).encode()
        time_field = b"\x09" + _pack_q(start) if start else b""
        for shape in slot_shapes:
            plan: Plan = shape[plan_at]
            seq += 1
            seq_text = str(seq).encode()
            values = {_DURATION: duration_json, _EVENT_ID: b'"' + sid + b":" + seq_text + b'"',
                      _STREAM: stream_json, _SEQUENCE: seq_text, _PREV: b'"' + prev + b'"', _TOOK: took,
                      _SPAN: span_json, _TIME: time_json, _TRACE: trace_json}
            pieces = plan.pieces
            canonical = [pieces[0]]
            for i, code in enumerate(plan.codes, 1):
                canonical += (values[code], pieces[i])
            digest = _sha256(b"".join(canonical)).hexdigest().encode()
            if plan.tail is None:
                body = plan.body
            else:
                raw = plan.body + took + plan.tail
                body = ld(b"\x2a", ld(b"\x0a", raw))
            event_id = sid + b":" + seq_text
            event_kv = consts.event_key + ld(b"\x12", ld(b"\x0a", event_id))
            seq_value = b"\x18" + varint(seq)
            seq_kv = consts.sequence_key + ld(b"\x12", seq_value)
            record = b"".join((
                time_field, plan.severity, body, plan.attrs,
                consts.duration, _pack_d(duration),
                ld(b"\x32", event_kv), consts.stream, ld(b"\x32", seq_kv),
                consts.prev, prev, consts.digest, digest,
                ids, observed_field, plan.event,
            ))
            append(b"\x12" + varint(len(record)))
            append(record)
            prev = digest
    out += b"".join(parts)
    return seq, prev.decode()


_SLOT = struct.Struct("<QBBHIqqQQQQ2I")  # ring.py's slot: commit, kind, flags, ids, trace flags, ... ids
_WAIT = 1  # ring.WAIT


Resolved = tuple[list[Any], int, int, int]  # shapes, records, flags, the waited-on slot's index


def resolve_raw_py(raw: bytes, known: dict[int, Any]) -> Resolved | None:
    """A run of raw slots' shapes from ``known`` (one per record, each slot's in turn), their count, the
    slots' flags or-ed, and the ring index of the last slot a fail-closed caller waits on (-1: none);
    None if a slot names a shape not in ``known``."""
    if len(raw) % _SLOT.size:
        raise ValueError("a run of slots is a multiple of 72 bytes")
    shapes: list[Any] = []
    flags_or, wait = 0, -1
    for commit, _, flags, n, _, _, _, _, _, _, _, a, b in _SLOT.iter_unpack(raw):
        flags_or |= flags
        if flags & _WAIT:
            wait = commit - 1
        for sid in (a, b)[:n]:
            shape = known.get(sid)
            if shape is None:
                return None
            shapes.append(shape)
    return shapes, len(shapes), flags_or, wait


def stamp_raw_py(raw: bytes, shapes: list[Any], consts: StreamConsts, seq: int, head: str, observed: int,
                 out: bytearray, plan_at: int = 8) -> tuple[int, str]:
    """``stamp_slots_py`` for raw slots and their shapes as ``resolve_raw`` gives them."""
    if len(raw) % _SLOT.size:
        raise ValueError("a run of slots is a multiple of 72 bytes")
    slots, grouped, used = [], [], 0
    for _, _, _, n, tflags, start, end, hi, lo, span, _, _, _ in _SLOT.iter_unpack(raw):
        m = min(n, 2)
        if used + m > len(shapes):
            raise ValueError("fewer shapes than the slots' ids")
        slots.append((0, 0, start, end, (hi << 64) | lo, span, tflags))
        grouped.append(shapes[used:used + m])
        used += m
    if used != len(shapes):
        raise ValueError("more shapes than the slots' ids")
    return stamp_slots_py(slots, grouped, consts, seq, head, observed, out, plan_at)


try:  # the C twin, when the optional extension was built
    from secret_audit._internal import _engine  # type: ignore[attr-defined]

    stamp_slots: Callable[..., tuple[int, str]] = _engine.stamp_slots
    stamp_raw: Callable[..., tuple[int, str]] = _engine.stamp_raw
    resolve_raw: Callable[[bytes, dict[int, Any]], Resolved | None] = _engine.resolve_raw
    malloc_arenas: Callable[[int], bool] = _engine.malloc_arenas
    malloc_trim: Callable[[], bool] = _engine.malloc_trim
    NATIVE = True
except ImportError:  # pragma: no cover - a build without a C compiler
    stamp_slots = stamp_slots_py
    stamp_raw = stamp_raw_py
    resolve_raw = resolve_raw_py
    NATIVE = False

    def malloc_arenas(n: int) -> bool:
        """Without the extension the agent's malloc is left as it is."""
        return False

    def malloc_trim() -> bool:
        """Without the extension the agent's malloc is left as it is."""
        return False
