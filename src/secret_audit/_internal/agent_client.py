"""The app's side of the audit agent: a ``Handoff`` twin that writes each access into a shared ring.

Per access the caller works out the access's shapes (cached per kind of access, as the in-process
builder does), makes the audit span when one is due (in the app, through the app's tracer
provider and sampler), and writes one 72-byte slot of numbers; a new shape's static attributes go
to the agent once, over its socket. Everything else (stamping, encoding, sending, spooling, loss
accounting) runs in the agent. When the agent cannot be reached, or dies, the in-process pipeline
takes over, announced once on stderr with the cause, and builds what was handed off and not
settled from the ring, which keeps it until settled (``agent_takeover``). Fail-closed callers
then refuse. Its parts: the socket and the agent's answers (``agent_link``), the ring's shape ids
(``agent_shape_ids``), a single-key command's short way (``agent_short``), the agent's death
(``agent_takeover``); this module writes the ring and holds them together under one lock.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from secret_audit._internal import ring as hdr
from secret_audit._internal.agent_link import AgentLink
from secret_audit._internal.agent_shape_ids import ShapeIds
from secret_audit._internal.agent_short import ShortWay
from secret_audit._internal.agent_spans import chosen_ids, parent_based_default
from secret_audit._internal.agent_takeover import take_over
from secret_audit._internal.agent_waits import until_settled, until_settled_async
from secret_audit._internal.builder import RecordBuilder
from secret_audit._internal.config import PREFIX, SOURCES, Settings
from secret_audit._internal.event import Access
from secret_audit._internal.export_timings import ExportTimings
from secret_audit._internal.ring import MAX_IDS, SEALED, SPAN, SPAN_PART, WAIT, Ring
from secret_audit._internal.shapes import Shape, fill

__all__ = ["AgentHandoff"]

_log = logging.getLogger("secret_audit")
_NOTHING, _NOT_HANDED = -2, -1  # what put returns besides a slot index
_NO_IDS: tuple[int, ...] = (0, 0, 0)


class AgentHandoff:
    """The caller's side over a ring: ``submit``, ``wait_durable``, ``accepting``, ``refuse``, ``stats``."""

    def __init__(self, settings: Settings, address: bytes | None = None, proc: Any = None) -> None:
        self.settings = settings
        self.capacity = min(settings.queue_size, hdr.SLOTS)  # the ring's bound of unsettled accesses
        self.fail_closed_timeout = settings.fail_closed_timeout_ms / 1000
        self._full_wait = settings.queue_full_timeout_ms / 1000
        self.closed_mode = any(settings.mode_for(s) == "closed" for s in SOURCES)
        self.builder = RecordBuilder(settings, None)  # spans through the app's global tracer provider
        self.spans = settings.spans
        self._via_agent: bool | None = None if settings.spans_via != "app" else False
        self.fallback: Any = None  # the in-process pipeline, once the agent is gone
        self.gone: str | None = None  # why the agent is gone
        self.predecessor: dict[str, Any] | None = None  # the dead agent's stream, its last settled sequence
        self.closed = False
        # for the hand-off's life (the wrappers hold their submit_one): single-key commands, and pipelines
        # (kept apart, so that an app that mixes the two does not make each forget the other's client)
        self._short = (ShortWay(self), ShortWay(self))
        self.submit_one, self.submit_merged = self._short[0].submit_one, self._short[1].submit_one
        self._reset(address, proc)  # no address: this process tree's agent starts at register
        ref = weakref.ref(self)
        os.register_at_fork(before=lambda: _before_fork(ref), after_in_child=lambda: _forked(ref))

    def _reset(self, address: bytes | None, proc: Any) -> None:
        """No ring and no shapes yet: at start and in a forked child (which registers its own ring)."""
        self.lock = threading.Lock()
        self.ring: Ring | None = None
        self.link = AgentLink(self.lock, address, proc)
        self.nudge: Callable[[], None] = self.link.signal  # wakes the agent's reader now
        for way in self._short:
            way.forget()
        self.shape_ids = ShapeIds(self.link, [way.drop_shape_ids for way in self._short])
        # the writer's own names for the shape ids' table and their lookup: no attribute to follow per access
        self._ids: dict[int, tuple[int, Shape]] = self.shape_ids.known
        self._shape_id = self.shape_ids.id_of
        self.dropped = 0
        self.refused: dict[str, int] = {}
        self.errors = 0
        self._final: dict[str, Any] | None = None  # the agent's last answer, asked as this hand-off closed

    @property
    def agent_pid(self) -> int | None:
        return self.link.agent_pid

    @property
    def stream_id(self) -> str | None:
        return self.link.stream_id

    @property
    def timings(self) -> ExportTimings:
        """Durations the agent measured, until the app's metrics take them."""
        return self.link.timings

    # ---- the caller's side ----------------------------------------------------------------------

    def submit(self, access: Access) -> None:
        """Describe one access into the ring (or to the in-process pipeline once the agent is gone)."""
        if self.fallback is not None:
            self.fallback.submit(access)
            return
        self.put(access, 0)

    def accepting(self) -> bool:
        """False while records cannot be made durable; for good in fail-closed mode once the agent is gone."""
        if self.fallback is not None:
            return not self.closed_mode and bool(self.fallback.accepting())
        ring = self.ring
        return not self.closed and (ring is None or not ring.word(hdr.DEGRADED))

    def wait_durable(self, access: Access, timeout: float | None = None) -> bool:
        """Hand off and wait until the agent settled the slot: durable unless a batch was lost meanwhile."""
        limit = self.fail_closed_timeout if timeout is None else timeout
        if self.fallback is not None:
            return bool(self.fallback.handoff.wait_durable(access, limit))
        lost, idx = self._waiting_put(access)
        if idx < 0:
            return idx == _NOTHING
        return until_settled(self, idx, lost, limit)

    async def wait_durable_async(self, access: Access, timeout: float | None = None) -> bool:
        """The same for coroutines, without blocking the event loop."""
        limit = self.fail_closed_timeout if timeout is None else timeout
        if self.fallback is not None:
            return bool(await self.fallback.handoff.wait_durable_async(access, limit))
        lost, idx = self._waiting_put(access)
        if idx < 0:
            return idx == _NOTHING
        return await until_settled_async(self, idx, lost, limit)

    def refuse(self, reason: str) -> None:
        """Count one fail-closed refusal; the agent (or the fallback) reports it in the stream."""
        with self.lock:
            self.refused[reason] = self.refused.get(reason, 0) + 1
        if self.fallback is not None:
            self.fallback.handoff.refuse(reason)
        elif self.ring is not None and reason in hdr.REFUSALS:
            self.ring.add(hdr.REFUSALS[reason])

    def note_error(self) -> None:
        """Count a failure inside our wrapper; the caller's call goes on as if we were not there."""
        self.errors += 1

    def close(self, timeout: float) -> None:
        """Stop handing off here: settle what was handed off (within ``timeout``), then let the agent go,
        waiting (within ``timeout`` again, as the in-process worker's join) until it ended the stream.

        The agent's counts are asked once more first: a metric collection after this (the MeterProvider's
        own exit hook runs after ours) reads them, and the export durations that came with them."""
        ring = self.ring
        flushed = self.flush(timeout)
        self._final = self.ledger(1.0 if flushed else 0.2)
        if not flushed and ring is not None and self.fallback is None:
            # Not lost yet (the agent still holds them), but lost unsaid if it dies before they are durable.
            waiting = ring.next - ring.word(hdr.SETTLED)
            _log.warning(
                "secret-audit: %d handed-off accesses were not yet durable when this process stopped waiting "
                "(%sSHUTDOWN_TIMEOUT_MS, %d ms): the audit agent (pid %s) goes on sending or spooling them, "
                "and they are lost if it dies first; raise the timeout, or check the endpoint",
                waiting, PREFIX, int(timeout * 1000), self.agent_pid,
            )
        self.closed = True
        for way in self._short:
            way.drop_shape_ids()
        # our end of the socket is the agent's cue to end this stream: waited for once all is settled
        self.link.close(timeout, end=flushed and self.fallback is None)

    def flush(self, timeout: float) -> bool:
        """Block until everything handed off so far is settled by the agent (sent or spooled)."""
        if self.fallback is not None:
            return bool(self.fallback.flush(timeout))
        ring = self.ring
        if ring is None:
            return True
        target = ring.next
        self.link.signal(b"L")  # wake it, and have it export once it has read this far (not at its timer)
        deadline = time.monotonic() + timeout
        while ring.word(hdr.SETTLED) < target:
            if self.fallback is not None:
                return bool(self.fallback.flush(max(0.0, deadline - time.monotonic())))
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True

    def stats(self) -> dict[str, Any]:
        """The caller's counters, and what the agent wrote into the ring's header."""
        ring = self.ring
        if ring is not None and self.fallback is None:
            self.link.served(5.0)  # a ring just registered: its agent and stream are named within a moment
        handed = ring.next if ring is not None else 0

        def words(i: int) -> int:
            return ring.word(i) if ring is not None else 0

        return {
            "queued": handed - words(hdr.TAIL),
            "queue_capacity": self.capacity,
            "dropped_queue_full": self.dropped,
            "refused": dict(self.refused),
            "degraded": bool(words(hdr.DEGRADED)),
            "call_errors": self.errors,
            "handed_off": handed,
            "settled": words(hdr.SETTLED),
            "agent": {"mode": "process" if self.fallback is None else "in-process", "pid": self.agent_pid,
                      "gone": self.gone, "predecessor": self.predecessor},
        }

    def ledger(self, timeout: float = 1.0, spool: bool = False) -> dict[str, Any] | None:
        """The agent's counters of this process's stream (ledger and sequence; with ``spool`` also what
        waits in its spool), asked over the socket; None if it does not answer in time; once closed, its
        last answer."""
        if self.closed:
            return self._final
        if self.fallback is not None:
            return None
        answer = self.link.ask(b"spool" if spool else b"", timeout)
        return answer if self.fallback is None else None  # the agent's going also ends the wait

    # ---- the ring -------------------------------------------------------------------------------

    def _waiting_put(self, access: Access) -> tuple[int, int]:
        ring = self.ring or self.register()
        lost = ring.word(hdr.LOST) if ring is not None else 0
        return lost, self.put(access, WAIT)

    def put(self, access: Access, flags: int) -> int:
        """Write an access's slots; its last slot's index, or what became of it."""
        if self.closed:  # replaced by a newer pipeline (re-wiring): hand over rather than lose the record
            from secret_audit._internal.current import peek_pipeline

            current = peek_pipeline()
            if current is not None and current.handoff is not self:
                current.handoff.submit(access)
            return _NOT_HANDED
        ring = self.ring or self.register()
        if ring is None:
            self.fallback.submit(access)
            return _NOT_HANDED
        builder = self.builder
        found = builder.shapes_for(access)
        if found is None:
            return _NOTHING
        shapes, ctx, parent = found
        known = self._ids
        try:
            if len(shapes) == 1:  # most calls: one secret, its shape seen before
                shape = shapes[0]
                entry = known.get(id(shape))
                sids = [entry[0] if entry is not None and entry[1] is shape else self._shape_id(shape, ring)]
            else:
                sids = [self._shape_id(shape, ring) for shape in shapes]
        except OSError as exc:  # the agent went away under us: the in-process pipeline takes this one
            take_over(self, f"its socket failed ({exc})")
            return self._to_fallback(access)
        start, end = access.start_ns, access.end_ns
        spans = self.spans
        parent_id = 0
        valid = parent.is_valid
        if spans == "off" or (spans == "in_trace" and not valid) or (
                spans == "errors" and not builder.wants_span(parent, [shape.attrs for shape in shapes])):
            ids: tuple[int, ...] = _NO_IDS
            if valid:  # the records carry the caller's span's ids
                ids = (parent.trace_id, parent.span_id, int(parent.trace_flags))
        elif self._via_agent or (self._via_agent is None and self.spans_by_agent()):
            # the agent makes the span: only its ids are chosen here
            trace_id, span_id, trace_flags, parent_id = chosen_ids(parent)
            ids, flags = (trace_id, span_id, trace_flags), flags | SPAN
        else:
            ids = builder.span_ids(ctx, fill(shapes, start, end)[0], start, end)[:3]
        if len(sids) <= MAX_IDS:
            idx, sleeping = ring.put(flags, start, end, ids[0], ids[1], ids[2], sids, parent_id)
            if idx < 0:
                idx = self._room(ring, len(sids))
                if idx < 0:
                    return self._to_fallback(access) if idx == SEALED else _NOT_HANDED
                ring.write(idx, flags, start, end, ids[0], ids[1], ids[2], sids, parent_id)
        else:
            sleeping = False
            for first in range(0, len(sids), MAX_IDS):
                last = first + MAX_IDS >= len(sids)
                part = flags if last else (SPAN_PART if flags & SPAN else 0)
                some = sids[first:first + MAX_IDS]
                idx, asleep = ring.put(part, start, end, ids[0], ids[1], ids[2], some, parent_id)
                sleeping = sleeping or asleep
                if idx < 0:
                    idx = self._room(ring, len(sids) - first)
                    if idx < 0:  # sealed midway: the fallback builds the whole access again
                        return self._to_fallback(access) if idx == SEALED else _NOT_HANDED
                    ring.write(idx, part, start, end, ids[0], ids[1], ids[2], some, parent_id)
        if sleeping:  # the agent said it sleeps: clear its word (so no other caller wakes it too), wake it
            ring.wake()
        if sleeping or flags & WAIT:  # or a fail-closed caller waits: wake it now, not at its next look
            self.nudge()
        return idx

    def spans_by_agent(self) -> bool:
        """Whether the agent makes the spans: not declined, and the app's sampler the SDK's default.

        Said on stderr only when ``agent`` was asked for by name: ``auto`` (the default) makes them in the
        app without a word, as every app with a sampler of its own would otherwise read at each start.
        """
        if self._via_agent is None:
            self._via_agent = parent_based_default(announce=self.settings.spans_via == "agent")
        return self._via_agent

    def _to_fallback(self, access: Access) -> int:
        """The ring was sealed under this caller: the pipeline that took over takes the access."""
        with self.lock:  # held while the agent's slots are handed over: this access comes after them
            fallback = self.fallback
        if fallback is not None:
            fallback.submit(access)
        return _NOT_HANDED

    def _room(self, ring: Ring, records: int) -> int:
        """A full ring: wait the bounded time for room, else count the records as dropped (-1)."""
        idx = ring.reserve_within(self._full_wait, self.nudge)
        if idx == -1:
            with self.lock:
                self.dropped += records
            ring.add(hdr.DROPPED, records)
        return idx

    def register(self) -> Ring | None:
        """Map a ring of this process's own and hand it to the agent, started first if this process tree
        has none yet (at the first hand-off, ``stats()`` or a fork; a forked child's is its parent's)."""
        with self.lock:
            if self.ring is not None or self.fallback is not None:
                return self.ring
            try:
                ring = self.ring = self.link.register(self.settings, functools.partial(take_over, self))
            except (OSError, AttributeError) as exc:  # AttributeError: no memfd (not Linux)
                cause = (f"it cannot be reached ({exc!r})" if self.link.address else
                         f"it could not start ({exc!r}; the app may not start child processes here)")
            else:
                ring.bound = self.capacity
                return ring
        take_over(self, cause)
        return None


def _before_fork(ref: weakref.ref[AgentHandoff]) -> None:
    """Before a fork: start the agent if none serves this process yet (a pre-fork server's master that
    audited nothing), so that the children share it rather than each starting one at its first access."""
    handoff = ref()
    if handoff is not None and handoff.link.address is None and not handoff.closed:
        handoff.register()


def _forked(ref: weakref.ref[AgentHandoff]) -> None:
    """In a forked child: the parent's ring and socket are the parent's; the child registers its own."""
    handoff = ref()
    if handoff is None:
        return
    link, ring = handoff.link, handoff.ring
    handoff._reset(link.address, None)  # the agent is the parent's child, not ours
    link.forked()
    if ring is not None:
        ring.mm.close()
