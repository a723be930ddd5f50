"""In-process counters behind /stats: ingest totals, a one-minute rate, and requests in flight."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

__all__ = ["Counters"]


class Counters:
    """Thread-safe counters; the rate is events accepted over the last 60 seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recent: deque[tuple[float, int]] = deque()
        self.started = time.time()
        self.accepted = 0
        self.duplicates = 0
        self.rejected = 0
        self.dropped_non_audit = 0
        self.requests = 0
        self.failed_requests = 0
        self.in_flight = 0
        self.unauthorized = 0
        self._queries: dict[tuple[str, str], int] = {}  # audited reads by (role, outcome)

    def add(self, accepted: int, duplicates: int, rejected: int, dropped: int) -> None:
        """Count one finished ingest request."""
        now = time.monotonic()
        with self._lock:
            self.requests += 1
            self.accepted += accepted
            self.duplicates += duplicates
            self.rejected += rejected
            self.dropped_non_audit += dropped
            self._recent.append((now, accepted))
            while self._recent and self._recent[0][0] < now - 60:
                self._recent.popleft()

    def bump(self, name: str, delta: int = 1) -> None:
        """Adjust a plain counter by name."""
        with self._lock:
            setattr(self, name, getattr(self, name) + delta)

    def query(self, role: str, outcome: str) -> None:
        """Count one audited read of the trail (or its refusal) by the caller's role."""
        with self._lock:
            self._queries[(role, outcome)] = self._queries.get((role, outcome), 0) + 1

    def queries_served(self) -> dict[tuple[str, str], int]:
        """Audited reads so far, by (role, outcome)."""
        with self._lock:
            return dict(self._queries)

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy for the /stats answer."""
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - 60:
                self._recent.popleft()
            window = min(60.0, max(1.0, time.time() - self.started))
            return {
                "uptime_s": round(time.time() - self.started, 1),
                "ingest_rate_per_s": round(sum(n for _, n in self._recent) / window, 1),
                "accepted": self.accepted,
                "duplicates": self.duplicates,
                "rejected": self.rejected,
                "dropped_non_audit": self.dropped_non_audit,
                "requests": self.requests,
                "failed_requests": self.failed_requests,
                "queue_depth": self.in_flight,
                "unauthorized": self.unauthorized,
            }
