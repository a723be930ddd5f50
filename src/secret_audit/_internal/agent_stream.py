"""One app process's stream in the audit agent: the in-process pipeline's parts, fed from its ring.

The stream settles the ring as its batches are acknowledged or spooled (the watermark the app's
fail-closed callers and its takeover read), keeps the counters the app reads in the ring's header
words, and answers the app's ``Q`` frames with the rest (its ledger, spool and export durations).
"""

from __future__ import annotations

from typing import Any

from secret_audit._internal.agent_span_otlp import SpanShipper, native_traces
from secret_audit._internal.agent_wire import EXPORTED, SPOOLED
from secret_audit._internal.config import Settings
from secret_audit._internal.export import PlainResource
from secret_audit._internal.export_timings import ExportTimings
from secret_audit._internal.ring import (
    CHECKPOINTS,
    DEGRADED,
    INTERNAL_ERRORS,
    LOST,
    LOST_EXPORT,
    SEQUENCE,
    SETTLED,
    SETTLED_SEQUENCE,
    Ring,
)
from secret_audit._internal.ring_stream import SlotPipeline

__all__ = ["RingStream", "Settle"]


class Settle:
    """Completed with a batch: moves the ring's settled watermark (and counts a batch that was lost)."""

    __slots__ = ("index", "ring")

    def __init__(self, ring: Ring, index: int) -> None:
        self.ring, self.index = ring, index

    def complete(self, durable: bool) -> None:
        ring = self.ring
        if not durable:  # degraded before the waiting caller wakes, as in-process: its next call refuses
            ring.set_word(DEGRADED, 1)
            ring.set_word(LOST, ring.word(LOST) + 1)
        if ring.word(SETTLED) <= self.index:
            ring.set_word(SETTLED, self.index + 1)


class RingStream(SlotPipeline):
    """One app process's stream in the agent: the in-process pipeline, fed from its ring."""

    def __init__(self, settings: Settings, ring: Ring, resource: dict[str, Any] | None) -> None:
        spans = None  # the SDK's span path, for a traces exporter ours does not speak
        if settings.spans_via != "app" and not native_traces():
            from secret_audit._internal.agent_spans import SpanMaker

            spans = SpanMaker.for_resource(resource)
        # the app's resource: records name the service and instance its spans name
        plain = PlainResource(resource) if resource else None
        self.timings = ExportTimings()  # its requests' durations, for the app's histogram (``counts``)
        super().__init__(settings, resource, spans=spans, records_resource=plain)
        self.ring = ring

    def _prepare(self) -> None:
        super()._prepare()
        self._backend.timings = self.timings

    def _export_batch(self) -> None:
        if self._last_index >= 0:
            self._batch.tickets.append(Settle(self.ring, self._last_index))
        super()._export_batch()

    def _settled(self, verdicts: list[Any]) -> None:
        super()._settled(verdicts)
        counts = self._ledger
        ring = self.ring
        last = max((v.batch.last for v in verdicts if not v.from_spool), default=0)
        if last > ring.word(SETTLED_SEQUENCE):  # sent, spooled or reported lost: a fallback takes up after it
            ring.set_word(SETTLED_SEQUENCE, last)
        ring.set_word(DEGRADED, int(self.handoff.degraded))
        ring.set_word(EXPORTED, counts.exported)
        ring.set_word(SPOOLED, counts.spooled)
        ring.set_word(SEQUENCE, self.stream.sequence)
        ring.set_word(LOST_EXPORT, counts.lost_export)
        ring.set_word(INTERNAL_ERRORS, counts.internal_errors)
        ring.set_word(CHECKPOINTS, counts.checkpoints_signed())

    def counts(self, spool: bool = False) -> dict[str, Any]:
        """What the app's stats() asks for (a ``Q`` frame): the in-process counters of this stream."""
        out = self._ledger.counts()
        out["sequence"] = self.stream.sequence
        out["export_durations"] = self.timings.take()  # the app records them into its histogram
        if spool and (waiting := self._delivery.spool) is not None:  # and what waits in its spool
            out["spool"] = waiting.stats()
        if self.settings.spans_via != "app" and native_traces():  # the agent's, for all its apps
            out["spans_dropped"] = SpanShipper.dropped_so_far()
        return out
