"""The in-process pipeline fed with ring slots: an app's stream in its agent, or the app's own once it died.

A slot names its access by numbers (shape ids, start and end, the ids of its audit span); with
its shapes resolved it is built as the agent builds it: records filled from the shapes, and the
audit span made with the ids the app chose when the slot asks for one (``SPANS_VIA=agent``), through
a tracer provider for the app's resource whose id generator hands out those ids. The agent's
``RingStream`` takes only slots; the app's fallback takes the slots its dead agent had not settled
and then the app's accesses as any in-process pipeline does.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from secret_audit._internal.agent_spans import SpanMaker
from secret_audit._internal.config import Settings
from secret_audit._internal.pipeline import AuditPipeline
from secret_audit._internal.ring import SPAN, SPAN_PART, Slot
from secret_audit._internal.shapes import NO_IDS, Ids, RecordBuilder, Shape, fill

__all__ = ["SlotPipeline", "Taken"]

_log = logging.getLogger("secret_audit")


class Taken(NamedTuple):
    """A slot as the stream's worker takes it, shapes resolved (``ticket``: a fail-closed caller waits)."""

    slot: Slot
    shapes: list[Shape]
    ticket: Any


class SlotPipeline(AuditPipeline):
    """An in-process pipeline that also takes ring slots (``Taken``) from its queue."""

    def __init__(self, settings: Settings, resource: dict[str, Any] | None, *, spans: SpanMaker | None = None,
                 ) -> None:
        super().__init__(settings, tracer_provider=spans.provider if spans is not None else None)
        self._resource = resource  # the app's, for the spans made with chosen ids
        self._spans = spans
        self._span_builder: RecordBuilder | None = None
        self._span_records: list[dict[str, Any]] = []  # an access's records before its last slot

    def _take(self, item: Any) -> int:
        if not isinstance(item, Taken):
            return super()._take(item)
        if self._backend is None:
            self._prepare()
        _, flags, start, end, trace_id, span_id, trace_flags, _, parent = item.slot
        shapes = item.shapes
        records, bodies = fill(shapes, start, end)
        if flags & (SPAN | SPAN_PART):
            self._span_records.extend(records)
            if flags & SPAN:  # the access's last slot: its span, with the ids the app chose
                records_of_span, self._span_records = self._span_records, []
                try:
                    spans, builder = self._span_maker()
                    builder.span_ids(spans.context(trace_id, span_id, trace_flags, parent), records_of_span,
                                     start, end)
                except Exception:  # a span we cannot make never costs the records
                    self._ledger.internal_errors += 1
                    _log.exception("secret-audit: failed to make an audit span")
        ids: Ids = NO_IDS
        if trace_id:
            ids = (trace_id, span_id, trace_flags, f"{trace_id:032x}", f"{span_id:016x}")
        return self._stamp(records, shapes, bodies, ids, start)

    def _span_maker(self) -> tuple[SpanMaker, RecordBuilder]:
        """The provider for spans with chosen ids (made at the first such slot), and a builder on it."""
        if self._spans is None:
            self._spans = SpanMaker.for_resource(self._resource)
        if self._span_builder is None:
            self._span_builder = RecordBuilder(self.settings, self._spans.provider)
        return self._spans, self._span_builder

    def shutdown(self, timeout: float | None = None) -> None:
        super().shutdown(timeout)
        if self._spans is not None:
            self._spans.flush(self.settings.shutdown_timeout_ms)
