"""Fan-out of freshly committed events to live-stream subscribers, across threads into the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from secret_audit.store._query import Filters

__all__ = ["Hub", "Subscription"]


@dataclass(eq=False)
class Subscription:
    """One live client: its filters, tenant scope and a bounded queue in its own event loop."""

    filters: Filters
    tenant: str | None
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=lambda: asyncio.Queue(10000))
    overflowed: bool = False

    def offer(self, event: dict[str, Any]) -> None:
        """Queue an event from the loop's thread; a full queue ends the stream rather than skip."""
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            self.queue.get_nowait()
            self.queue.put_nowait(None)


class Hub:
    """Holds the subscribers; publish() is called after each ingest commit."""

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()
        # told when the first subscriber arrives or the last one leaves (the live bus announces it)
        self.on_presence: Callable[[], None] | None = None

    def subscribe(self, filters: Filters, tenant: str | None) -> Subscription:
        """Register a subscriber in the running event loop."""
        sub = Subscription(filters, tenant, asyncio.get_running_loop())
        with self._lock:
            self._subs.add(sub)
            first = len(self._subs) == 1
        if first and self.on_presence is not None:
            self.on_presence()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a subscriber once its client is gone."""
        with self._lock:
            gone = sub in self._subs
            self._subs.discard(sub)
            last = gone and not self._subs
        if last and self.on_presence is not None:
            self.on_presence()

    @property
    def active(self) -> int:
        """How many live streams are open."""
        return len(self._subs)

    def publish(self, make_events: Callable[[], list[dict[str, Any]]]) -> None:
        """Hand committed events to every matching subscriber; builds them only when someone listens."""
        with self._lock:
            subs = list(self._subs)
        if not subs:
            return
        events = make_events()
        for sub in subs:
            wanted = [
                e for e in events
                if (sub.tenant is None or e.get("tenant") == sub.tenant) and sub.filters.matches(e)
            ]
            for event in wanted:
                sub.loop.call_soon_threadsafe(sub.offer, event)
