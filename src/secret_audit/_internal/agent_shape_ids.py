"""A ring's shape ids: a shape's static attributes go to the agent once, and stay while a slot names them.

A slot names its shapes (kinds of access: static attributes, body, severity) by small ids. The first
slot of a shape is preceded by its ``S`` frame; an error's shape is made for its one access, sent
each time and marked ``once``. At 4,096 ids the app starts afresh (``F``): the agent forgets the old
ids once it has read past the slots that used them, the app once those slots are settled. Until
then the app holds every shape an unsettled slot may name (``HeldShapes``): what it builds the
slots from if its agent dies (``agent_takeover``).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Sequence

from secret_audit._internal import ring as hdr
from secret_audit._internal.agent_link import AgentLink
from secret_audit._internal.ring import Ring
from secret_audit._internal.shapes import Shape

__all__ = ["HeldShapes", "ShapeIds"]

_LIMIT = 4096  # shape ids before the app starts afresh


class ShapeIds:
    """The ids this process's ring names shapes by, told over ``link``; ``on_forget`` drops copies of them."""

    def __init__(self, link: AgentLink, on_forget: Sequence[Callable[[], None]]) -> None:
        # id(shape) -> (its id, the shape): read inline by the hand-off's writer, changed here only, in place
        self.known: dict[int, tuple[int, Shape]] = {}
        self.held = HeldShapes()  # every shape an unsettled slot may name, by id
        self._next = 0
        self._link = link
        self._on_forget = on_forget

    def id_of(self, shape: Shape, ring: Ring) -> int:
        """A shape's id in ``ring``, sending its static attributes to the agent the first time (OSError if
        the agent went away)."""
        known = self.kept(shape)
        if known is not None:
            return known
        once = "error.type" in shape.attrs  # an error's shape is made for its one access
        with self._link.lock:
            held = self.held
            if self._next - held.floor >= _LIMIT:
                self.forget(ring)
            sid = self._next
            self._next += 1
            self._link.send(b"S", json.dumps({
                "id": sid, "attrs": shape.attrs, "body": shape.body, "tail": shape.tail,
                "severity": shape.severity, "severity_text": shape.severity_text, "kind": shape.kind,
                "once": once,
            }).encode())
            held.keep(sid, shape)
            if not once:
                self.known[id(shape)] = (sid, shape)
        return sid

    def kept(self, shape: Shape) -> int | None:
        """A shape's id if it has one that the next slots may name (not an error's, not forgotten)."""
        entry = self.known.get(id(shape))
        return entry[0] if entry is not None and entry[1] is shape else None

    def forget(self, ring: Ring) -> None:
        """Drop every id so far (under the link's lock): the agent forgets them once it has read past the
        slots using them, this process once they are settled."""
        at, below = ring.next, self._next
        self._link.send(b"F", json.dumps({"below": below, "at": at}).encode())
        self.known.clear()
        for drop in self._on_forget:
            drop()
        self.held.prune(ring.word(hdr.SETTLED))
        self.held.release(at, below)


class HeldShapes:
    """The shapes a ring's unsettled slots may name, by id: what the app needs if its agent dies."""

    def __init__(self) -> None:
        self.by_id: dict[int, Shape] = {}
        self.floor = 0  # ids below it were forgotten (released once the slots using them are settled)
        self._releases: deque[tuple[int, int]] = deque()  # (ring index, ids below)

    def keep(self, sid: int, shape: Shape) -> None:
        self.by_id[sid] = shape

    def release(self, at: int, below: int) -> None:
        """Ids below ``below`` are not used by slots from ``at`` on: drop them once ``at`` is settled."""
        self.floor = below
        self._releases.append((at, below))

    def prune(self, settled: int) -> None:
        releases = self._releases
        below = -1
        while releases and releases[0][0] <= settled:
            below = releases.popleft()[1]
        if below >= 0:
            self.by_id = {sid: shape for sid, shape in self.by_id.items() if sid >= below}
