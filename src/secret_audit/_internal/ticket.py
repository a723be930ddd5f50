"""A fail-closed caller's receipt: set by the worker once its records are durable (or cannot be)."""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

__all__ = ["Ticket"]


class Ticket:
    """Completed once: ``ok`` tells whether the records were acknowledged or spooled."""

    __slots__ = ("_event", "_future", "_loop", "ok")

    def __init__(self, *, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._event = threading.Event()
        self.ok = False
        self._loop = loop
        self._future: asyncio.Future[bool] | None = loop.create_future() if loop is not None else None

    def complete(self, ok: bool) -> None:
        """Called on the worker thread; wakes a waiting thread or event loop."""
        if self._event.is_set():
            return
        self.ok = ok
        self._event.set()
        if self._loop is not None and self._future is not None:
            # A closed loop raises RuntimeError: nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(_resolve, self._future, ok)

    def wait(self, timeout: float) -> bool:
        """Block a thread until durable; False on timeout or failure."""
        return self._event.wait(timeout) and self.ok

    async def wait_async(self, timeout: float) -> bool:
        """Await durability without blocking the event loop."""
        if self._future is None:
            return self.wait(0)
        import asyncio  # here, not at the top: the audit agent never awaits, and asyncio is 2.5 MiB

        try:
            return await asyncio.wait_for(asyncio.shield(self._future), timeout)
        except asyncio.TimeoutError:
            return False


def _resolve(future: asyncio.Future[Any], ok: bool) -> None:
    if not future.done():
        future.set_result(ok)
