"""Unauthenticated calls, counted per client address and minute, so a flood cannot flood the trail."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Bucket", "Refusals"]

_OTHERS = "(other addresses)"  # the bucket of every address past the cap in one minute


@dataclass
class Bucket:
    """One client address's refused calls in one minute: the first is written at once, the rest later."""

    address: str
    minute: int  # Unix time of the minute's start
    route: str  # the first call's method and path
    reasons: Counter[str] = field(default_factory=Counter)
    written: int = 0  # calls already in the trail

    @property
    def count(self) -> int:
        """Calls refused in this bucket so far."""
        return sum(self.reasons.values())


class Refusals:
    """Counts refused unauthenticated calls and hands ``write`` at most two records per address and
    minute: the first call at once (before it is answered), and one summary of the others once the
    minute is over. At most ``max_addresses`` addresses a minute get their own bucket; the others share
    one. A timer writes summaries that no later call brings out; ``close`` writes what is left."""

    def __init__(
        self,
        write: Callable[[list[Bucket], bool], None],
        *,
        max_addresses: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.write = write  # (buckets, summaries): summaries False means each bucket's first call
        self.max_addresses = max_addresses
        self.clock = clock
        self._buckets: dict[tuple[str, int], Bucket] = {}
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._closed = False

    def note(self, address: str | None, route: str, reason: str) -> None:
        """Count one refused call; write it when it is its bucket's first, and any summaries now due."""
        now = self.clock()
        minute = int(now // 60) * 60
        address = address or "(unknown)"
        with self._lock:
            due = self._take_due(minute)
            bucket = self._buckets.get((address, minute))
            crowded = sum(b.minute == minute for b in self._buckets.values()) >= self.max_addresses
            if bucket is None and crowded:
                address = _OTHERS
                bucket = self._buckets.get((address, minute))
            first = bucket is None
            if bucket is None:
                bucket = self._buckets[(address, minute)] = Bucket(address, minute, route)
            bucket.reasons[reason] += 1
            if first:
                bucket.written = 1
            elif self._timer is None and not self._closed:
                self._timer = threading.Timer(max(0.0, minute + 60 - now) + 0.5, self.flush)
                self._timer.daemon = True
                self._timer.start()
        if due:
            self.write(due, True)
        if first:
            self.write([Bucket(bucket.address, minute, route, Counter({reason: 1}), 1)], False)

    def flush(self, everything: bool = False) -> None:
        """Write the summaries of finished minutes (of every minute with ``everything``)."""
        with self._lock:
            if self._timer is not None and self._timer is not threading.current_thread():
                self._timer.cancel()  # called directly: the next timer is set below if still needed
            self._timer = None
            due = self._take_due(None if everything else int(self.clock() // 60) * 60)
            if not everything and self._buckets and not self._closed:
                pending = any(b.count > b.written for b in self._buckets.values())
                if pending:
                    self._timer = threading.Timer(60 - self.clock() % 60 + 0.5, self.flush)
                    self._timer.daemon = True
                    self._timer.start()
        if due:
            self.write(due, True)

    def close(self) -> None:
        """Stop the timer and write every summary still pending."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self.flush(everything=True)

    def _take_due(self, minute: int | None) -> list[Bucket]:
        # buckets of minutes before ``minute`` (every bucket when None) leave; those with calls not
        # yet written come back to be summarised
        done = [k for k, b in self._buckets.items() if minute is None or b.minute < minute]
        due = []
        for key in done:
            bucket = self._buckets.pop(key)
            if bucket.count > bucket.written:
                due.append(bucket)
        return due
