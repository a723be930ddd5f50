"""A fail-closed caller's wait for its slot to settle: polled with growing pauses, in a thread or a coroutine.

The agent settles a slot when its record is sent, spooled or reported lost, and says so in the
ring's header; a caller waiting on it looks there with pauses that double from 50 µs (a thread's;
a coroutine's, from 100 µs) up to 2 ms, and gives up at its time limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["until_settled", "until_settled_async"]


def until_settled(settled: Callable[[], bool | None], limit: float) -> bool:
    """``settled()``'s first answer (None: not yet), or False once ``limit`` seconds are up."""
    deadline, pause = time.monotonic() + limit, 0.00005
    while (verdict := _verdict(settled, deadline)) is None:
        time.sleep(pause)
        pause = min(pause * 2, 0.002)
    return verdict


async def until_settled_async(settled: Callable[[], bool | None], limit: float) -> bool:
    """The same without blocking the event loop."""
    deadline, pause = time.monotonic() + limit, 0.0001
    while (verdict := _verdict(settled, deadline)) is None:
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.002)
    return verdict


def _verdict(settled: Callable[[], bool | None], deadline: float) -> bool | None:
    """A waiting caller's answer once its slot is settled or its time is up; None to wait on."""
    verdict = settled()
    if verdict is None and time.monotonic() >= deadline:
        return False
    return verdict
