"""The ring an app process shares with its audit agent: fixed 72-byte slots in a memfd, and header words.

A slot describes one access by numbers only (shape ids, start and end, the trace ids): no name,
no value, no text crosses it; a shape's static attributes travel once, over the agent's socket.
The app writes slots and the counters only callers change; the agent writes how far it has read
(``TAIL``) and how far its records are settled (``SETTLED``: sent, spooled or reported lost, with
``LOST`` and ``DEGRADED``). A slot is reused only once settled, so the app still holds every slot
its agent has not settled, and can build them itself if the agent dies (``seal``, ``slot``).
The agent says in ``SLEEPING`` when it waits for work; only then does a writer wake it (``put``
returns True), so a steady stream of accesses costs the app no system call.
A slot is committed by writing its index + 1 into its first word after the rest: on x86-64 stores
are seen in program order, so a reader that sees the mark sees the slot (the layout the spike of
docs/design/pipeline.md section 3 measured).
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time

__all__ = [
    "CHECKPOINTS", "DEGRADED", "DROPPED", "ERRORS", "INTERNAL_ERRORS", "LOST", "LOST_EXPORT", "MAX_IDS",
    "REFUSALS", "SEALED", "SEQUENCE", "SETTLED", "SETTLED_SEQUENCE", "SLEEPING", "SLOTS", "SPAN", "SPAN_PART",
    "TAIL", "TAKEN", "WAIT", "Ring", "Slot", "open_ring", "slots_of",
]

HEADER = 256  # 32 u64 words; a word is only ever added at the end, never renumbered
SLOT = 72
SLOTS = 16384  # 1.1 MiB of slots, touched only as far as they are used: the bound of unsettled slots
SEALED = -2  # what reserve returns once the app took the ring back from a dead agent
MAX_IDS = 2  # shape ids per slot; an access with more distinct secrets takes several slots
WAIT = 1  # flag: a fail-closed caller waits on this slot, settle it at once
SPAN = 2  # flag: the agent makes this access's audit span (its ids are the slot's, its parent the slot's)
SPAN_PART = 4  # flag: this slot's records belong to the span of the access's last slot
# header words (u64): the agent writes the first four, the app the rest
TAIL, SETTLED, LOST, DEGRADED, DROPPED, ERRORS = 0, 1, 2, 3, 4, 5
REFUSALS = {"unavailable": 6, "not_durable": 7, "unbuilt": 8}
# the agent's copy of the app's counters, as far as its stream has taken them: the rest is the app's to report
TAKEN = 11  # DROPPED, then each of REFUSALS in order
SLEEPING = 15  # the agent's: 1 while its reader waits for a wake (found nothing for a while), else 0
# the agent's stream's ledger, as of its last settled batch, for the app's stats() (words 9, 10 in agent_wire)
SEQUENCE, LOST_EXPORT, INTERNAL_ERRORS, CHECKPOINTS = 16, 17, 18, 19
SETTLED_SEQUENCE = 20  # the agent's: its stream's last settled sequence, where a fallback stream takes up

# kind, flags, n ids, trace flags, start, end, trace id (high, low), span id, parent span id
_ACCESS = struct.Struct("<BBHIqqQQQQ")
_IDS = [struct.Struct(f"<{n}I") for n in range(MAX_IDS + 1)]
# the same fields and the ids, packed at once by the writer
_BODY = [struct.Struct(f"<BBHIqqQQQQ{n}I") for n in range(MAX_IDS + 1)]
_WORD = struct.Struct("<Q")
# a whole slot, commit word and both id places (an id place past the slot's count holds stale bytes)
_WHOLE = struct.Struct(f"<Q{_ACCESS.format[1:]}{MAX_IDS}I")
assert _WHOLE.size == SLOT
_KIND_ACCESS = 1
_LOW = (1 << 64) - 1
_MASK = SLOTS - 1
_pack_one, _pack_word = _BODY[1].pack_into, _WORD.pack_into
_SLEEPING_BYTE = 8 * SLEEPING  # little-endian: the word's low byte

# index, flags, start, end, trace id, span id, trace flags, shape ids, parent span id
Slot = tuple[int, int, int, int, int, int, int, tuple[int, ...], int]


def slots_of(raw: bytes) -> list[Slot]:
    """Raw slots (``Ring.read_raw``) as tuples."""
    return [(commit - 1, flags, start, end, (hi << 64) | lo, span, tflags, (a, b)[:n], parent)
            for commit, _, flags, n, tflags, start, end, hi, lo, span, parent, a, b
            in _WHOLE.iter_unpack(raw)]


def open_ring(fd: int | None = None) -> tuple[int, mmap.mmap]:
    """Map a ring: a new memfd (the app's side), or the one received from an app (the agent's side)."""
    size = HEADER + SLOT * SLOTS
    if fd is None:
        fd = os.memfd_create("otel-secret-audit-ring", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
    return fd, mmap.mmap(fd, size)


class Ring:
    """One side of one ring; the writer's methods are thread-safe, the reader's are for one thread."""

    def __init__(self, mm: mmap.mmap) -> None:
        self.mm = mm
        self._lock = threading.Lock()
        self.next = 0  # the writer's next index / the reader's next index
        self._settled = 0  # the reader's settled watermark as the writer last saw it
        self._sealed = False
        self.bound = SLOTS  # the writer's: unsettled slots at most (the app's QUEUE_SIZE, up to SLOTS)

    # ---- words -------------------------------------------------------------------------------------

    def word(self, i: int) -> int:
        return int(_WORD.unpack_from(self.mm, 8 * i)[0])

    def set_word(self, i: int, value: int) -> None:
        _WORD.pack_into(self.mm, 8 * i, value)

    def add(self, i: int, n: int = 1) -> None:
        """Add to a counter word of the writer's (several app threads may count at once)."""
        with self._lock:
            _WORD.pack_into(self.mm, 8 * i, int(_WORD.unpack_from(self.mm, 8 * i)[0]) + n)

    # ---- the writer (app) ---------------------------------------------------------------------------

    def reserve(self) -> int:
        """The next slot's index; -1 while ``bound`` slots are unsettled; SEALED once sealed."""
        with self._lock:
            return self._claim()

    def _claim(self) -> int:
        """``reserve`` under the lock held."""
        if self._sealed:
            return SEALED
        idx = self.next
        if idx - self._settled >= self.bound:
            self._settled = int(_WORD.unpack_from(self.mm, 8 * SETTLED)[0])
            if idx - self._settled >= self.bound:
                return -1
        self.next = idx + 1
        return idx

    def seal(self) -> int:
        """Reserve no more slots (the agent is gone); the end of what was reserved."""
        with self._lock:
            self._sealed = True
            return self.next

    def reserve_within(self, timeout: float, nudge: object) -> int:
        """Wait up to ``timeout`` for room (waking the reader), then give up with -1."""
        deadline = time.monotonic() + timeout
        pause = 0.0002
        while True:
            if callable(nudge):
                nudge()
            time.sleep(pause)
            idx = self.reserve()
            if idx != -1 or time.monotonic() >= deadline:
                return idx
            pause = min(pause * 2, 0.01)

    def write(self, idx: int, flags: int, start: int, end: int, trace_id: int, span_id: int, trace_flags: int,
              ids: tuple[int, ...] | list[int], parent: int = 0) -> None:
        """Fill a reserved slot, then commit it."""
        mm, off = self.mm, HEADER + (idx & (SLOTS - 1)) * SLOT
        n = len(ids)
        _BODY[n].pack_into(mm, off + 8, _KIND_ACCESS, flags, n, trace_flags, start, end, trace_id >> 64,
                           trace_id & _LOW, span_id, parent, *ids)
        _WORD.pack_into(mm, off, idx + 1)

    def put(self, flags: int, start: int, end: int, trace_id: int, span_id: int, trace_flags: int,
            ids: tuple[int, ...] | list[int], parent: int = 0) -> tuple[int, bool]:
        """Reserve, fill and commit one slot (at most ``MAX_IDS`` ids): its index (-1 full, SEALED sealed),
        and whether the reader sleeps and must be woken.

        The commit is written under the lock, and its release is a full barrier (a locked instruction), so
        the ``SLEEPING`` word is read after the commit is visible: a reader that set it before looking at
        the slot either sees the slot or is seen asleep (``Ring.doze`` fences its side likewise).
        """
        if len(ids) == 1:  # most accesses: their one slot packed by one prepared Struct
            return self.put_one(flags, start, end, trace_id, span_id, trace_flags, ids[0], parent)
        mm = self.mm
        with self._lock:
            idx = self._claim()
            if idx < 0:
                return idx, False
            self.write(idx, flags, start, end, trace_id, span_id, trace_flags, ids, parent)
        return idx, bool(_WORD.unpack_from(mm, 8 * SLEEPING)[0])

    def put_one(self, flags: int, start: int, end: int, trace_id: int, span_id: int, trace_flags: int,
                sid: int, parent: int = 0) -> tuple[int, bool]:
        """``put`` for one shape id, inlined (the caller's common case: one secret key): the same slot bytes,
        the same commit order and the same fence before the ``SLEEPING`` word is read."""
        mm = self.mm
        with self._lock:
            idx = self.next
            if self._sealed or idx - self._settled >= self.bound:
                idx = self._claim()
                if idx < 0:
                    return idx, False
            else:
                self.next = idx + 1
            off = HEADER + (idx & _MASK) * SLOT
            _pack_one(mm, off + 8, _KIND_ACCESS, flags, 1, trace_flags, start, end, trace_id >> 64,
                      trace_id & _LOW, span_id, parent, sid)
            _pack_word(mm, off, idx + 1)
        return idx, mm[_SLEEPING_BYTE] != 0  # the word is 0 or 1: its low byte says it

    # ---- the reader (agent) ----------------------------------------------------------------------

    def doze(self) -> bool:
        """Say the reader is about to sleep (``SLEEPING``), then look once more: True if it may sleep
        (nothing committed), else it is awake again. The lock's acquire and release fence the store
        before the look, as ``put`` fences its commit before reading the word."""
        _WORD.pack_into(self.mm, 8 * SLEEPING, 1)
        with self._lock:
            pass
        if self.ready():
            _WORD.pack_into(self.mm, 8 * SLEEPING, 0)
            return False
        return True

    def wake(self) -> None:
        """The reader is awake (it clears ``SLEEPING`` itself, so writers stop waking it)."""
        _WORD.pack_into(self.mm, 8 * SLEEPING, 0)

    def ready(self) -> bool:
        """True when the reader's next slot is committed."""
        off = HEADER + (self.next & (SLOTS - 1)) * SLOT
        return bool(_WORD.unpack_from(self.mm, off)[0] == self.next + 1)

    def read(self) -> Slot | None:
        """The next committed slot, or None when the writer has not committed it (yet)."""
        slot = self.slot(self.next)
        if slot is not None:
            self.next += 1
        return slot

    def read_run(self, limit: int) -> list[Slot]:
        """Up to ``limit`` consecutive committed slots from the reader's next, in order (none: empty)."""
        return slots_of(self.read_raw(limit))

    def read_raw(self, limit: int) -> bytes:
        """``read_run``'s slots as the ring holds them, 72 bytes each (``slots_of`` makes them tuples).

        Two copies of the run's bytes: the first only for its commit words, the second, made after, for the
        slots seen committed; so every slot body is read after its commit was seen, whichever order the
        copy reads a slot's bytes in (a committed slot does not change until settled).
        """
        idx, mm = self.next, self.mm
        pos = idx & (SLOTS - 1)
        count = min(limit, SLOTS - pos)  # up to the ring's end; the next call goes on from its start
        off = HEADER + pos * SLOT
        commits = memoryview(mm[off:off + count * SLOT]).cast("Q")[::SLOT // 8].tolist()
        if commits != list(range(idx + 1, idx + 1 + count)):
            count = 0
            for want, seen in enumerate(commits, idx + 1):
                if seen != want:
                    break
                count += 1
            if not count:
                return b""
        self.next = idx + count
        return mm[off:off + count * SLOT]

    def slot(self, idx: int) -> Slot | None:
        """Slot ``idx`` if it is committed (and not reused since), else None; either side may look."""
        mm, off = self.mm, HEADER + (idx & (SLOTS - 1)) * SLOT
        if _WORD.unpack_from(mm, off)[0] != idx + 1:
            return None
        _, flags, n, tflags, start, end, hi, lo, span, parent = _ACCESS.unpack_from(mm, off + 8)
        ids = _IDS[min(n, MAX_IDS)].unpack_from(mm, off + 8 + _ACCESS.size)
        return idx, flags, start, end, (hi << 64) | lo, span, tflags, ids, parent
