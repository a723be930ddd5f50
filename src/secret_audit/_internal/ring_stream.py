"""The in-process pipeline fed with ring slots: an app's stream in its agent, or the app's own once it died.

A slot names its access by numbers (shape ids, start and end, the ids of its audit span); with
its shapes resolved it is built as the agent builds it: records filled from the shapes, and the
audit span made with the ids the app chose when the slot asks for one (``SPANS_VIA=agent``): encoded
by ``agent_span_otlp`` when the env's traces exporter is OTLP/HTTP, else through a tracer provider for
the app's resource whose id generator hands out those ids. The agent's ``RingStream`` takes runs of
slots (``TakenRun``): their records are stamped and encoded by the engine in one call per stretch
(``Stream.stamp_slots``), a slot with an SDK span or a shape without a plan one at a time (our spans
are made from the shapes, and their records stamped by the engine). The app's fallback takes the
slots its dead agent had not settled (``Taken``) and then the app's accesses as any in-process
pipeline does.
"""

from __future__ import annotations

import json
import logging
from time import time_ns
from typing import TYPE_CHECKING, Any, NamedTuple

from secret_audit import contract
from secret_audit._internal.agent_span_otlp import SpanShipper, encode_lone_span, encode_span, native_traces
from secret_audit._internal.config import Settings
from secret_audit._internal.otlp import encode_key_values
from secret_audit._internal.pipeline import AuditPipeline
from secret_audit._internal.ring import SPAN, SPAN_PART, Slot, slots_of
from secret_audit._internal.shapes import NO_IDS, Ids, Shape, fill

if TYPE_CHECKING:  # the SDK's span path only: the agent imports neither unless it makes SDK spans
    from secret_audit._internal.agent_spans import SpanMaker
    from secret_audit._internal.builder import RecordBuilder

__all__ = ["Link", "RawRun", "SlotPipeline", "Taken", "TakenRun"]

_ONE_BY_ONE = SPAN | SPAN_PART  # slots whose records make a span: built one at a time for an SDK span

_log = logging.getLogger("secret_audit")


class Taken(NamedTuple):
    """A slot as the stream's worker takes it, shapes resolved (``ticket``: a fail-closed caller waits)."""

    slot: Slot
    shapes: list[Shape]
    ticket: Any

    @property
    def records(self) -> int:
        """How many records the slot makes (its shapes), as the queue's waiting count counts them."""
        return len(self.shapes) or 1


class TakenRun(NamedTuple):
    """Consecutive slots as the agent's reader takes them, shapes resolved; ``ticket`` settles the run's
    last slot a fail-closed caller waits on (settling is a watermark: the slots before it too)."""

    slots: list[Slot]
    shapes: list[list[Shape]]
    ticket: Any
    records: int  # how many records the run's slots make (their shapes)
    flags: int  # its slots' flags, or-ed: whether any makes a span


class Link(NamedTuple):
    """A queued request for the stream's first record, naming the stream it continues (``continue_from``)."""

    stream_id: str
    last_sequence: int
    ticket: Any = None
    records: int = 1
class RawRun(NamedTuple):
    """A ``TakenRun`` as the ring holds its slots (``Ring.read_raw``): never made into tuples unless a slot
    needs the one-by-one path; ``shapes`` one list, each slot's in turn (``engine.resolve_raw``)."""

    raw: bytes
    shapes: list[Shape]
    ticket: Any
    records: int
    flags: int

    def taken(self) -> TakenRun:
        """The same run as tuples, its shapes per slot."""
        slots = slots_of(self.raw)
        shapes, used = [], 0
        for slot in slots:
            shapes.append(self.shapes[used:used + len(slot[7])])
            used += len(slot[7])
        return TakenRun(slots, shapes, self.ticket, self.records, self.flags)


class SlotPipeline(AuditPipeline):
    """An in-process pipeline that also takes ring slots (``Taken``) from its queue."""

    def __init__(self, settings: Settings, resource: dict[str, Any] | None, *, spans: SpanMaker | None = None,
                 records_resource: Any = None) -> None:
        super().__init__(settings, tracer_provider=spans.provider if spans is not None else None,
                         resource=records_resource)
        self._resource = resource  # the app's, for the spans made with chosen ids
        self._spans = spans
        # spans by our own encoder (None: not yet asked): with the env's traces exporter OTLP/HTTP
        self._native: bool | None = False if spans is not None else None
        self._resource_key: str | None = None
        self._span_builder: RecordBuilder | None = None
        self._span_records: list[dict[str, Any]] = []  # an access's records before its last slot
        self._last_index = -1  # the ring index of the last slot whose records are in the batch
        self.on_end: Any = None  # called once shutdown made the records final (the agent tells its app)

    def continue_from(self, stream_id: str, last_sequence: int) -> None:
        """Queue, ahead of anything else, this stream's first record: it names the dead agent's stream it
        continues and that stream's last durable sequence, so a verifier tells that end from a cut tail."""
        if self.stream.sequence or self.handoff.queue:
            raise RuntimeError("a stream's link to its predecessor must be its first record")
        first: list[Any] = [Link(stream_id, last_sequence)]  # the queue takes more than accesses (_take)
        self.handoff.queue.extend(first)  # the worker stamps it, as it stamps every record
        self.handoff.start()
        self.handoff.wake.set()

    def _link(self, link: Link) -> int:
        if self._backend is None:
            self._prepare()
        attrs = {contract.OUTCOME: "error", contract.PREDECESSOR_ID: link.stream_id,
                 contract.PREDECESSOR_SEQUENCE: link.last_sequence}
        body = (f"Audit stream continues stream {link.stream_id} after its sequence {link.last_sequence}: "
                "the audit agent died")
        self._emit(contract.EVENT_CONTINUED, attrs, time_ns(), body)
        return 1

    def _take(self, item: Any) -> int:
        if type(item) is RawRun:
            return self._take_raw(item)
        if type(item) is TakenRun:
            return self._take_run(item)
        if type(item) is Link:
            return self._link(item)
        if not isinstance(item, Taken):
            return super()._take(item)
        return self._take_slot(item.slot, item.shapes)

    def _take_raw(self, run: RawRun) -> int:
        """A raw run in one engine call when it fits the batch and makes no span; else as a ``TakenRun``."""
        if self._backend is None:
            self._prepare()
        if (self._encodes and not self._echo and not run.flags & _ONE_BY_ONE
                and self._batch.records + run.records < self.settings.batch_size):
            stream, raw, shapes = self.stream, run.raw, run.shapes
            try:
                n: int = self._backend.add_framed(lambda out: stream.stamp_raw(raw, shapes, out))
            except (ValueError, OverflowError, TypeError):  # a value outside the engine's layout; no plan
                return self._take_run(run.taken())
            self._counted(shapes, n, int.from_bytes(raw[-72:-64], "little") - 1)
            return n
        return self._take_run(run.taken())

    def _counted(self, shapes: list[Shape], n: int, last_index: int) -> None:
        """The batch's account of ``n`` records the engine added: their kinds, its range, the last slot."""
        batch = self._batch
        kinds = batch.kinds
        last: Any = None
        count = 0  # counted by runs of one kind: a kind's hash is a tuple's, made per lookup
        for shape in shapes:
            kind = shape.kind
            if kind is last or kind == last:
                count += 1
                continue
            if count:
                kinds[last] = kinds.get(last, 0) + count
            last, count = kind, 1
        if count:
            kinds[last] = kinds.get(last, 0) + count
        if not batch.records:
            batch.first = self.stream.sequence - n + 1
        batch.records += n
        self._last_index = last_index

    def _take_run(self, run: TakenRun) -> int:
        """A run's records: stretches of plain slots through the engine, up to the batch's room each."""
        if self._backend is None:
            self._prepare()
        engine = self._encodes and not self._echo  # the engine writes OTLP bytes, and echoes nothing
        limit = self.settings.batch_size
        slots, shapes = run.slots, run.shapes
        # Slots whose records make a span are built one at a time: a lone record lends its span its stream
        # fields (event id, stream, sequence, chain), known once it is stamped, as in-process.
        if engine and not run.flags & _ONE_BY_ONE and self._batch.records + run.records < limit:
            return self._stamp_run(slots, shapes)  # the common run: one call
        built, i, n = 0, 0, len(slots)
        while i < n:
            j, room = i, limit - self._batch.records
            while engine and j < n and room > 0 and not slots[j][1] & _ONE_BY_ONE:
                room -= len(shapes[j])
                j += 1
            if j > i:
                built += self._stamp_run(slots[i:j], shapes[i:j])
                i = j
            else:
                built += self._slot_safely(slots[i], shapes[i])
                i += 1
            if self._batch.records >= limit:
                self.handoff.made_room()
                self._attest()
                self._export_batch()
        return built

    def _stamp_run(self, slots: list[Slot], shapes: list[list[Shape]], *, spans: bool = False) -> int:
        """Stamp and encode a stretch of slots in one engine call (``spans``: their spans made by the
        caller); slot by slot if it refuses one."""
        stream = self.stream
        try:
            n: int = self._backend.add_framed(lambda out: stream.stamp_slots(slots, shapes, out))
        except (ValueError, OverflowError, TypeError):  # a value outside the engine's layout; no plan
            return sum(self._slot_safely(slot, planned, span=not spans)
                       for slot, planned in zip(slots, shapes))  # noqa: B905
        self._counted([shape for planned in shapes for shape in planned], n, slots[-1][0])
        return n

    def _slot_safely(self, slot: Slot, shapes: list[Shape], *, span: bool = True) -> int:
        """One slot of a run; a record that cannot be built is counted and logged, the run goes on."""
        try:
            return self._take_slot(slot, shapes, span=span)
        except Exception:
            self._ledger.internal_errors += 1
            _log.exception("secret-audit: failed to build an audit record")
            return 0

    def _take_slot(self, slot: Slot, shapes: list[Shape], *, span: bool = True) -> int:
        if self._backend is None:
            self._prepare()
        self._last_index = slot[0]
        _, flags, start, end, trace_id, span_id, trace_flags, _, _ = slot
        if (span and flags & SPAN and len(shapes) == 1 and not self._span_records and self._encodes
                and not self._echo and self._native_spans()):
            return self._lone_slot(slot, shapes)
        records, bodies = fill(shapes, start, end)
        ids: Ids = NO_IDS
        if trace_id:
            ids = (trace_id, span_id, trace_flags, f"{trace_id:032x}", f"{span_id:016x}")
        n = self._stamp(records, shapes, bodies, ids, start)
        if span and flags & _ONE_BY_ONE:  # once stamped: a lone record lends the span its stream fields
            self._slot_span(slot, records)
        return n

    def _lone_slot(self, slot: Slot, shapes: list[Shape]) -> int:
        """An access of one record making our span: stamped by the engine, then its span from its shape's
        pieces and the stream fields the record got (the SDK span's attributes: the record's, in order)."""
        stream = self.stream
        prev = stream.head
        n = self._stamp_run([slot], [shapes], spans=True)
        if n == 1 and slot[6] & 1:  # sampled: the parent's flag, as the SDK's parent-based sampler
            shape, seq = shapes[0], stream.sequence
            try:
                fields = encode_key_values(b"\x4a", {
                    contract.EVENT_ID: f"{stream.id}:{seq}", contract.STREAM_ID: stream.id,
                    contract.SEQUENCE: seq, contract.CHAIN_PREV: prev, contract.CHAIN_HASH: stream.head})
                self._ship(encode_lone_span(slot[4], slot[5], slot[8], slot[2], slot[3], shape.attrs,
                                            shape.encoded, fields))
            except Exception:  # a span we cannot make never costs the records
                self._ledger.internal_errors += 1
                _log.exception("secret-audit: failed to make an audit span")
        return n

    def _native_spans(self) -> bool:
        """Whether this stream's spans are ours (asked once: the env's traces exporter is OTLP/HTTP)."""
        if self._native is None:
            self._native = native_traces()
        return self._native

    def _slot_span(self, slot: Slot, records: list[dict[str, Any]]) -> None:
        """Gather an access's records over its slots; at its last, its span with the ids the app chose."""
        _, flags, start, end, trace_id, span_id, trace_flags, _, parent = slot
        self._span_records.extend(records)
        if not flags & SPAN:
            return
        records_of_span, self._span_records = self._span_records, []
        try:
            if not self._native_spans():
                spans, builder = self._span_maker()
                context = spans.context(trace_id, span_id, trace_flags, parent)
                builder.span_ids(context, records_of_span, start, end)
            elif trace_flags & 1:  # sampled: the parent's flag, as the SDK's parent-based sampler
                self._ship(encode_span(trace_id, span_id, parent, start, end, records_of_span))
        except Exception:  # a span we cannot make never costs the records
            self._ledger.internal_errors += 1
            _log.exception("secret-audit: failed to make an audit span")

    def _ship(self, span: bytes) -> None:
        """Queue an encoded span on the process's one span shipper, under the app's resource."""
        if self._resource_key is None:
            self._resource_key = json.dumps(self._resource or {}, sort_keys=True)
        SpanShipper.shared().add(self._resource_key, self._resource, span)

    def _span_maker(self) -> tuple[SpanMaker, RecordBuilder]:
        """The provider for spans with chosen ids (made at the first such slot), and a builder on it."""
        from secret_audit._internal.agent_spans import SpanMaker
        from secret_audit._internal.builder import RecordBuilder

        if self._spans is None:
            self._spans = SpanMaker.for_resource(self._resource)
        if self._span_builder is None:
            self._span_builder = RecordBuilder(self.settings, self._spans.provider)
        return self._spans, self._span_builder

    def shutdown(self, timeout: float | None = None) -> None:
        super().shutdown(timeout)
        if self.on_end is not None:  # the records are final (the last checkpoint durable); spans may lag
            self.on_end()
        if self._spans is not None:
            self._spans.flush(self.settings.shutdown_timeout_ms)
        if self._native:
            SpanShipper.shared().flush(self.settings.shutdown_timeout_ms / 1000)
