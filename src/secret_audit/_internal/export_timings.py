"""Export request durations measured where the app's MeterProvider is not (its audit agent), kept for the app.

The agent's sender times each request of an app's stream as the in-process one does, but the app's
``secret_audit.export.duration`` histogram lives in the app. So each stream keeps its durations here
until the app asks for its stream's counts (a ``Q`` frame, once per metric collection), and the app
records them into its histogram at that collection (``meters``), on its metric reader's thread.

Exact, not estimated: up to ``KEEP`` durations between two questions travel as they were measured
(JSON carries a float's shortest repr, which reads back to the same float), so the app records the
very values, in order within each result (each is its own series of the histogram), that the
in-process pipeline would have recorded: the same count, sum, buckets, least and greatest. Past
``KEEP`` (an app that never collects, or collects seldom under a great many requests) the rest are
folded per bucket of the histogram's boundaries into count, sum, least and greatest, so memory stays
bounded; replayed as the least, the greatest and the rest at their mean (which lies between them, so
in the same bucket), they still give every bucket's count, the count, least and greatest exactly,
and the sum up to floating-point rounding.
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from secret_audit.instruments import BUCKETS

__all__ = ["KEEP", "ExportTimings"]

KEEP = 4096  # durations kept one by one between two questions; past it, folded per bucket
_BOUNDS = BUCKETS["secret_audit.export.duration"]


class ExportTimings:
    """One stream's export durations by result (a SendResult value), until taken."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the sender and worker add; the agent's reader or app's watcher takes
        self._values: dict[str, array[float]] = {}  # by result, in order: 8 bytes a duration
        self._kept = 0
        # (result, bucket) -> [count, sum, least, greatest]
        self._folded: dict[tuple[str, int], list[float]] = {}

    def add(self, seconds: float, result: str) -> None:
        """One request's duration (``courier.send``, in place of the app's histogram)."""
        with self._lock:
            if self._kept < KEEP:
                values = self._values.get(result)
                if values is None:
                    values = self._values[result] = array("d")
                values.append(seconds)
                self._kept += 1
            else:
                self._fold(seconds, result, 1, seconds, seconds, seconds)

    def take(self) -> dict[str, Any]:
        """What was added since the last take, as JSON; none of it is kept here after."""
        with self._lock:
            values, self._values, self._kept = self._values, {}, 0
            folded, self._folded = self._folded, {}
        return {"values": {result: list(kept) for result, kept in values.items()},
                "folded": [[result, *row] for (result, _), row in folded.items()]}

    def merge(self, taken: dict[str, Any]) -> None:
        """Add what another ``ExportTimings`` took (the app's watcher, with each answer of its agent)."""
        for result, values in taken.get("values", {}).items():
            for seconds in values:
                self.add(float(seconds), str(result))
        with self._lock:
            for result, count, total, least, greatest in taken.get("folded", ()):
                self._fold(float(least), str(result), int(count), float(total), float(least), float(greatest))

    def drain(self) -> Iterator[tuple[float, str]]:
        """Every duration taken, as ``(seconds, result)`` to record: the kept ones as measured, a folded
        bucket's as its least, its greatest and the rest at their mean."""
        taken = self.take()
        for result, values in taken["values"].items():
            for seconds in values:
                yield seconds, result
        for result, n, total, least, greatest in taken["folded"]:
            count = int(n)
            yield least, result
            if count > 1:
                yield greatest, result
            if count > 2:
                mean = min(max((total - least - greatest) / (count - 2), least), greatest)
                for _ in range(count - 2):
                    yield mean, result

    def _fold(self, seconds: float, result: str, count: int, total: float, least: float, most: float) -> None:
        """Fold ``count`` durations of one bucket (the one ``seconds`` falls in) into its row (lock held)."""
        key = (result, bisect_left(_BOUNDS, seconds))  # the SDK's bucket: a value on a bound is in the lower
        row = self._folded.get(key)
        if row is None:
            self._folded[key] = [count, total, least, most]
        else:
            row[0] += count
            row[1] += total
            row[2] = min(row[2], least)
            row[3] = max(row[3], most)
