"""Record times bounded against the receive time, so a request cannot make partitions for any month."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from secret_audit.store._rows import stamp_of, time_of_stamp

__all__ = ["HELD_KIND", "TimeBounds", "Window"]

# The finding for records stored at their receive time because their own time was out of bounds.
HELD_KIND = "time_out_of_bounds"
_SECOND_US = 1_000_000
_DAY_US = 86_400 * _SECOND_US


@dataclass(frozen=True, slots=True)
class Window:
    """One request's bounds and receive time, as the row time's stamps (see _rows.stamp_of)."""

    low: int
    high: int
    now: int


class TimeBounds:
    """A record timed more than ``max_skew_s`` ahead of the store's clock, or more than ``max_age_days``
    behind it, is stored at its receive time, with its own time kept in ``time_unix_nano`` and a
    finding: a record is never lost for its time, and the months one request can touch are at most
    three (the age is at most 31 days), so it cannot make partitions for arbitrary months."""

    def __init__(self, max_skew_s: int, max_age_days: int, clock: Callable[[], int] = time.time_ns) -> None:
        self.max_skew_s = max_skew_s
        self.max_age_days = max_age_days
        self.clock = clock

    def window(self) -> Window:
        """The bounds for a request received now."""
        now = stamp_of(self.clock())
        return Window(now - self.max_age_days * _DAY_US, now + self.max_skew_s * _SECOND_US, now)

    def runs(
        self, held: Iterable[tuple[str, str | None, int, int]], now: int
    ) -> list[tuple[str, str | None, int, int, str, str]]:
        """Records stored at the receive time ``now``, as (stream, tenant, sequence, own stamp), grouped
        into one finding per stream and run of consecutive sequences: (stream, tenant, first, last,
        detail, stored time)."""
        groups: list[list[tuple[str, str | None, int, int]]] = []
        for item in sorted(held, key=lambda h: (h[0], h[2])):
            if groups and groups[-1][-1][0] == item[0] and groups[-1][-1][2] + 1 == item[2]:
                groups[-1].append(item)
            else:
                groups.append([item])
        stored = _iso(now)
        out = []
        for group in groups:
            stream, tenant, first = group[0][0], group[0][1], group[0][2]
            last = group[-1][2]
            own = sorted(h[3] for h in group)
            span = _iso(own[0]) if own[0] == own[-1] else f"{_iso(own[0])} .. {_iso(own[-1])}"
            detail = (
                f"sequence {first}..{last}: record time {span} is outside the store's bounds "
                f"(at most {self.max_skew_s} s ahead of its clock, {self.max_age_days} days behind); "
                f"stored at the receive time {stored}, the record's own time stays in time_unix_nano"
            )
            out.append((stream, tenant, first, last, detail, stored))
        return out


def _iso(stamp: int) -> str:
    return time_of_stamp(stamp).isoformat().replace("+00:00", "Z")
