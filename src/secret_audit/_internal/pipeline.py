"""The audit pipeline: a bounded queue on the caller's path, one worker that builds, chains, exports."""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import signal
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from secret_audit import contract
from secret_audit._internal.checkpoint import checkpoints_for
from secret_audit._internal.config import PREFIX, Settings
from secret_audit._internal.event import Access, Item
from secret_audit._internal.export import audit_resource, build_sink, preload_sink
from secret_audit._internal.otlp import AuditTail, RecordData, encode_attributes
from secret_audit._internal.senders import SendResult
from secret_audit._internal.sinks import FastSink, Sink
from secret_audit._internal.ticket import Ticket
from secret_audit.context import resolve
from secret_audit.hashing import hash_name
from secret_audit.version import __version__

if TYPE_CHECKING:
    from opentelemetry.sdk._logs.export import LogRecordExporter

    from secret_audit._internal.spool import Spool, SpooledBatch

__all__ = ["AuditPipeline", "get_pipeline", "peek_pipeline", "set_pipeline"]

_log = logging.getLogger("secret_audit")
_echo = logging.getLogger("secret_audit.audit")

SCOPE = "secret_audit"
EVENT_ACCESS = contract.EVENT_ACCESS
EVENT_DROPPED = contract.EVENT_DROPPED

_SEVERITY = {outcome: (SeverityNumber(n), text) for outcome, (n, text) in contract.SEVERITY.items()}

_VERB = {
    "read": ("Secret accessed", "from"),
    "write": ("Secret stored", "to"),
    "delete": ("Secret deleted", "from"),
    "metadata": ("Secret metadata read", "from"),
    "admin": ("Secret administered", "on"),
    "unknown": ("Secret touched by an unclassified command", "in"),
}
_FAILED = {
    "read": "Secret access failed",
    "write": "Secret store failed",
    "delete": "Secret delete failed",
    "metadata": "Secret metadata read failed",
    "admin": "Secret administration failed",
}


_echo_ready = False


def _echo_line(body: str) -> None:
    """Write the ``[AUDIT]`` line; asked-for lines go to stderr if logging was never configured."""
    global _echo_ready
    if not _echo_ready:
        _echo_ready = True
        if not _echo.hasHandlers():
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            _echo.addHandler(handler)
        if _echo.getEffectiveLevel() > logging.INFO:
            _echo.setLevel(logging.INFO)
    _echo.info("[AUDIT] %s", body)


def _fmt_ms(ms: float) -> str:
    return f"{ms:.0f}ms" if ms >= 10 else f"{ms:.2f}ms"


# Control characters in a key name must not let it forge a second line in a grep-able log.
_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F)}
_ESCAPES |= {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
_ESCAPES |= {c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029)}


def summary(attrs: dict[str, Any], took: str | None = None) -> str:
    """Render the seed-000 one-line summary; it only ever names identifiers, never values."""
    op = attrs["audit.operation"]
    name = str(attrs["secret.name"]).translate(_ESCAPES)
    source = attrs["secret.source"]
    outcome = attrs["audit.outcome"]
    if took is None:
        took = _fmt_ms(attrs["audit.duration_ms"])
    if outcome == "not_found":
        return f"Secret not found: {name} in {source} ({took})"
    if outcome in ("error", "denied"):
        reason = attrs.get("audit.error") or attrs.get("error.type") or outcome
        return f"{_FAILED.get(op, 'Secret access failed')}: {name} {_VERB[op][1]} {source}: {reason}"
    verb, prep = _VERB.get(op, ("Secret accessed", "from"))
    result = attrs.get("audit.result")
    extra = f" ({result})" if result in ("created", "updated", "deleted", "unchanged") else ""
    return f"{verb}: {name} {prep} {source}{extra} ({took})"


class _Shape(NamedTuple):
    """What repeats between records of one kind of access: static attributes, body, their bytes."""

    attrs: dict[str, Any]
    body: str  # the whole body, or its part before the duration when ``tail`` is set
    tail: str | None
    severity: int
    severity_text: str
    encoded: bytes  # ``attrs`` as OTLP LogRecord attribute fields


# Bounded so that high-cardinality key names cost at most about 2 MB of cached shapes.
_SHAPES_LIMIT = 1024

# A record's trace fields: trace id, span id, flags, and the two ids in hex for the chain hash.
_Ids = tuple[int, int, int, str, str]
_NO_IDS: _Ids = (0, 0, 0, "", "")


def _ids(span_context: trace.SpanContext) -> _Ids:
    if not span_context.is_valid:
        return _NO_IDS
    trace_id, span_id = span_context.trace_id, span_context.span_id
    return trace_id, span_id, int(span_context.trace_flags), f"{trace_id:032x}", f"{span_id:016x}"


_new_record = tuple.__new__


class _Marker:
    """A flush request travelling through the queue, set once everything before it is exported."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class AuditPipeline:
    """One per process (and per child after fork): sequence and chain are per stream."""

    def __init__(
        self,
        settings: Settings,
        *,
        exporter: LogRecordExporter | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.settings = settings
        self._custom_exporter = exporter
        self._tracer_provider = tracer_provider
        self._hmac_key = settings.hmac_key if settings.hash_names else None
        self._cap = settings.queue_size
        self._wake_at = max(1, settings.batch_size)
        self._closed = False
        # Resource detection runs on a thread pool, which refuses work once the interpreter has
        # begun to exit: a three-line script's records are built then, so detect now.
        self._fallback_resource = None if _has_resource(tracer_provider) else audit_resource(tracer_provider)
        self._checkpoints = checkpoints_for(settings)  # None without a signing key
        self._reset()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(ref))
        atexit.register(_at_exit, ref)
        if settings.handle_sigterm:
            _install_sigterm()
        preload_sink(settings, exporter)
        if settings.spool_dir:
            from secret_audit._internal.spool import Spool

            if os.path.exists(os.path.join(settings.spool_dir, Spool.FILENAME)):
                # Records an earlier process spooled are replayed now, not at this one's first access.
                self._start()

    # ---- state -----------------------------------------------------------------------------

    def _reset(self) -> None:
        """Fresh stream, queue and worker: used at start and in a forked child."""
        self.stream_id = str(uuid.uuid4())
        self._tail = AuditTail(self.stream_id)
        self._dq: deque[Access | _Marker] = deque()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sequence = 0
        self._prev = contract.GENESIS
        self._sink: Sink | None = None
        self._batch_seqs: list[int] = []
        self._shapes: dict[tuple[Any, ...], _Shape] = {}
        self._last_context: Context | None = None
        self._last_who: tuple[Any, trace.SpanContext, _Ids] = (None, trace.INVALID_SPAN_CONTEXT, _NO_IDS)
        self._batch_tickets: list[Ticket] = []
        # The batch whose send is in flight on the courier while the worker builds the next one.
        self._inflight: tuple[bytes, list[int], list[Ticket]] | None = None
        self._courier: _Courier | None = None
        self._spool: Spool | None = None
        self._spool_failed = False
        # Set at exit while the endpoint is failing: what is left goes to the spool, not the wire.
        self._spool_only = False
        self._next_replay = 0.0
        self._replay_delay = 0.2
        self.degraded = False
        self._next_probe = 0.0
        self._probe_delay = 0.2
        self.spooled = 0
        self.replayed = 0
        self._tracer: trace.Tracer | None = None
        self.exported = 0
        self.dropped_queue_full = 0
        self.lost_export = 0
        self.internal_errors = 0
        self._unreported_drops = 0
        self._lost_ranges: list[tuple[int, int]] = []
        # audit.dropped records not yet durable, by sequence: what each reported (a lost range, or
        # a queue-full count). If their batch is lost too, that is reported again, not forgotten.
        self._open_reports: dict[int, tuple[int, int] | int] = {}
        self._waiting = 0
        if self._checkpoints is not None:
            self._checkpoints.reset()

    def stats(self) -> dict[str, Any]:
        """Counters for health checks and tests: what was queued, exported and lost."""
        return {
            "stream_id": self.stream_id,
            "sequence": self._sequence,
            "queued": len(self._dq),
            "exported": self.exported,
            "dropped_queue_full": self.dropped_queue_full,
            "lost_export": self.lost_export,
            "internal_errors": self.internal_errors,
            "spooled": self.spooled,
            "replayed": self.replayed,
            "spool": self._spool.stats() if self._spool is not None else None,
            "degraded": self.degraded,
        }

    # ---- caller's path -----------------------------------------------------------------------

    def wired_as(self, settings: Settings, exporter: Any, provider: Any) -> bool:
        """True when this open pipeline was built from exactly these settings and parts."""
        return (
            not self._closed
            and self.settings == settings
            and self._custom_exporter is exporter
            and self._tracer_provider is provider
        )

    def submit(self, access: Access) -> None:
        """Enqueue one access; waits a bounded time for room rather than dropping silently."""
        if self._closed:
            # Replaced by a newer pipeline (re-wiring): hand over rather than lose the record.
            current = _PIPELINE
            if current is not None and current is not self and not current._closed:
                current.submit(access)
                return
        dq = self._dq
        if len(dq) >= self._cap and not self._wait_for_room():
            with self._lock:
                lost = len(access.items) if access.items is not None else 1
                self.dropped_queue_full += lost
                self._unreported_drops += lost
            return
        dq.append(access)
        if self._thread is None:
            self._start()
        if (access.ticket is not None or len(dq) >= self._wake_at) and not self._wake.is_set():
            # is_set() first: set() takes a lock, and while the worker is behind every call gets here
            self._wake.set()

    def accepting(self) -> bool:
        """False while records cannot be made durable: fail-closed callers refuse before calling."""
        return not (self.degraded or self._closed)

    def submit_durable(self, access: Access, timeout: float) -> bool:
        """Enqueue and wait until the access's records are acknowledged or spooled (fail-closed)."""
        ticket = access.ticket
        if not isinstance(ticket, Ticket):
            ticket = Ticket()
            access = access._replace(ticket=ticket)
        self.submit(access)
        return ticket.wait(timeout)

    def _wait_for_room(self) -> bool:
        self._wake.set()
        if self._closed or self._thread is None:
            return False
        deadline = time.monotonic() + self.settings.queue_full_timeout_ms / 1000
        with self._room:
            self._waiting += 1
            try:
                while len(self._dq) >= self._cap:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._room.wait(left)
            finally:
                self._waiting -= 1
        return True

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            thread = threading.Thread(target=self._run, name="secret-audit-worker", daemon=True)
            self._thread = thread
            thread.start()

    # ---- public control ----------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every access queued before the call is exported (or given up on)."""
        if self._closed:
            return not self._dq
        if self._thread is None:
            if not self._dq:
                return True
            self._start()
        marker = _Marker()
        self._dq.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def shutdown(self, timeout: float | None = None) -> None:
        """Flush what is queued within the shutdown timeout, then stop the worker and sink.

        While the endpoint is failing, what is left is spooled at once instead of waiting out the
        timeout; what can be neither sent nor spooled in time is reported on stderr.
        """
        if self._closed:
            return
        limit = self.settings.shutdown_timeout_ms / 1000 if timeout is None else timeout
        spooling = self.settings.spool_dir is not None and not self._spool_failed
        if self.degraded and spooling:
            self._spool_only = True
        flushed = self.flush(limit)
        if not flushed and spooling and not self._spool_only:
            self._spool_only = True
            flushed = self.flush(_SPOOL_GRACE)
        self._closed = True
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(limit if flushed else 0.5)
        if not flushed:
            self._report_abandoned()
        if self._courier is not None:
            self._courier.close()
        if self._spool is not None:
            self._say_spooled(self._spool)
            self._spool.close()
        sink = self._sink
        if sink is not None:
            try:
                sink.close()
            except Exception:
                _log.debug("audit sink close failed", exc_info=True)

    def _say_spooled(self, spool: Spool) -> None:
        """At exit, tell operators what waits on disk and how it leaves."""
        waiting = spool.stats()
        if not waiting["records"]:
            return
        problem = getattr(self._sink, "problem", None)
        _log.warning(
            "secret-audit: %s wait in the spool %s%s; they are sent when a process with these settings "
            "starts again, or now with: secret-audit spool replay %s",
            _records(waiting["records"]), spool.directory, f" ({problem})" if problem else "",
            spool.directory,
        )

    def _report_abandoned(self) -> None:
        """At exit, say on stderr what was neither exported nor spooled: it cannot reach the stream."""
        waiting = sum(len(a.items) if a.items is not None else 1 for a in list(self._dq)
                      if not isinstance(a, _Marker))
        unsent = len(self._batch_seqs) + (len(self._inflight[1]) if self._inflight else 0)
        if waiting or unsent:
            problem = getattr(self._sink, "problem", None)
            _log.error(
                "secret-audit: lost %s at exit (%d accesses not yet built, %d records not yet sent)%s: "
                "the shutdown timeout (%s) passed; %s",
                _records(waiting + unsent), waiting, unsent, f" ({problem})" if problem else "",
                PREFIX + "SHUTDOWN_TIMEOUT_MS", _FIX_LOSS,
            )

    # ---- worker -------------------------------------------------------------------------------

    def _run(self) -> None:
        from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY

        # Our own exports must never be traced or audited by other instrumentations.
        otel_context.attach(otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        delay = self.settings.schedule_delay_ms / 1000
        if self.settings.spool_dir:
            try:
                self._ensure_sdk()  # opens the spool, so a leftover one is replayed right away
            except Exception:
                _log.exception("secret-audit: cannot prepare the audit exporter")
        while True:
            woken = self._wake.wait(delay)
            self._wake.clear()
            stopping = self._stop.is_set()
            # A wake-up from the timer (not from a full queue) also ships a partial batch.
            self._drain(force=stopping or not woken)
            if self._spool is not None and time.monotonic() >= self._next_replay:
                self._replay()
            if self.degraded and not self._dq and not stopping and time.monotonic() >= self._next_probe:
                self._probe()
            if stopping and not self._dq:
                if self._attest(final=True):
                    self._export_batch()
                    self._settle()
                return

    def _drain(self, *, force: bool) -> None:
        """Build everything queued; export full batches, and the rest when forced or flushed."""
        dq = self._dq
        batch_size = self.settings.batch_size
        markers: list[_Marker] = []
        built = 0
        while dq:
            item = dq.popleft()
            if isinstance(item, _Marker):
                markers.append(item)
                continue
            try:
                built += self._build(item)
                if item.ticket is not None:
                    self._batch_tickets.append(item.ticket)
            except Exception:
                self.internal_errors += 1
                _log.exception("secret-audit: failed to build an audit record")
                if item.ticket is not None:
                    item.ticket.complete(False)
            if len(self._batch_seqs) >= batch_size:
                self._after_slice()
                self._attest()
                self._export_batch()
            elif built >= _SLICE:
                built = 0
                self._after_slice()
                self._attest()
                if len(dq) < self._cap // 4:
                    # Hand the GIL back between slices so that application threads are not
                    # stalled for a whole switch interval (5 ms) behind a long batch.
                    os.sched_yield()
        self._after_slice()
        self._report_drops()
        self._attest()
        if force or markers or self._batch_tickets:
            self._export_batch()
        self._settle()
        for marker in markers:
            marker.done.set()

    def _after_slice(self) -> None:
        if self._waiting:
            with self._room:
                self._room.notify_all()

    def _ensure_sdk(self) -> tuple[trace.Tracer, Sink]:
        if self._tracer is None:
            provider = self._tracer_provider or trace.get_tracer_provider()
            self._tracer = provider.get_tracer(SCOPE, __version__)
        if self._sink is None:
            if self._fallback_resource is not None and not _has_resource(self._tracer_provider):
                resource = self._fallback_resource
            else:
                resource = audit_resource(self._tracer_provider)
            self._sink = build_sink(self.settings, resource, SCOPE, __version__, self._custom_exporter)
            self._open_spool()
        return self._tracer, self._sink

    def _open_spool(self) -> None:
        directory = self.settings.spool_dir
        if directory is None or self._spool is not None or self._spool_failed:
            return
        if not isinstance(self._sink, FastSink):
            if not self.settings.spool_default:  # the default spool does not apply to custom exporters
                _log.warning("secret-audit: the spool needs the fast OTLP exporter; not spooling")
            self._spool_failed = True
            return
        try:
            from secret_audit._internal.spool import Spool

            self._spool = Spool(directory, self.settings.spool_max_bytes)
        except Exception as exc:
            self._spool_failed = True
            self.degraded = True
            _log.error("secret-audit: cannot open the audit spool in %s: %s", directory, exc)

    def _name(self, raw: str | bytes) -> str:
        if self._hmac_key is not None:
            return hash_name(raw, self._hmac_key)
        if isinstance(raw, bytes):
            return raw.decode("utf-8", "backslashreplace")
        return raw

    def _build(self, access: Access) -> int:
        """Turn one access into its span (if wanted) and one record per distinct secret touched."""
        tracer, sink = self._tracer, self._sink
        if tracer is None or sink is None:
            tracer, sink = self._ensure_sdk()
        settings = self.settings
        source = access.source
        ctx = access.context
        items = access.items
        if items is None:
            items = access.expand(access.pending) if access.expand is not None else ()
        if not items:
            return 0
        if ctx is self._last_context:
            who, parent, parent_ids = self._last_who
        else:
            # Accesses made in one request share its context: resolved once for all of them.
            who = resolve(ctx, settings.default_access_path)
            parent = trace.get_current_span(ctx).get_span_context()
            parent_ids = _ids(parent)
            self._last_context, self._last_who = ctx, (who, parent, parent_ids)
        principal = who.principal or settings.principal or source.principal(access.target)
        base_resource = source.resource(access.target)
        duration_ms = (access.end_ns - access.start_ns) / 1e6
        took = None
        shapes = self._shapes
        records: list[dict[str, Any]] = []
        bodies: list[_Shape] = []
        for item, count in _coalesce(items) if len(items) > 1 else ((items[0], 1),):
            error = item.error or access.error
            if error is None:
                key: tuple[Any, ...] = (source.name, item, count, access.outcome, principal,
                                        base_resource, who.enduser, who.client_address, who.access_path)
                try:
                    cached = shapes.get(key)
                except TypeError:  # an unhashable value from a source: built every time
                    cached, key = None, ()
                if cached is None:
                    cached = self._shape(source, item, count, access.outcome, None, principal,
                                         base_resource, who)
                    if key:
                        if len(shapes) >= _SHAPES_LIMIT:
                            shapes.clear()
                        shapes[key] = cached
                shape = cached
            else:
                shape = self._shape(source, item, count, access.outcome, error, principal, base_resource, who)
            attrs = shape.attrs.copy()
            attrs["audit.duration_ms"] = duration_ms
            records.append(attrs)
            bodies.append(shape)
        # One audit span per instrumented call, following the span mode (and then the sampler).
        mode = settings.spans
        if (
            mode == "off"
            or (mode == "in_trace" and not parent.is_valid)
            or (mode == "errors" and _worst(records) not in ("error", "denied"))
        ):
            span, ids = None, parent_ids
        else:
            span = self._start_span(tracer, ctx, records, access.start_ns)
            ids = _ids(span.get_span_context())
        fast = sink if isinstance(sink, FastSink) else None
        for attrs, shape in zip(records, bodies, strict=True):
            if shape.tail is None:
                body = shape.body
            else:
                if took is None:
                    took = _fmt_ms(duration_ms)
                body = f"{shape.body}{took}{shape.tail}"
            self._emit(EVENT_ACCESS, attrs, access.start_ns, body, ids, shape, fast)
        if span is not None:
            if len(records) == 1:
                span.set_attributes(records[0])
            worst = _worst(records)
            if worst in ("error", "denied"):
                span.set_status(Status(StatusCode.ERROR, records[0].get("error.type")))
            span.end(end_time=access.end_ns)
        return len(records)

    def _shape(
        self,
        source: Any,
        item: Item,
        count: int,
        outcome: str,
        error: BaseException | None,
        principal: str | None,
        base_resource: str | None,
        who: Any,
    ) -> _Shape:
        """Everything about a record that repeats from access to access, worked out once."""
        error_type = error_text = None
        if error is not None:
            outcome, error_type, error_text = source.describe_error(error)
        name = self._name(item.name)
        attrs: dict[str, Any] = {"secret.name": name, "secret.source": source.name}
        resource = item.resource or base_resource
        if resource and self._hmac_key is not None and item.resource:
            raw = item.name
            if isinstance(raw, bytes):
                raw = raw.decode("utf-8", "surrogateescape")
            resource = resource.replace(f"/secrets/{raw}", f"/secrets/{name}")
        if resource:
            attrs["secret.resource"] = resource
        if item.version:
            attrs["secret.version"] = item.version
        attrs["audit.operation"] = item.operation
        attrs["audit.action"] = item.action
        if error_type is None and item.result == "not_found":
            attrs["audit.outcome"] = "not_found"
        else:
            attrs["audit.outcome"] = outcome
            if item.result and error_type is None:
                attrs["audit.result"] = item.result
        if count > 1:
            attrs["audit.count"] = count
        if error_type is not None:
            attrs["error.type"] = error_type
            if error_text:
                attrs["audit.error"] = error_text
        if principal:
            attrs["audit.principal"] = principal
        if who.enduser:
            attrs["enduser.id"] = who.enduser
        if who.client_address:
            attrs["client.address"] = who.client_address
        attrs["audit.access_path"] = who.access_path
        marker = "\x00took\x00"
        text = summary({**attrs, "audit.duration_ms": 0.0}, took=marker)
        head, found, tail = text.partition(marker)
        severity, severity_text = _SEVERITY.get(attrs["audit.outcome"], _SEVERITY["error"])
        return _Shape(attrs, head, tail if found else None, severity.value, severity_text,
                      encode_attributes(attrs))

    def _start_span(
        self, tracer: trace.Tracer, ctx: Context, records: list[dict[str, Any]], start_ns: int
    ) -> Span:
        """The audit span of one call: named by its operation, with its records' common facts."""
        first = records[0]
        ops = {r["audit.operation"] for r in records}
        name = f"secret.{first['audit.operation']}" if len(ops) == 1 else "secret.access"
        attrs: dict[str, Any] = {
            "secret.source": first["secret.source"],
            "audit.action": first["audit.action"],
            "audit.outcome": _worst(records),
            "audit.record_count": len(records),
        }
        if "secret.resource" in first:
            attrs["secret.resource"] = first["secret.resource"]
        return tracer.start_span(
            name, context=ctx, kind=SpanKind.INTERNAL, attributes=attrs, start_time=start_ns
        )

    def _emit(
        self,
        event_name: str,
        attrs: dict[str, Any],
        start_ns: int,
        body: str,
        ids: _Ids,
        shape: _Shape | None = None,
        fast: FastSink | None = None,
    ) -> None:
        """Give the record its place in the stream (sequence, chain) and hand it to the sink."""
        self._sequence += 1
        seq = self._sequence
        prev = self._prev
        if shape is not None:
            severity, severity_text = shape.severity, shape.severity_text
        else:
            sev, severity_text = _SEVERITY.get(attrs.get("audit.outcome", "error"), _SEVERITY["error"])
            severity = sev.value
        trace_id, span_id, flags, trace_hex, span_hex = ids
        digest = contract.stamp(attrs, self.stream_id, seq, prev, start_ns, event_name, severity, body,
                                trace_hex, span_hex)
        self._prev = digest
        record = _new_record(
            RecordData,
            (start_ns, time.time_ns(), severity, severity_text, body, attrs, trace_id, span_id, flags,
             event_name),
        )
        if fast is not None and shape is not None:
            tail = self._tail.encode(attrs["audit.duration_ms"], seq, prev, digest)
            fast.add_encoded(record, shape.encoded, len(shape.attrs), tail)
        else:
            assert self._sink is not None
            self._sink.add(record)
        self._batch_seqs.append(seq)
        if self.settings.echo and event_name != contract.EVENT_CHECKPOINT:
            _echo_line(body)

    def _attest(self, final: bool = False) -> bool:
        """Stamp the stream's signed checkpoint when one is due, or its final one; True if one was made."""
        checkpoints = self._checkpoints
        if checkpoints is None or not checkpoints.due(self._sequence, final):
            return False
        attrs, now, body = checkpoints.build(self.stream_id, self._sequence, self._prev, final)
        self._emit(contract.EVENT_CHECKPOINT, attrs, now, body, _NO_IDS)
        checkpoints.stamped(self._sequence, self._prev, final)
        return True

    def _report_drops(self) -> None:
        """Turn counted losses into their own chained record, so a sink sees what it never got."""
        with self._lock:
            dropped = self._unreported_drops
            self._unreported_drops = 0
            ranges = _merge(self._lost_ranges)
            self._lost_ranges = []
        if not dropped and not ranges:
            return
        self._ensure_sdk()
        now = time.time_ns()
        invalid = _NO_IDS
        if dropped:
            attrs: dict[str, Any] = {
                "audit.outcome": "error",
                "audit.dropped.count": dropped,
                "audit.dropped.reason": "queue_full",
            }
            self._emit(EVENT_DROPPED, attrs, now, f"Audit records dropped: {dropped} (queue full)", invalid)
            self._open_reports[self._sequence] = dropped
        for first, last in ranges:
            attrs = {
                "audit.outcome": "error",
                "audit.dropped.count": last - first + 1,
                "audit.dropped.reason": "export_failed",
                "audit.dropped.first_sequence": first,
                "audit.dropped.last_sequence": last,
            }
            text = f"Audit records lost: sequence {first}..{last} (export failed)"
            self._emit(EVENT_DROPPED, attrs, now, text, invalid)
            self._open_reports[self._sequence] = (first, last)

    def _export_batch(self) -> None:
        # First the request in flight: a ticket is only complete once everything before it is, and
        # the courier carries one request at a time.
        self._settle()
        sink = self._sink
        tickets = self._batch_tickets
        self._batch_tickets = []
        if sink is None or not sink.pending():
            for ticket in tickets:
                ticket.complete(True)
            return
        seqs = self._batch_seqs
        self._batch_seqs = []
        if isinstance(sink, FastSink):
            body = sink.encode()
            sink.discard()
            spool = self._spool
            if spool is None or not spool.pending():
                # Sent on the courier thread: the next batch is built while this one is on the wire.
                courier = self._courier or self._new_courier(sink)
                if courier is not None and not self._spool_only:
                    courier.start(body)
                    self._inflight = (body, seqs, tickets)
                    return
            if self._spool_only and spool is not None:
                durable = self._spool_or_retry(sink, body, seqs)
            elif spool is None or not spool.pending():
                durable = self._deliver_body_with_retry(sink, body, seqs)
            else:
                durable = self._spool_or_retry(sink, body, seqs)
        else:
            durable = self._deliver_with_retry(sink)
            sink.discard()
            if durable:
                self.exported += len(seqs)
        self._after_export(durable, seqs, tickets)

    def _new_courier(self, sink: FastSink) -> _Courier | None:
        """The sender thread, or None where no thread may start (at exit, from Python 3.12 on)."""
        try:
            self._courier = _Courier(sink)
        except RuntimeError:
            return None
        return self._courier

    def _settle(self) -> None:
        """Wait for the batch in flight and do its bookkeeping: retry, spool, tickets, loss reports."""
        inflight = self._inflight
        if inflight is None:
            return
        self._inflight = None
        body, seqs, tickets = inflight
        assert self._courier is not None
        assert isinstance(self._sink, FastSink)
        result = self._courier.wait()
        if result == SendResult.OK:
            self.exported += len(seqs)
            durable = True
        elif result == SendResult.REFUSED:
            durable = False
        elif self._spool is not None or self._spool_failed:
            self._next_replay = time.monotonic() + self._replay_delay
            durable = self._spool_or_retry(self._sink, body, seqs)
        else:
            durable = self._deliver_body_with_retry(self._sink, body, seqs, result)
        self._after_export(durable, seqs, tickets)

    def _after_export(self, durable: bool, seqs: list[int], tickets: list[Ticket]) -> None:
        self.degraded = not durable
        if not durable:
            self._next_probe = time.monotonic() + 0.2
            self._probe_delay = 0.2
        for ticket in tickets:
            ticket.complete(durable)
        if seqs and self._open_reports:
            self._settle_reports(seqs[0], seqs[-1], durable)
        if durable or not seqs:
            return
        self._count_lost(seqs[0], seqs[-1], len(seqs))

    def _settle_reports(self, first: int, last: int, durable: bool) -> None:
        """Loss reports in a batch that was itself lost are made again, so they reach the sink."""
        for seq in [s for s in self._open_reports if first <= s <= last]:
            what = self._open_reports.pop(seq)
            if not durable:
                self._report_again(what)

    def _report_again(self, what: Any) -> None:
        """A loss report whose own request was lost: a range of sequences, or a count of drops."""
        with self._lock:
            if isinstance(what, (tuple, list)) and len(what) == 2:
                self._lost_ranges.append((int(what[0]), int(what[1])))
            elif isinstance(what, int):
                self._unreported_drops += what

    def _count_lost(self, first: int, last: int, count: int) -> None:
        with self._lock:
            self.lost_export += count
            self._lost_ranges.append((first, last))
        problem = getattr(self._sink, "problem", None)
        _log.error(
            "secret-audit: lost %s (sequence %d..%d): the exporter kept failing%s; %s",
            _records(count),
            first,
            last,
            f" ({problem})" if problem else "",
            _FIX_LOSS,
        )

    def _spool_or_retry(self, sink: FastSink, body: bytes, seqs: list[int]) -> bool:
        """While the endpoint is down (or older records wait), append to the spool instead."""
        spool = self._spool
        first, last = (seqs[0], seqs[-1]) if seqs else (0, 0)
        reports = {s: what for s, what in self._open_reports.items() if first <= s <= last}
        noted = json.dumps(reports) if reports else None
        if spool is None or not spool.append(self.stream_id, first, last, len(seqs), body, noted):
            # Spool full, unwritable or missing: the records stay in memory only if retried now.
            if self._stop.is_set():
                return False
            return self._deliver_body_with_retry(sink, body, seqs)
        self.spooled += len(seqs)
        if time.monotonic() >= self._next_replay:
            self._replay()
        return True

    def _deliver_body_with_retry(
        self, sink: FastSink, body: bytes, seqs: list[int], first: str | None = None
    ) -> bool:
        """Retry one encoded batch until the retry timeout; ``first`` is an attempt already made."""
        delivered = self._retry(lambda: self._send_after_spool(sink, body), first)
        if delivered:
            self.exported += len(seqs)
        return delivered

    def _retry(self, attempt: Callable[[], str], first: str | None = None) -> bool:
        """Repeat ``attempt`` with backoff until it succeeds, is refused, the retry timeout passes
        or the pipeline stops; ``first`` is the result of an attempt already made."""
        deadline = time.monotonic() + self.settings.export_retry_timeout_ms / 1000
        delay = 0.2
        result = attempt() if first is None else first
        while True:
            if result == SendResult.OK:
                return True
            if result == SendResult.REFUSED or self._stop.is_set() or time.monotonic() + delay > deadline:
                return False
            self._stop.wait(delay)
            delay = min(delay * 2, 5.0)
            result = attempt()

    def _probe(self) -> None:
        """While degraded, fail-closed calls are refused before they run, so no batch would ever
        tell us the endpoint is back: ask it with an empty request, at least once a second."""
        sink = self._sink
        if sink is None or sink.pending():
            return
        # FastSink: an empty ExportLogsServiceRequest
        result = self._send_after_spool(sink, b"") if isinstance(sink, FastSink) else _safe_deliver(sink)
        if result == SendResult.OK:
            self.degraded = False
            return
        self._probe_delay = min(self._probe_delay * 2, 1.0)
        self._next_probe = time.monotonic() + self._probe_delay

    def _send_after_spool(self, sink: FastSink, body: bytes) -> str:
        """Send only once nothing older waits in the spool, so the endpoint sees the stream in order."""
        spool = self._spool
        if spool is not None and spool.pending():
            self._replay()
            if spool.pending():
                return SendResult.RETRY
        return _safe_send(sink, body)

    def _replay(self) -> None:
        """Send spooled requests oldest first, several per request; stop at the first failure."""
        spool, sink = self._spool, self._sink
        if spool is None or not isinstance(sink, FastSink) or self._spool_only:
            return
        try:
            while True:
                batches = spool.oldest(_REPLAY_BYTES)
                if not batches:
                    self._replay_delay = 0.2
                    return
                # Serialised protobuf messages concatenate into one: their resource_logs add up.
                result = _safe_send(sink, b"".join(b.body for b in batches))
                if result == SendResult.REFUSED and len(batches) > 1:
                    result = self._replay_one_by_one(spool, sink, batches)
                    if result == SendResult.OK:
                        continue
                if result == SendResult.RETRY:
                    self._next_replay = time.monotonic() + self._replay_delay
                    self._replay_delay = min(self._replay_delay * 2, 5.0)
                    return
                spool.remove(batches[-1].id)
                for batch in batches:
                    self._replayed(batch, result)
        except Exception:
            _log.exception("secret-audit: replaying the audit spool failed")
            self._next_replay = time.monotonic() + self._replay_delay
        finally:
            spool.release()  # oldest() took the spool's replay claim

    def _replay_one_by_one(self, spool: Spool, sink: FastSink, batches: list[SpooledBatch]) -> str:
        """A refused combined request: find which spooled requests the endpoint refuses."""
        for batch in batches:
            result = _safe_send(sink, batch.body)
            if result == SendResult.RETRY:
                return result
            spool.remove(batch.id)
            self._replayed(batch, result)
        return SendResult.OK

    def _replayed(self, batch: SpooledBatch, result: str) -> None:
        if result == SendResult.OK:
            self.replayed += batch.records
            return
        reports: dict[str, Any] = {}
        if batch.reports:
            try:
                reports = dict(json.loads(batch.reports))
            except (ValueError, TypeError):
                _log.error("secret-audit: unreadable loss reports in spooled batch %d", batch.id)
        if batch.stream == self.stream_id:
            self._count_lost(batch.first_seq, batch.last_seq, batch.records)
            # What the refused request's own loss reports said is reported again, not lost with it.
            for what in reports.values():
                self._report_again(what)
            return
        _log.error(
            "secret-audit: the endpoint refused spooled records %s:%d..%d%s",
            batch.stream,
            batch.first_seq,
            batch.last_seq,
            f", which reported earlier losses {sorted(reports.values(), key=str)}" if reports else "",
        )

    def _deliver_with_retry(self, sink: Sink) -> bool:
        return self._retry(lambda: _safe_deliver(sink))


class _Courier:
    """The sender thread: one request in flight while the worker builds the next batch."""

    def __init__(self, sink: FastSink) -> None:
        self._sink = sink
        self._jobs: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="secret-audit-sender", daemon=True)
        self._thread.start()

    def start(self, body: bytes) -> None:
        self._jobs.put(body)

    def wait(self) -> str:
        return self._results.get()

    def close(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY

        # Our own exports must never be traced or audited by other instrumentations.
        otel_context.attach(otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        while True:
            body = self._jobs.get()
            if body is None:
                return
            self._results.put(_safe_send(self._sink, body))


_FIX_LOSS = (
    "fix the endpoint, and keep the spool on (OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR) so that an "
    "outage is waited out on disk"
)


def _records(count: int) -> str:
    return f"{count} audit record{'' if count == 1 else 's'}"


def _has_resource(provider: TracerProvider | None) -> bool:
    from opentelemetry.sdk.resources import Resource

    return isinstance(getattr(provider or trace.get_tracer_provider(), "resource", None), Resource)


def _safe_deliver(sink: Sink) -> str:
    try:
        return str(sink.deliver())
    except Exception:  # exporter bugs are retried, then counted
        _log.debug("audit export raised", exc_info=True)
        return SendResult.RETRY


def _safe_send(sink: FastSink, body: bytes) -> str:
    try:
        return str(sink.send(body))
    except Exception:
        _log.debug("audit send raised", exc_info=True)
        return SendResult.RETRY


def _coalesce(items: tuple[Item, ...]) -> list[tuple[Item, int]]:
    """Merge identical accesses within one call (e.g. a pipeline reading one key 100 times)."""
    if len(items) == 1:
        return [(items[0], 1)]
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for item in items:
        key: tuple[Any, ...] = (item.name, item.operation, item.action, item.result)
        key += (item.resource, item.version, id(item.error))
        group = groups.get(key)
        if group is None:
            groups[key] = [item, 1]
        else:
            group[1] += 1
    return [(g[0], g[1]) for g in groups.values()]


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and join overlapping or adjacent sequence ranges."""
    out: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


_RANK = {"success": 0, "not_found": 1, "denied": 2, "error": 3}


def _worst(records: list[dict[str, Any]]) -> str:
    return str(max((r["audit.outcome"] for r in records), key=lambda o: _RANK.get(o, 3)))


_SLICE = 64
# At exit, after the shutdown timeout, how long writing what is left to the spool may take.
_SPOOL_GRACE = 5.0
# Spooled requests replayed together in one request, up to this size (the store takes 16 MiB).
_REPLAY_BYTES = 4 * 1024 * 1024

_PIPELINE: AuditPipeline | None = None
_PIPELINE_LOCK = threading.Lock()


def get_pipeline(
    settings: Settings,
    *,
    exporter: LogRecordExporter | None = None,
    tracer_provider: TracerProvider | None = None,
) -> AuditPipeline:
    """Return the process pipeline, creating it on first use; sources share one stream."""
    global _PIPELINE
    with _PIPELINE_LOCK:
        if _PIPELINE is None or _PIPELINE._closed:
            _PIPELINE = AuditPipeline(settings, exporter=exporter, tracer_provider=tracer_provider)
        return _PIPELINE


def peek_pipeline() -> AuditPipeline | None:
    """Return the current pipeline without creating one."""
    return _PIPELINE


def set_pipeline(pipeline: AuditPipeline | None) -> AuditPipeline | None:
    """Replace the process pipeline (tests and embedding apps), returning the old one."""
    global _PIPELINE
    with _PIPELINE_LOCK:
        old, _PIPELINE = _PIPELINE, pipeline
    return old


def _install_sigterm() -> None:
    """Flush (or spool) queued records on SIGTERM, then die by SIGTERM as the app would have.

    Only when the application left SIGTERM at its default: its own handler usually ends in
    ``sys.exit``, which runs our atexit flush anyway.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main interpreter, or no signals here
        return


def _on_sigterm(signum: int, frame: object) -> None:
    pipeline = _PIPELINE
    if pipeline is not None:
        pipeline.shutdown()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _after_fork(ref: weakref.ref[AuditPipeline]) -> None:
    pipeline = ref()
    if pipeline is not None and not pipeline._closed:
        pipeline._reset()


def _at_exit(ref: weakref.ref[AuditPipeline]) -> None:
    pipeline = ref()
    if pipeline is not None:
        pipeline.shutdown()
