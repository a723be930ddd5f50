"""The audit agent: one process per process tree that turns its apps' rings into audit records.

``python -m secret_audit._internal.agent FD`` serves the listening unix socket ``FD`` the first
instrumented process bound (so that process never waits for the agent to start). Each app process
connects, hands over its ring (a memfd, SCM_RIGHTS) and then sends each shape's static attributes
once; the agent reads the ring's slots, and for each app process runs one stream of the in-process
pipeline (builder fill, stream, delivery, spool, ledger, checkpoints) on its own thread. What an app
handed off outlives it: when its socket closes (exit, SIGTERM or kill -9) the ring is read to its
last committed slot and the stream flushed or spooled. The agent exits once no app is left.
One app process's stream (``RingStream``) is ``agent_stream``'s.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import Any

from secret_audit._internal.agent_stream import RingStream, Settle
from secret_audit._internal.agent_wire import FRAME, settings_from
from secret_audit._internal.config import Settings
from secret_audit._internal.engine import malloc_arenas, malloc_trim, plan_of, resolve_raw
from secret_audit._internal.handoff import Marker
from secret_audit._internal.otlp import encode_attributes
from secret_audit._internal.quiet import suppress_instrumentation
from secret_audit._internal.ring import (
    DROPPED,
    REFUSALS,
    TAIL,
    TAKEN,
    WAIT,
    Ring,
    open_ring,
    slots_of,
)
from secret_audit._internal.ring_stream import RawRun, TakenRun
from secret_audit._internal.shapes import Shape
from secret_audit._internal.spooldir import leftover_spool

__all__ = ["main"]

_log = logging.getLogger("secret_audit")

_LINGER = 0.5  # seconds the agent waits for a newcomer once its last app is gone
_FIRST_WAIT = 30.0  # seconds for the first app to connect
_SEND_TIMEOUT = 15.0  # seconds: a request in flight ends by OTEL_EXPORTER_OTLP_TIMEOUT (10 s by default)
# The reader's naps between looks at a ring while accesses come (each read takes what came meanwhile:
# about 40 GETs of 50 µs in 2 ms), then its sleep once idle (a longest nap without a slot), woken by the app
# (or, should a wake be missed, by this timeout; the app's end and its nudges wake it too). A read of
# fewer than _BUSY records keeps the naps as long as they grew (up to _LONGEST_NAP): at a few thousand
# records a second each wake-up costs the agent more than its records do, and it shares the app's CPUs.
# 16 ms at 125,000 slots a second is 2,000 of the ring's 16,384; a fail-closed caller and a flush wake it.
_NAP, _LONGEST_NAP, _SLEEP = 0.002, 0.016, 0.25
_BUSY = 256
_RUN = 128  # slots the reader hands to its stream at once (one queue item, one engine call or a few)
# The agent's malloc (docs/design/pipeline.md section 20): its threads share _ARENAS arenas, and malloc's
# free pages go back to the system once no slot came for _QUIET s (never under load: faulted in again)
_ARENAS, _QUIET = 1, 0.25


class Member:
    """One app process: its socket (shapes, nudges, its end), its ring and its stream."""

    def __init__(self, settings: Settings, conn: socket.socket, stopping: threading.Event) -> None:
        self.settings, self.conn, self.stopping = settings, conn, stopping
        self._buffer = b""
        self._open = True
        self.shapes: dict[int, Shape] = {}
        self._once: set[int] = set()  # shapes made for one access (an error's): forgotten once used
        self._forget: list[tuple[int, int]] = []  # (ring index, ids below): forget once read past the index
        self._seen = {"dropped": 0, **dict.fromkeys(REFUSALS, 0)}
        self._stream: RingStream | None = None  # the app's stream, once its ring is registered
        self._flush = False  # the app flushes: export what was read once the ring is read to its end
        self._kinds: dict[tuple[str, str, str], tuple[str, str, str]] = {}  # kinds counted by `is`
        self.read = 0  # runs of slots read so far: the agent is quiet while no member's count moves
        self.thread = threading.Thread(target=self._run, name="secret-audit-agent-member", daemon=True)

    def _run(self) -> None:
        try:
            self._serve()
        except Exception as exc:  # never silent: the app reports what was not settled
            sys.stderr.write(f"otel-secret-audit agent: an app's stream failed: {exc!r}\n")
        finally:
            self.conn.close()

    def _serve(self) -> None:
        message, fds, _, _ = socket.recv_fds(self.conn, 65536, 1)
        if not fds:
            return
        _, mm = open_ring(fds[0])
        os.close(fds[0])
        ring = Ring(mm)
        size = FRAME.unpack_from(message)[1]
        registration = json.loads(message[FRAME.size:FRAME.size + size])
        stream = self._stream = RingStream(self.settings, ring, registration.get("resource"))
        if leftover_spool(self.settings.spool_dir):  # replayed now, even for an app that audits nothing
            stream.handoff.start()
        self._buffer = message[FRAME.size + size:]
        self._send(b"H", {"agent_pid": os.getpid(), "stream_id": stream.stream_id})
        self._pump(ring, stream)
        # The app no longer waits: unless the agent itself is asked to stop, give a send in flight and
        # its retries their time (then the spool), rather than the app's own exit timeout.
        stream.on_end = lambda: self._ended(ring)
        stream.shutdown(None if self.stopping.is_set() else _patience(self.settings))

    def _ended(self, ring: Ring) -> None:
        """The stream's records are final, its last checkpoint durable: the app's shutdown waits no more."""
        ring.set_word(TAIL, ring.next)
        self._send(b"E")

    def _send(self, kind: bytes, data: Any = None) -> None:
        """A frame to the app, JSON; the app may be gone already (killed): its ring is read all the same."""
        body = json.dumps(data).encode() if data is not None else b""
        with contextlib.suppress(OSError):
            self.conn.sendall(FRAME.pack(kind, len(body)) + body)

    def _pump(self, ring: Ring, stream: RingStream) -> None:
        """Read slots while the app lives, then to the last committed one."""
        handoff = stream.handoff
        queue: Any
        queue, capacity, wake_at = handoff.queue, handoff.capacity, max(1, self.settings.batch_size)
        pause = _NAP
        unwoken = 0  # slots queued since the stream's worker was last woken
        while True:
            self._messages(block=False)
            read = 0
            while len(queue) < capacity:
                run = self._read_run(ring)
                if run is None:
                    break
                queue.append(run)
                read += run.records or 1  # records: what the worker is woken for (a batch of them)
                if run.ticket is not None:
                    handoff.wake.set()
            if self._flush and handoff.consumer is not None and not ring.ready():
                # Everything the app committed before its flush is queued: a marker behind it exports the
                # batch now (as an in-process flush does), not at the worker's next timer.
                self._flush = False
                queue.append(Marker())
                handoff.wake.set()
            if read:
                self.read += 1
                ring.set_word(TAIL, ring.next)
                self._losses(ring, handoff)
                if handoff.consumer is None:
                    handoff.start()
                unwoken += read
                if unwoken >= wake_at:
                    handoff.wake.set()
                    unwoken = 0
                pause = _NAP if read >= _BUSY else min(pause, _LONGEST_NAP)
                continue
            self._losses(ring, handoff)
            if not self._open or self.stopping.is_set():
                if not ring.ready():  # nothing committed is left: the stream may end
                    return
                continue
            # While accesses keep coming, nap (the app is never asked to wake us: no system call of
            # its); once idle, say so in the ring and sleep until the app's next slot wakes us.
            if pause <= _LONGEST_NAP:
                ready, _, _ = select.select([self.conn], [], [], pause)
                pause *= 2
            elif ring.doze():
                ready, _, _ = select.select([self.conn], [], [], _SLEEP)
                ring.wake()
            else:  # a slot came as it dozed off: read it now
                continue
            if ready:
                self._messages(block=True)

    def _read_run(self, ring: Ring) -> RawRun | TakenRun | None:
        """Up to ``_RUN`` committed slots with their shapes; None when none is committed.

        The common run, every shape known and none made for one access: its raw bytes, its shapes found in
        C (``resolve_raw``); the rest slot by slot, as tuples.
        """
        raw = ring.read_raw(_RUN)
        if not raw:
            return None
        if not self._once and (found := resolve_raw(raw, self.shapes)) is not None:
            marks = self._forget  # ids below a mark are not used past its index: forget them after the run
            while marks and ring.next >= marks[0][0]:
                below = marks.pop(0)[1]
                self.shapes = {k: v for k, v in self.shapes.items() if k >= below}
            wait = found[3]
            return RawRun(raw, found[0], Settle(ring, wait) if wait >= 0 else None, found[1], found[2])
        slots = slots_of(raw)
        shapes: list[list[Shape]] = []
        ticket = None
        records = flags = 0
        known, once, forget = self.shapes, self._once, self._forget  # the set and list change in place
        add_shapes = shapes.append
        for slot in slots:
            sids, slot_flags = slot[7], slot[1]
            flags |= slot_flags
            # the common slot, one shape already known: no call; the rest through _resolve
            if len(sids) == 1 and not once and (shape := known.get(sids[0])) is not None:
                add_shapes([shape])
                records += 1
            else:
                planned = self._resolve(sids)
                add_shapes(planned)
                records += len(planned)
            if slot_flags & WAIT:
                ticket = Settle(ring, slot[0])
            # forget a shape once read past its last use (the index of the slot just taken, + 1)
            while forget and slot[0] + 1 >= forget[0][0]:
                below = forget.pop(0)[1]
                self.shapes = known = {k: v for k, v in known.items() if k >= below}
        return TakenRun(slots, shapes, ticket, records, flags)

    def _resolve(self, sids: tuple[int, ...]) -> list[Shape]:
        """The slot's shapes; one not yet seen was sent before the slot was written: wait for it."""
        shapes = self.shapes
        out = []
        for sid in sids:
            while sid not in shapes and self._open:
                self._messages(block=True)
            out.append(shapes[sid])
            if sid in self._once:
                self._once.discard(sid)
                del shapes[sid]
        return out

    def _losses(self, ring: Ring, handoff: Any) -> None:
        """Counters the app keeps in its ring's header, turned into the stream's loss reports."""
        seen = self._seen
        dropped = ring.word(DROPPED)
        if dropped != seen["dropped"]:
            handoff.note_dropped(dropped - seen["dropped"])
            seen["dropped"] = dropped
            ring.set_word(TAKEN, dropped)
        for i, (reason, word) in enumerate(REFUSALS.items(), 1):
            count = ring.word(word)
            if count != seen[reason]:
                for _ in range(count - seen[reason]):
                    handoff.refuse(reason)
                seen[reason] = count
                ring.set_word(TAKEN + i, count)

    def _messages(self, *, block: bool) -> None:
        """Take whatever the app sent: shapes, nudges; notice its end (exit, kill -9)."""
        if self._open:
            try:
                chunk = self.conn.recv(262144, 0 if block else socket.MSG_DONTWAIT)
            except BlockingIOError:
                chunk = None
            except OSError:
                chunk = b""
            if chunk == b"":
                self._open = False
            elif chunk:
                self._buffer += chunk
        buf = self._buffer
        while len(buf) >= FRAME.size:
            kind, size = FRAME.unpack_from(buf)
            if len(buf) < FRAME.size + size:
                break
            payload, buf = buf[FRAME.size:FRAME.size + size], buf[FRAME.size + size:]
            if kind == b"S":
                self._shape(json.loads(payload))
            elif kind == b"F":
                forget = json.loads(payload)
                self._forget.append((int(forget["at"]), int(forget["below"])))
            elif kind == b"L":
                self._flush = True
            elif kind == b"Q" and self._stream is not None:  # the app's stats(): the stream's counters
                self._send(b"C", self._stream.counts(spool=payload == b"spool"))
        self._buffer = buf

    def _shape(self, data: dict[str, Any]) -> None:
        attrs = data["attrs"]
        sid = int(data["id"])
        event, source, outcome = data["kind"]
        kind = self._kinds.setdefault((event, source, outcome), (event, source, outcome))
        severity, text = int(data["severity"]), data["severity_text"]
        encoded = encode_attributes(attrs)
        plan = plan_of(attrs, data["body"], data["tail"], severity, text, encoded)
        self.shapes[sid] = Shape(attrs, data["body"], data["tail"], severity, text, encoded, len(attrs),
                                 kind, plan)
        if data.get("once"):
            self._once.add(sid)


def _patience(settings: Settings) -> float:
    """How long an app's stream may take to settle once its app is gone (seconds)."""
    return max(settings.shutdown_timeout_ms, settings.export_retry_timeout_ms) / 1000 + _SEND_TIMEOUT


def serve(listener: socket.socket, settings: Settings) -> int:
    """Accept app processes until none is left (or SIGTERM), then let each stream drain; exit status."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    members: list[Member] = []
    listener.settimeout(0.1)
    idle_since = ticked = time.monotonic()
    last_read = -1  # runs of slots all members had read at the last tick
    linger = _FIRST_WAIT
    while not stopping.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            conn = None
        if conn is not None:
            conn.setblocking(True)
            member = Member(settings, conn, stopping)
            members.append(member)
            member.thread.start()
            linger = _LINGER
        members = [m for m in members if m.thread.is_alive()]
        now = time.monotonic()
        if now - ticked >= _QUIET:
            read, ticked = sum(m.read for m in members), now
            if read == last_read:
                malloc_trim()
            last_read = read
        if members:
            idle_since = now
        elif now - idle_since > linger:
            break
    listener.close()
    for member in members:
        member.thread.join()
    return 0


def main(argv: list[str]) -> int:
    """The agent's entry point: the inherited listening socket's descriptor is its only argument."""
    # The agent's work is batch work: it takes its fair share of the CPU, but its wake-ups never preempt
    # the app or its Redis (SCHED_BATCH; theirs preempt it as before): it does not lengthen round trips.
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed: as any process
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    # The agent's own exports are never traced or audited, whatever was loaded into it.
    suppress_instrumentation()
    malloc_arenas(_ARENAS)  # before any thread of the agent's is made
    listener = socket.socket(fileno=int(argv[0]))
    settings = settings_from(sys.stdin.buffer.read())  # exactly the settings the app checked
    # What was imported stays: out of the collector's sight. The reader's slots (tuples, made by the
    # hundred thousand a second) mostly die in the worker before a collection would look at them once
    # collections are rarer: the collector took a tenth of the reader's time at the default threshold.
    gc.freeze()
    gc.set_threshold(100_000, 20, 20)
    return serve(listener, settings)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
