"""The pipeline's OpenTelemetry metrics, read from counters the worker keeps, so callers pay nothing.

Every instrument but one is asynchronous: its callback runs on the app's metric reader thread at
collection time and reads the pipeline's ``counts()``, once per collection (the first instrument's
callback reads them, the others reuse what it read). The export duration histogram is recorded by
the worker and sender threads, once per export request; with the audit agent, which sends, by the
collection: it records the durations the agent measured since the last one (``export_timings``).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation

from secret_audit.instruments import BUCKETS, create, of_scope
from secret_audit.version import __version__

__all__ = ["EXPORT_BUCKETS", "INSTRUMENTS", "observe", "record_export"]

SCOPE = "secret_audit"
# name -> (kind, unit, description): docs/semantic-conventions.md's metrics table lists the same.
INSTRUMENTS = of_scope(SCOPE)
EXPORT_BUCKETS = BUCKETS["secret_audit.export.duration"]

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


_FRESH = 1.0  # seconds a collection's counts serve its other callbacks
_latest: tuple[float, dict[str, Any] | None] = (0.0, None)


def _current() -> dict[str, Any] | None:
    """The pipeline's counts; with the agent, also records the export durations it measured meanwhile."""
    from secret_audit._internal.current import peek_pipeline

    pipeline = peek_pipeline()
    if pipeline is None:
        return None
    counts: dict[str, Any] = pipeline.counts()  # first: with the agent, its answer brings the durations
    measured = getattr(pipeline, "export_durations", None)
    if measured is not None:
        for seconds, result in measured():
            record_export(seconds, result)  # before the SDK collects the histogram: async callbacks run first
    return counts


def _counts(first: bool) -> dict[str, Any] | None:
    """The counts of this collection: read by its first callback, reused by the rest (one ``Q`` to
    the agent per collection, not one per instrument)."""
    global _latest
    at, counts = _latest
    now = time.monotonic()
    if first or now - at > _FRESH:
        counts = _current()
        _latest = (now, counts)
    return counts


def _kinds(column: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    first = column == "created"  # the first instrument made (INSTRUMENTS' order), so the first called

    def callback(options: CallbackOptions) -> Iterable[Observation]:
        counts = _counts(first)
        if counts is None:
            return []
        return [Observation(row[column], row["attributes"]) for row in counts["records"]]

    return callback


def _total(key: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        counts = _counts(False)
        return [] if counts is None else [Observation(int(counts[key]))]

    return callback


def _lost(options: CallbackOptions) -> Iterable[Observation]:
    counts = _counts(False)
    if counts is None:
        return []
    return [Observation(int(counts[key]), {"audit.dropped.reason": reason}) for reason, key in _LOST]


def _queued(options: CallbackOptions) -> Iterable[Observation]:
    counts = _counts(False)
    if counts is None:
        return []
    if "handed_off" in counts:  # the agent's ring: what the app holds until settled, which its bound counts
        return [Observation(int(counts["handed_off"]) - int(counts["settled"]))]
    return [Observation(int(counts["queued"]))]


def _refused(options: CallbackOptions) -> Iterable[Observation]:
    counts = _counts(False)
    if counts is None:
        return []
    return [Observation(n, {"audit.refused.reason": reason}) for reason, n in counts["refused"].items()]


_CALLBACKS: dict[str, Callable[[CallbackOptions], Iterable[Observation]]] = {
    **{name: _kinds(column) for name, column in _KIND_COLUMNS.items()},
    "secret_audit.record.replayed": _total("replayed"),
    "secret_audit.record.lost": _lost,
    "secret_audit.queue.size": _queued,
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
        histogram = create(meter, INSTRUMENTS, _CALLBACKS)["secret_audit.export.duration"]
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
