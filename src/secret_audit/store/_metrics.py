"""The store's OpenTelemetry metrics on a MeterProvider of its own: pushed over OTLP, scraped as
Prometheus text from ``/metrics``, or both (``OTEL_PYTHON_SECRET_AUDIT_STORE_METRICS``).

Counts are read at collection from what the store keeps anyway (its /stats counters, the live hub,
the alert sender); open findings and gaps from the database, once per collection. Only the ingest
duration is recorded on the request's thread, once per request.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, Observation

from secret_audit.instruments import STORE_SCOPE, Callback, create, of_scope
from secret_audit.version import __version__

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader

    from secret_audit.store.service import Store

__all__ = ["INSTRUMENTS", "StoreMetrics"]

_log = logging.getLogger("secret_audit.store")

SCOPE = STORE_SCOPE
# name -> (kind, unit, description): docs/semantic-conventions.md's store metrics table lists the same.
INSTRUMENTS = of_scope(SCOPE)
_RESULTS = (("accepted", "accepted"), ("duplicate", "duplicates"), ("rejected", "rejected"),
            ("dropped", "dropped_non_audit"))


class StoreMetrics:
    """Owns the store's MeterProvider and its readers; does nothing when no exporter is chosen."""

    def __init__(self, store: Store, exporters: tuple[str, ...]) -> None:
        self._store = store
        self.registry: Any = None  # prometheus_client's CollectorRegistry, when scraped
        self.provider: MeterProvider | None = None
        self._duration: Any = None
        self._db_lock = threading.Lock()
        self._db: tuple[float, dict[str, int], int, int] = (0.0, {}, 0, 0)
        if not exporters:
            return
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource

        readers: list[MetricReader] = []
        if "otlp" in exporters:
            readers.append(_otlp_reader())
        if "prometheus" in exporters:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import CollectorRegistry

            self.registry = CollectorRegistry(auto_describe=True)
            readers.append(PrometheusMetricReader(registry=self.registry))
        resource = Resource.create({"service.name": "secret-audit-store",
                                    "service.instance.id": str(uuid.uuid4()), "process.pid": os.getpid()})
        self.provider = MeterProvider(metric_readers=readers, resource=resource)
        meter = self.provider.get_meter(SCOPE, __version__)
        self._duration = create(meter, INSTRUMENTS, self._callbacks())["secret_audit.store.ingest.duration"]

    def ingested(self, route: str, seconds: float) -> None:
        """Record one ingest request's duration (its decoding and its transaction)."""
        if self._duration is not None:
            self._duration.record(seconds, {"http.route": route})

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every instrument, collected now."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def shutdown(self) -> None:
        """Export a last time (OTLP) and stop the readers."""
        if self.provider is not None:
            self.provider.shutdown()
            self.provider = None

    # ---- what the callbacks read ----------------------------------------------------------------

    def _callbacks(self) -> dict[str, Callback]:
        store = self._store

        def received(options: CallbackOptions) -> Iterable[Observation]:
            snap = store.counters.snapshot()
            return [Observation(snap[key], {"audit.ingest.result": name}) for name, key in _RESULTS]

        def queries(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(n, {"audit.role": role, "audit.outcome": outcome})
                    for (role, outcome), n in store.counters.queries_served().items()]

        def alerts(lost: bool) -> Callback:
            def callback(options: CallbackOptions) -> Iterable[Observation]:
                stats = store.alerts.stats()
                if not lost:
                    return [Observation(n, {"alert.kind": k}) for k, n in stats.get("sent", {}).items()]
                return [Observation(n, {"alert.kind": k, "error.type": why})
                        for why, key in (("queue_full", "dropped"), ("delivery_failed", "failed"))
                        for k, n in stats.get(key, {}).items()]

            return callback

        def findings(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(n, {"audit.finding.kind": k}) for k, n in self._database()[1].items()]

        return {
            "secret_audit.store.record.received": received,
            "secret_audit.store.finding.open": findings,
            "secret_audit.store.gap.open": lambda options: [Observation(self._database()[2])],
            "secret_audit.store.record.missing": lambda options: [Observation(self._database()[3])],
            "secret_audit.store.query.served": queries,
            "secret_audit.store.subscriber.count": lambda options: [Observation(store.hub.active)],
            "secret_audit.store.alert.sent": alerts(lost=False),
            "secret_audit.store.alert.lost": alerts(lost=True),
        }

    def _database(self) -> tuple[float, dict[str, int], int, int]:
        """Open findings by kind, open gaps and missing sequences: read once per collection (1 s)."""
        from secret_audit.store._gaps import open_gaps

        with self._db_lock:
            if time.monotonic() - self._db[0] < 1.0:
                return self._db
            try:
                with self._store.connection() as conn:
                    kinds = conn.execute(
                        "SELECT kind, count(*) FROM audit_findings WHERE kind NOT IN ('gap', 'gap_filled') "
                        "GROUP BY kind").fetchall()
                    gaps = open_gaps(conn)
            except Exception as exc:  # the database is away: these gauges skip this collection
                _log.warning("secret-audit store: metrics could not read findings (%s)", type(exc).__name__)
                return (0.0, {}, 0, 0)
            open_kinds = {str(k): int(n) for k, n in kinds}
            if gaps:
                open_kinds["gap"] = len(gaps)
            self._db = (time.monotonic(), open_kinds, len(gaps), sum(g.missing for g in gaps))
            return self._db


def _otlp_reader() -> MetricReader:
    """A periodic reader with the OTLP exporter the standard variables choose (protocol, endpoint)."""
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as Grpc

        return PeriodicExportingMetricReader(Grpc())
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http

    return PeriodicExportingMetricReader(Http())
