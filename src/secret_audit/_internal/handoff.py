"""The hand-off: the bounded queue a secret call writes into, and all the caller's side ever waits on.

It owns what a caller touches: the queue (a deque today, the agent's ring later), backpressure,
fail-closed tickets, the ``degraded`` word that lets fail-closed calls refuse up front, and the
counters only callers change (queue-full drops, refusals, errors in our wrappers). Its interface
(``submit``, ``wait_durable``, ``accepting``, ``stats``) is what the agent's ring will implement.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from secret_audit._internal.config import Settings
from secret_audit._internal.event import Access, Item
from secret_audit._internal.ticket import Ticket

__all__ = ["Handoff", "Marker"]


_new_tuple = tuple.__new__  # an Access from a full field tuple, without the NamedTuple's Python __new__


class Marker:
    """A flush request travelling through the queue, set once everything before it is exported."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class Handoff:
    """One per pipeline, reset in place after fork (the wrappers hold its bound ``submit``)."""

    def __init__(
        self,
        settings: Settings,
        spawn: Callable[[], threading.Thread],
        successor: Callable[[], Handoff | None],
    ) -> None:
        self.capacity = settings.queue_size
        self._wake_at = max(1, settings.batch_size)
        self._full_wait = settings.queue_full_timeout_ms / 1000
        self.fail_closed_timeout = settings.fail_closed_timeout_ms / 1000
        self._spawn = spawn  # starts the consumer (the worker thread) at the first access
        self._successor = successor  # where a closed hand-off forwards (re-wiring replaced it)
        self.closed = False
        self.reset()

    def reset(self) -> None:
        """An empty queue, no consumer and zeroed counters: at start and in a forked child."""
        self.queue: deque[Access | Marker] = deque()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self.wake = threading.Event()
        self.consumer: threading.Thread | None = None
        self._waiting = 0
        self.degraded = False
        self.dropped = 0  # accesses lost to a full queue
        self._unreported_drops = 0
        self.refused: dict[str, int] = {}  # fail-closed refusals by reason
        self._unreported_refusals: dict[str, int] = {}
        self.errors = 0  # failures inside our wrappers, counted instead of raised to the caller

    # ---- the caller's side ----------------------------------------------------------------------

    def submit(self, access: Access) -> None:
        """Enqueue one access; waits a bounded time for room rather than dropping silently."""
        if self.closed:
            # Replaced by a newer pipeline (re-wiring): hand over rather than lose the record.
            current = self._successor()
            if current is not None:
                current.submit(access)
                return
        dq = self.queue
        if len(dq) >= self.capacity and not self._wait_for_room():
            with self._lock:
                lost = access.records
                self.dropped += lost
                self._unreported_drops += lost
            return
        dq.append(access)
        if self.consumer is None:
            self.start()
        if (access.ticket is not None or len(dq) >= self._wake_at) and not self.wake.is_set():
            # is_set() first: set() takes a lock, and while the worker is behind every call gets here
            self.wake.set()

    def submit_one(self, source: Any, target: Any, item: Item, start: int, end: int, ctx: Any) -> None:
        """A call that succeeded with one Item (a single-key command), its Items already made."""
        self.submit(_new_tuple(Access, (source, start, end, ctx, target, (item,), "success", None, None, None,
                                        None)))

    def accepting(self) -> bool:
        """False while records cannot be made durable: fail-closed callers refuse before calling."""
        return not (self.degraded or self.closed)

    def wait_durable(self, access: Access, timeout: float | None = None) -> bool:
        """Enqueue and wait until the access's records are acknowledged or spooled (fail-closed)."""
        ticket = access.ticket
        if not isinstance(ticket, Ticket):
            ticket = Ticket()
            access = access._replace(ticket=ticket)
        self.submit(access)
        return ticket.wait(self.fail_closed_timeout if timeout is None else timeout)

    async def wait_durable_async(self, access: Access, timeout: float | None = None) -> bool:
        """The same for coroutines, without blocking the event loop."""
        import asyncio  # imported by the running loop already; the agent, which never awaits, need not

        ticket = Ticket(loop=asyncio.get_running_loop())
        self.submit(access._replace(ticket=ticket))
        return await ticket.wait_async(self.fail_closed_timeout if timeout is None else timeout)

    def refuse(self, reason: str) -> None:
        """Count one fail-closed refusal (on the refused call's path only); the worker reports it."""
        with self._lock:
            self.refused[reason] = self.refused.get(reason, 0) + 1
            self._unreported_refusals[reason] = self._unreported_refusals.get(reason, 0) + 1

    def note_dropped(self, count: int) -> None:
        """Count accesses lost to a full queue elsewhere (an agent's ring); the worker reports them."""
        with self._lock:
            self.dropped += count
            self._unreported_drops += count

    def note_error(self) -> None:
        """Count a failure inside our wrapper; the caller's call goes on as if we were not there."""
        self.errors += 1

    def flush(self, timeout: float) -> bool:
        """Block until every access queued before the call is exported (or given up on)."""
        if self.closed:
            return not self.queue
        if self.consumer is None:
            if not self.queue:
                return True
            self.start()
        marker = Marker()
        self.queue.append(marker)
        self.wake.set()
        return marker.done.wait(timeout)

    def stats(self) -> dict[str, Any]:
        """What the caller's side counts: queue length and capacity, drops, refusals, errors, degraded."""
        return {
            "queued": len(self.queue),
            "queue_capacity": self.capacity,
            "dropped_queue_full": self.dropped,
            "refused": dict(self.refused),
            "degraded": self.degraded,
            "call_errors": self.errors,
        }

    def waiting(self) -> int:
        """Accesses still queued (a pipeline's commands count one each), flush requests aside."""
        return sum(a.records for a in list(self.queue) if not isinstance(a, Marker))

    # ---- the consumer's side --------------------------------------------------------------------

    def start(self) -> None:
        """Start the consumer once (not after close)."""
        with self._lock:
            if self.consumer is not None or self.closed:
                return
            self.consumer = self._spawn()

    def take_losses(self) -> tuple[int, dict[str, int]]:
        """Queue-full drops and refusals counted since the last call, for the stream's loss reports."""
        with self._lock:
            dropped, self._unreported_drops = self._unreported_drops, 0
            refusals, self._unreported_refusals = self._unreported_refusals, {}
        return dropped, refusals

    def made_room(self) -> None:
        """Wake callers waiting for room, after the consumer took a slice of the queue."""
        if self._waiting:
            with self._room:
                self._room.notify_all()

    def _wait_for_room(self) -> bool:
        self.wake.set()
        if self.closed or self.consumer is None:
            return False
        deadline = time.monotonic() + self._full_wait
        with self._room:
            self._waiting += 1
            try:
                while len(self.queue) >= self.capacity:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._room.wait(left)
            finally:
                self._waiting -= 1
        return True

