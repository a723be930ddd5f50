"""One audit stream: its id, its sequence and the head of its hash chain, stamped onto records in order.

Every record of a process lifetime (accesses, loss reports, signed checkpoints) goes through
``Stream.stamp``, so the sequence has no gap and each hash covers the one before. The checkpoint
emitter reads the head (``sequence``, ``head``) to sign it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from time import time_ns
from typing import Any

from secret_audit import contract
from secret_audit._internal.otlp import AuditTail

__all__ = ["Stream"]

_ACCESS = contract.EVENT_ACCESS
_DURATION = contract.DURATION_MS


class Stream:
    """A fresh stream per process lifetime (and per child after fork): sequence 1, 2, 3 … from genesis."""

    def __init__(self) -> None:
        self.id = str(uuid.uuid4())
        self.sequence = 0
        self.head = contract.GENESIS
        self._tail = AuditTail(self.id)
        self._consts: Any = None  # the engine's fixed bytes of this stream, made at its first run

    def stamp(
        self, attrs: dict[str, Any], time_unix_nano: int, event_name: str, severity: int, body: str,
        trace_hex: str = "", span_hex: str = "",
    ) -> int:
        """Give a record the next sequence, chained to the head; returns the sequence."""
        self.sequence = seq = self.sequence + 1
        self.head = contract.stamp(
            attrs, self.id, seq, self.head, time_unix_nano, event_name, severity, body, trace_hex, span_hex
        )
        return seq

    def stamp_access(
        self, attrs: dict[str, Any], time_unix_nano: int, severity: int, body: str, trace_hex: str,
        span_hex: str,
    ) -> tuple[int, bytes | None]:
        """Stamp an access record as ``stamp`` does, and encode the six attributes it ends with
        (duration and the five chain fields) as OTLP bytes (None outside the fast layout)."""
        self.sequence = seq = self.sequence + 1
        prev = self.head
        self.head = digest = contract.stamp(
            attrs, self.id, seq, prev, time_unix_nano, _ACCESS, severity, body, trace_hex, span_hex
        )
        return seq, self._tail.encode(attrs[_DURATION], seq, prev, digest)

    def stamp_slots(self, slots: Sequence[Any], shapes: Sequence[Sequence[Any]], out: bytearray) -> int:
        """Stamp a run of ring slots' records (shapes with plans) with the engine, appending them to
        ``out`` as framed OTLP LogRecords, all or none; how many records."""
        return self._engine("stamp_slots", slots, shapes, out)

    def stamp_raw(self, raw: bytes, shapes: list[Any], out: bytearray) -> int:
        """``stamp_slots`` for raw ring slots (``Ring.read_raw``) and their shapes, one list."""
        return self._engine("stamp_raw", raw, shapes, out)

    def _engine(self, call: str, slots: Any, shapes: Any, out: bytearray) -> int:
        from secret_audit._internal import engine  # the agent's: an in-process app never imports it

        if self._consts is None:
            self._consts = engine.StreamConsts.of(self.id)
        first = self.sequence
        now = time_ns()
        stamp = getattr(engine, call)
        self.sequence, self.head = stamp(slots, shapes, self._consts, first, self.head, now, out)
        return self.sequence - first
