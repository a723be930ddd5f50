"""The pipeline's OpenTelemetry metrics, read from counters the worker keeps, so callers pay nothing.

Every instrument but one is asynchronous: its callback runs on the app's metric reader thread at
collection time and reads ``AuditPipeline.counts()``. The export duration histogram is recorded by
the worker and sender threads, once per export request.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation

from secret_audit.version import __version__

__all__ = ["EXPORT_BUCKETS", "INSTRUMENTS", "observe", "record_export"]

SCOPE = "secret_audit"
# Seconds: a loopback request takes about a millisecond, a retried one up to the exporter timeout.
EXPORT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# name -> (kind, unit, description): docs/semantic-conventions.md's metrics table lists the same.
INSTRUMENTS: dict[str, tuple[str, str, str]] = {
    "secret_audit.record.created": ("counter", "{record}", "Audit records made (chained and sequenced)."),
    "secret_audit.record.exported": ("counter", "{record}", "Audit records the endpoint acknowledged."),
    "secret_audit.record.spooled": ("counter", "{record}", "Audit records written to the disk spool."),
    "secret_audit.record.replayed": ("counter", "{record}", "Spooled audit records delivered later."),
    "secret_audit.record.lost": ("counter", "{record}", "Audit records lost, by cause."),
    "secret_audit.queue.size": ("updowncounter", "{access}", "Accesses waiting in the pipeline's queue."),
    "secret_audit.queue.capacity": ("updowncounter", "{access}", "Size of the pipeline's queue."),
    "secret_audit.call.refused": ("counter", "{call}", "Secret calls refused in fail-closed mode."),
    "secret_audit.checkpoint.signed": ("counter", "{checkpoint}", "Signed audit.checkpoint records made."),
    "secret_audit.pipeline.degraded": ("gauge", "1", "1 while records cannot be made durable, else 0."),
    "secret_audit.export.duration": ("histogram", "s", "Duration of one export request."),
}

# audit.dropped.reason -> the pipeline's counter
_LOST = (
    ("queue_full", "dropped_queue_full"),
    ("export_failed", "lost_export"),
    ("build_failed", "internal_errors"),
)
_KIND_COLUMNS = {"secret_audit.record.created": "created", "secret_audit.record.exported": "exported",
                 "secret_audit.record.spooled": "spooled"}

_lock = threading.Lock()
# the providers observed so far, weakly where they allow it, with the histogram made on each
_providers: weakref.WeakKeyDictionary[Any, Histogram] = weakref.WeakKeyDictionary()
_pinned: dict[int, tuple[Any, Histogram]] = {}
_histograms: tuple[Histogram, ...] = ()


def _current() -> dict[str, Any] | None:
    from secret_audit._internal.pipeline import peek_pipeline

    pipeline = peek_pipeline()
    return None if pipeline is None else pipeline.counts()


def _kinds(column: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        counts = _current()
        if counts is None:
            return []
        return [Observation(row[column], row["attributes"]) for row in counts["records"]]

    return callback


def _total(key: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        counts = _current()
        return [] if counts is None else [Observation(int(counts[key]))]

    return callback


def _lost(options: CallbackOptions) -> Iterable[Observation]:
    counts = _current()
    if counts is None:
        return []
    return [Observation(int(counts[key]), {"audit.dropped.reason": reason}) for reason, key in _LOST]


def _refused(options: CallbackOptions) -> Iterable[Observation]:
    counts = _current()
    if counts is None:
        return []
    return [Observation(n, {"audit.refused.reason": reason}) for reason, n in counts["refused"].items()]


_CALLBACKS: dict[str, Callable[[CallbackOptions], Iterable[Observation]]] = {
    **{name: _kinds(column) for name, column in _KIND_COLUMNS.items()},
    "secret_audit.record.replayed": _total("replayed"),
    "secret_audit.record.lost": _lost,
    "secret_audit.queue.size": _total("queued"),
    "secret_audit.queue.capacity": _total("queue_capacity"),
    "secret_audit.call.refused": _refused,
    "secret_audit.checkpoint.signed": _total("checkpoints_signed"),
    "secret_audit.pipeline.degraded": _total("degraded"),
}


def observe(provider: MeterProvider | None = None) -> None:
    """Register the instruments once on ``provider`` (default: the global one, as the launcher sets it).

    A ProxyMeterProvider (no SDK yet) forwards to the provider the app sets later.
    """
    global _histograms
    provider = provider if provider is not None else metrics.get_meter_provider()
    with _lock:
        try:
            known = provider in _providers
        except TypeError:  # a provider class without weak references
            known = id(provider) in _pinned
        if known:
            return
        meter = provider.get_meter(SCOPE, __version__)
        makers = {
            "counter": meter.create_observable_counter,
            "updowncounter": meter.create_observable_up_down_counter,
            "gauge": meter.create_observable_gauge,
        }
        for name, (kind, unit, description) in INSTRUMENTS.items():
            if kind != "histogram":
                makers[kind](name, callbacks=[_CALLBACKS[name]], unit=unit, description=description)
        kind, unit, description = INSTRUMENTS["secret_audit.export.duration"]
        histogram = meter.create_histogram(
            "secret_audit.export.duration", unit=unit, description=description,
            explicit_bucket_boundaries_advisory=list(EXPORT_BUCKETS),
        )
        try:
            _providers[provider] = histogram
        except TypeError:
            _pinned[id(provider)] = (provider, histogram)
        _histograms = (*_providers.values(), *(h for _, h in _pinned.values()))


_FAILED = {"retry": {"error.type": "unavailable"}, "refused": {"error.type": "refused"}}


def record_export(seconds: float, result: str) -> None:
    """Record one export request's duration (worker or sender thread); ``result`` is a SendResult."""
    attributes = _FAILED.get(result)
    for histogram in _histograms:
        histogram.record(seconds, attributes)
