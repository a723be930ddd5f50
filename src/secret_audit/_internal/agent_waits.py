"""A fail-closed caller's wait for its slot to settle: polled with growing pauses, in a thread or a coroutine.

The agent settles a slot when its record is sent, spooled or reported lost, and says so in the
ring's header; a caller waiting on it looks there with pauses that double from 50 µs (a thread's;
a coroutine's, from 100 µs) up to 2 ms, and gives up at its time limit.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from secret_audit._internal import ring as hdr
from secret_audit._internal.ring import Ring

__all__ = ["Settling", "until_settled", "until_settled_async"]


class Settling(Protocol):
    """What a wait looks at: the hand-off's ring, and whether the in-process pipeline took over."""

    ring: Ring | None
    fallback: Any


def until_settled(handoff: Settling, idx: int, lost: int, limit: float) -> bool:
    """Whether slot ``idx`` was settled durable (no batch lost since ``lost`` was read) within ``limit``."""
    deadline, pause = time.monotonic() + limit, 0.00005
    while (verdict := _verdict(handoff, idx, lost, deadline)) is None:
        time.sleep(pause)
        pause = min(pause * 2, 0.002)
    return verdict


async def until_settled_async(handoff: Settling, idx: int, lost: int, limit: float) -> bool:
    """The same without blocking the event loop."""
    deadline, pause = time.monotonic() + limit, 0.0001
    while (verdict := _verdict(handoff, idx, lost, deadline)) is None:
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.002)
    return verdict


def _verdict(handoff: Settling, idx: int, lost: int, deadline: float) -> bool | None:
    """A waiting caller's answer once its slot is settled or its time is up; None to wait on."""
    settled = _settled(handoff, idx, lost)
    if settled is None and time.monotonic() >= deadline:
        return False
    return settled


def _settled(handoff: Settling, idx: int, lost: int) -> bool | None:
    """None while the slot is not settled; then whether it is durable (no batch lost since)."""
    ring = handoff.ring
    if handoff.fallback is not None or ring is None:
        return False
    if ring.word(hdr.SETTLED) <= idx:
        return None
    return bool(ring.word(hdr.LOST) == lost)
