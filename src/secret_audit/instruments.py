"""Every metric secret-audit makes, the producer's and the store's, in one table, and one way to make them.

docs/semantic-conventions.md lists the same names and units (tests hold the two together). The
producer (``_internal.meters``, scope ``secret_audit``) and the store (``store._metrics``, scope
``secret_audit.store``) each make their part with ``create``: asynchronous instruments with the
callback each side gives, the histogram with its advisory buckets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # for types only: the audit agent reads BUCKETS and never imports the metrics API
    from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation

__all__ = ["BUCKETS", "INSTRUMENTS", "STORE_SCOPE", "Callback", "Instrument", "create", "of_scope"]

STORE_SCOPE = "secret_audit.store"
Callback = Callable[["CallbackOptions"], Iterable["Observation"]]


class Instrument(NamedTuple):
    """What a metric is: its instrument kind (counter, updowncounter, gauge, histogram), unit and meaning."""

    kind: str
    unit: str
    description: str


_I = Instrument
# name -> instrument; the producer's first, then the store's (whose names start with its scope).
INSTRUMENTS: dict[str, Instrument] = {
    "secret_audit.record.created": _I("counter", "{record}", "Audit records made (chained and sequenced)."),
    "secret_audit.record.exported": _I("counter", "{record}", "Audit records the endpoint acknowledged."),
    "secret_audit.record.spooled": _I("counter", "{record}", "Audit records written to the disk spool."),
    "secret_audit.record.replayed": _I("counter", "{record}", "Spooled audit records delivered later."),
    "secret_audit.record.lost": _I("counter", "{record}", "Audit records lost, by cause."),
    "secret_audit.queue.size": _I("updowncounter", "{access}", "Accesses waiting in the pipeline's queue."),
    "secret_audit.queue.capacity": _I("updowncounter", "{access}", "Size of the pipeline's queue."),
    "secret_audit.call.refused": _I("counter", "{call}", "Secret calls refused in fail-closed mode."),
    "secret_audit.checkpoint.signed": _I("counter", "{checkpoint}", "Signed audit.checkpoint records made."),
    "secret_audit.pipeline.degraded": _I("gauge", "1", "1 while records cannot be made durable, else 0."),
    "secret_audit.export.duration": _I("histogram", "s", "Duration of one export request."),
    "secret_audit.store.record.received": _I("counter", "{record}", "Records received, by what ingest did."),
    "secret_audit.store.ingest.duration": _I("histogram", "s", "Decoding and storing one ingest request."),
    "secret_audit.store.finding.open": _I("updowncounter", "{finding}", "Integrity findings still open."),
    "secret_audit.store.gap.open": _I("updowncounter", "{gap}", "Sequence gaps not yet filled."),
    "secret_audit.store.record.missing": _I("updowncounter", "{record}", "Sequences missing in open gaps."),
    "secret_audit.store.query.served": _I("counter", "{query}", "Audited reads of the trail, by role."),
    "secret_audit.store.subscriber.count": _I("updowncounter", "{subscriber}", "Open live streams."),
    "secret_audit.store.alert.sent": _I("counter", "{alert}", "Alerts a webhook acknowledged."),
    "secret_audit.store.alert.lost": _I("counter", "{alert}", "Alerts dropped or never acknowledged."),
}

# Seconds, each histogram's advisory bucket boundaries. An export over loopback takes about a
# millisecond, a retried one up to the exporter's timeout; an ingest request a few milliseconds.
BUCKETS: dict[str, tuple[float, ...]] = {
    "secret_audit.export.duration": (
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    "secret_audit.store.ingest.duration": (
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
}


def of_scope(scope: str) -> dict[str, Instrument]:
    """The instruments one scope makes: the store's names start with its scope, the producer's do not."""
    store = scope == STORE_SCOPE
    return {name: i for name, i in INSTRUMENTS.items() if name.startswith(STORE_SCOPE + ".") == store}


def create(meter: Meter, instruments: Mapping[str, Instrument], callbacks: Mapping[str, Callback]
           ) -> dict[str, Histogram]:
    """Make each instrument on ``meter``: an asynchronous one with its callback, a histogram with buckets."""
    makers: dict[str, Any] = {
        "counter": meter.create_observable_counter,
        "updowncounter": meter.create_observable_up_down_counter,
        "gauge": meter.create_observable_gauge,
    }
    histograms: dict[str, Histogram] = {}
    for name, (kind, unit, description) in instruments.items():
        if kind == "histogram":
            histograms[name] = meter.create_histogram(name, unit=unit, description=description,
                                                      explicit_bucket_boundaries_advisory=list(BUCKETS[name]))
        else:
            makers[kind](name, callbacks=[callbacks[name]], unit=unit, description=description)
    return histograms
