"""The in-process audit pipeline: one worker thread wiring the hand-off, builder, stream, delivery and ledger.

Each part owns its state (see docs/design/pipeline.md, section 7): the hand-off the callers'
queue, the record builder its shapes, the stream its sequence and chain, delivery its back end,
spool and retries, the ledger what was lost. This module only moves records between them. Its
lifecycle hooks (atexit, SIGTERM, fork) are installed by whoever starts it (``lifecycle.install``).
"""

from __future__ import annotations

import logging
import os
import threading
from time import time_ns
from typing import TYPE_CHECKING, Any

from secret_audit import contract
from secret_audit._internal.checkpoint import checkpoints_for
from secret_audit._internal.config import Settings
from secret_audit._internal.current import peek_pipeline, set_pipeline
from secret_audit._internal.delivery import REFUSED, Delivery, Sealed, Verdict
from secret_audit._internal.event import Access
from secret_audit._internal.export import audit_resource, build_sink, early_resource, preload_sink
from secret_audit._internal.handoff import Handoff, Marker
from secret_audit._internal.ledger import CREATED, Kind, Ledger
from secret_audit._internal.otlp import RecordData
from secret_audit._internal.quiet import suppress_instrumentation
from secret_audit._internal.shapes import SCOPE, SEVERITY, Ids, Shape, echo_line
from secret_audit._internal.stream import Stream
from secret_audit.version import __version__

if TYPE_CHECKING:
    from opentelemetry.sdk._logs.export import LogRecordExporter
    from opentelemetry.trace import TracerProvider

    from secret_audit._internal.builder import RecordBuilder

__all__ = ["AuditPipeline", "peek_pipeline", "set_pipeline"]

_log = logging.getLogger("secret_audit")

_new_record = tuple.__new__
_ACCESS = contract.EVENT_ACCESS
_SLICE = 64
# At exit, after the shutdown timeout, how long writing what is left to the spool may take.
_SPOOL_GRACE = 5.0


class _Batch:
    """The batch being built: its first sequence, size, kinds, waiting tickets and loss reports."""

    __slots__ = ("first", "kinds", "records", "reports", "tickets")

    def __init__(self) -> None:
        self.first = 0
        self.records = 0
        self.kinds: dict[Kind, int] = {}
        self.tickets: list[Any] = []
        self.reports: dict[int, Any] = {}


class AuditPipeline:
    """One per process (and per child after fork): sequence and chain are per stream."""

    def __init__(
        self,
        settings: Settings,
        *,
        exporter: LogRecordExporter | None = None,
        tracer_provider: TracerProvider | None = None,
        resource: Any = None,
    ) -> None:
        self.settings = settings
        self._custom_exporter = exporter
        self._tracer_provider = tracer_provider
        # Resource detection runs on a thread pool, which refuses work once the interpreter has
        # begun to exit: a three-line script's records are built then, so detect now (unless given one).
        self._fallback_resource = resource if resource is not None else early_resource(tracer_provider)
        self._checkpoints = checkpoints_for(settings)  # None without a signing key
        self._echo = settings.echo
        self.handoff = Handoff(settings, self._spawn, self._successor)
        # The caller's path: the wrappers call the hand-off directly, with nothing in between.
        self.submit = self.handoff.submit
        self._reset()
        preload_sink(settings, exporter)

    def _reset(self) -> None:
        """Fresh stream, queue and worker: used at start and in a forked child."""
        self.handoff.reset()
        self.stream = Stream()
        self._builder: RecordBuilder | None = None  # made at the first access built here: never in the agent
        self._stop = threading.Event()
        self._delivery = Delivery(self.settings.export_retry_timeout_ms / 1000, self._stop)
        self._ledger = Ledger()
        self._batch = _Batch()
        self._encodes = False
        self._backend: Any = None
        if self._checkpoints is not None:
            self._checkpoints.reset()

    @property
    def closed(self) -> bool:
        return self.handoff.closed

    @property
    def stream_id(self) -> str:
        """This process's current stream (a forked child gets its own)."""
        return self.stream.id

    def forked(self) -> None:
        """In a forked child: a stream of its own, an empty queue, no worker yet (lifecycle calls it)."""
        if not self.handoff.closed:
            self._reset()

    def stats(self) -> dict[str, Any]:
        """Counters for health checks and tests: what was queued, exported and lost."""
        out = self.counts()
        spool = self._delivery.spool
        out["spool"] = spool.stats() if spool is not None else None
        return out

    def counts(self) -> dict[str, Any]:
        """The counters alone, safe to read from any thread (the metrics' callbacks read them)."""
        return {"stream_id": self.stream.id, "sequence": self.stream.sequence, **self.handoff.stats(),
                **self._ledger.counts()}

    # ---- the caller's side, as the hand-off serves it ----------------------------------------------

    def accepting(self) -> bool:
        """False while records cannot be made durable: fail-closed callers refuse before calling."""
        return self.handoff.accepting()

    def wired_as(self, settings: Settings, exporter: Any, provider: Any) -> bool:
        """True when this open pipeline was built from exactly these settings and parts."""
        return (
            not self.handoff.closed
            and self.settings == settings
            and self._custom_exporter is exporter
            and self._tracer_provider is provider
        )

    def _successor(self) -> Any:
        current = peek_pipeline()
        if current is None or current is self or current.handoff.closed:
            return None
        return current.handoff

    # ---- public control ------------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every access queued before the call is exported (or given up on)."""
        return self.handoff.flush(timeout)

    def shutdown(self, timeout: float | None = None) -> None:
        """Flush what is queued within the shutdown timeout, then stop the worker and sink.

        While the endpoint is failing, what is left is spooled at once instead of waiting out the
        timeout; what can be neither sent nor spooled in time is reported on stderr.
        """
        handoff, delivery = self.handoff, self._delivery
        if handoff.closed:
            return
        limit = self.settings.shutdown_timeout_ms / 1000 if timeout is None else timeout
        spooling = self.settings.spool_dir is not None and not delivery.spool_failed
        if handoff.degraded and delivery.unavailable and spooling:  # an outage, not a refusal
            delivery.spool_only = True
        flushed = self.flush(limit)
        if not flushed and spooling and not delivery.spool_only:
            delivery.spool_only = True
            flushed = self.flush(_SPOOL_GRACE)
        handoff.closed = True
        self._stop.set()
        handoff.wake.set()
        thread = handoff.consumer
        if thread is not None and thread is not threading.current_thread():
            thread.join(limit if flushed else 0.5)
        if not flushed:
            unsent = self._batch.records + delivery.in_flight()
            self._ledger.abandoned(handoff.waiting(), unsent, delivery.problem, delivery.spool_dir)
        delivery.close()

    # ---- worker ------------------------------------------------------------------------------

    def _spawn(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="secret-audit-worker", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        suppress_instrumentation()  # our own exports are never traced or audited by other instrumentations
        handoff, delivery = self.handoff, self._delivery
        delay = self.settings.schedule_delay_ms / 1000
        if self.settings.spool_dir:
            try:
                self._prepare()  # opens the spool, so a leftover one is replayed right away
            except Exception:
                _log.exception("secret-audit: cannot prepare the audit exporter")
        while True:
            woken = handoff.wake.wait(delay)
            handoff.wake.clear()
            stopping = self._stop.is_set()
            # A wake-up from the timer (not from a full queue) also ships a partial batch.
            self._drain(force=stopping or not woken)
            if delivery.replay_due():
                delivery.replay()
                self._settled(delivery.verdicts())
            if handoff.degraded and not handoff.queue and not stopping:
                if delivery.probe():
                    handoff.degraded = False
                self._settled(delivery.verdicts())
            if stopping and not handoff.queue:
                if self._attest(final=True):
                    self._export_batch()
                    self._settled(delivery.settle())
                return

    def _drain(self, *, force: bool) -> None:
        """Build everything queued; export full batches, and the rest when forced or flushed."""
        handoff = self.handoff
        dq = handoff.queue
        batch_size = self.settings.batch_size
        markers: list[Marker] = []
        built = 0
        while dq:
            item = dq.popleft()
            if isinstance(item, Marker):
                markers.append(item)
                continue
            try:
                built += self._take(item)
                if item.ticket is not None:
                    self._batch.tickets.append(item.ticket)
            except Exception:
                self._ledger.internal_errors += 1
                _log.exception("secret-audit: failed to build an audit record")
                if item.ticket is not None:
                    item.ticket.complete(False)
            if self._batch.records >= batch_size:
                handoff.made_room()
                self._attest()
                self._export_batch()
            elif built >= _SLICE:
                built = 0
                handoff.made_room()
                self._attest()
                if len(dq) < handoff.capacity // 4:
                    # Hand the GIL back between slices so that application threads are not
                    # stalled for a whole switch interval (5 ms) behind a long batch.
                    os.sched_yield()
        handoff.made_room()
        self._report_losses()
        self._attest()
        if force or markers or self._batch.tickets:
            self._export_batch()
        self._settled(self._delivery.settle())
        for marker in markers:
            marker.done.set()

    def _prepare(self) -> None:
        """The back end (and spool) at the first record: building it may import the SDK's logs."""
        if self._backend is not None:
            return
        resource = audit_resource(self._tracer_provider, self._fallback_resource)
        backend = build_sink(self.settings, resource, SCOPE, __version__, self._custom_exporter)
        settings = self.settings
        if not self._delivery.open(backend, settings.spool_dir, settings.spool_max_bytes,
                                   settings.spool_default):
            self.handoff.degraded = True
        self._backend, self._encodes = backend, backend.encodes

    def _take(self, access: Access) -> int:
        """Turn one access into its records (stamped, handed to the back end) and end its span."""
        if self._backend is None:
            self._prepare()
        builder = self._builder
        if builder is None:
            from secret_audit._internal.builder import RecordBuilder

            builder = self._builder = RecordBuilder(self.settings, self._tracer_provider)
        built = builder.build(access)
        if built is None:
            return 0
        records, shapes, bodies, ids, span = built
        n = self._stamp(records, shapes, bodies, ids, access.start_ns)
        if span is not None:
            builder.end_span(span, records, access.end_ns)
        return n

    def _stamp(self, records: list[dict[str, Any]], shapes: list[Shape], bodies: list[str], ids: Ids,
               start_ns: int) -> int:
        """Stamp one access's records into the stream and hand them to the back end; how many."""
        trace_id, span_id, flags, trace_hex, span_hex = ids
        stream, add, encodes = self.stream, self._backend.add, self._encodes
        echo, batch = self._echo, self._batch
        kinds = batch.kinds
        seq = 0
        for attrs, shape, body in zip(records, shapes, bodies):  # noqa: B905 - built together
            severity = shape.severity
            record = _new_record(RecordData, (start_ns, time_ns(), severity, shape.severity_text, body, attrs,
                                              trace_id, span_id, flags, _ACCESS))
            if encodes:  # the back end takes the shape's pre-encoded attributes and the stamped tail
                seq, tail = stream.stamp_access(attrs, start_ns, severity, body, trace_hex, span_hex)
                add(record, shape.encoded, shape.skip, tail)
            else:
                seq = stream.stamp(attrs, start_ns, _ACCESS, severity, body, trace_hex, span_hex)
                add(record)
            kind = shape.kind
            kinds[kind] = kinds.get(kind, 0) + 1
            if echo:
                echo_line(body)
        n = len(records)
        if not batch.records:
            batch.first = seq - n + 1
        batch.records += n
        return n

    def report_lost(self, reason: str, count: int, why: str) -> None:
        """Report accesses lost outside this pipeline (an agent that died) as a record of this stream."""
        self._ledger.elsewhere(reason, count, why)
        self.handoff.start()
        self.handoff.wake.set()

    def _emit(self, event_name: str, attrs: dict[str, Any], time_unix_nano: int, body: str) -> int:
        """Stamp a record of our own (a loss report, a checkpoint) and hand it to the back end."""
        outcome = attrs.get("audit.outcome")
        severity, severity_text = SEVERITY.get(outcome or "error", SEVERITY["error"])
        seq = self.stream.stamp(attrs, time_unix_nano, event_name, severity, body)
        self._backend.add(_new_record(RecordData, (time_unix_nano, time_ns(), severity, severity_text, body,
                                                   attrs, 0, 0, 0, event_name)))
        kind = (event_name, None, outcome)
        self._batch.kinds[kind] = self._batch.kinds.get(kind, 0) + 1
        batch = self._batch
        if not batch.records:
            batch.first = seq
        batch.records += 1
        if self._echo and event_name != contract.EVENT_CHECKPOINT:
            echo_line(body)
        return seq

    def _attest(self, final: bool = False) -> bool:
        """Stamp the stream's signed checkpoint when one is due, or its final one; True if one was made."""
        checkpoints, stream = self._checkpoints, self.stream
        if checkpoints is None or not checkpoints.due(stream.sequence, final):
            return False
        attrs, now, body = checkpoints.build(stream.id, stream.sequence, stream.head, final)
        self._emit(contract.EVENT_CHECKPOINT, attrs, now, body)
        checkpoints.stamped(stream.sequence, stream.head, final)
        return True

    def _report_losses(self) -> None:
        """Turn counted losses into their own chained records, so a sink sees what it never got."""
        dropped, refusals = self.handoff.take_losses()
        due = self._ledger.due(dropped, refusals, self.settings.principal)
        if not due:
            return
        self._prepare()
        now = time_ns()
        for event_name, attrs, body, what in due:
            self._batch.reports[self._emit(event_name, attrs, now, body)] = what

    def _export_batch(self) -> None:
        delivery = self._delivery
        batch, self._batch = self._batch, _Batch()
        if not batch.records:
            # A ticket is only complete once everything before it is: first the requests in flight.
            self._settled(delivery.settle())
            for ticket in batch.tickets:
                ticket.complete(True)
            return
        self._ledger.tally(batch.kinds, CREATED)
        sealed = Sealed(self._backend.seal(), self.stream.id, batch.first, batch.first + batch.records - 1,
                        batch.records, batch.kinds, batch.tickets, batch.reports)
        self._settled(delivery.deliver(sealed))

    def _settled(self, verdicts: list[Verdict]) -> None:
        """Act on delivery's verdicts: the degraded mark, the waiting tickets, the ledger."""
        stream_id = self.stream.id
        for verdict in verdicts:
            if not verdict.from_spool:
                durable = verdict.durable
                self.handoff.degraded = not durable
                self._delivery.unavailable = not durable and verdict.kind != REFUSED
                if not durable:
                    self._delivery.probe_soon()
                for ticket in verdict.batch.tickets:
                    ticket.complete(durable)
            self._ledger.note(verdict, stream_id, self._delivery.spool_dir)

