"""The agent's CPU per audit span: the SDK's span path against our encoder, interleaved in one process.

Each round makes ``BENCH_SPANS`` (20,000) spans of one-record GET accesses, each a child of a remote
sampled parent, as the agent makes them from a slot (with the ids the app chose):
- "SDK path": a tracer provider with the chosen-ids generator (``agent_spans``), the span started,
  given the record's attributes, ended, queued in a ``BatchSpanProcessor`` and encoded by the SDK's
  OTLP encoder on its thread (the exporter keeps the bytes' length and sends nothing);
- "ours": the span from the shape's attributes (``encode_lone_span``: what the agent writes for an
  access with one record), queued in ``SpanShipper`` and wrapped in an ``ExportTraceServiceRequest``
  per batch on its thread (its sender sends nothing); "ours, general": ``encode_span`` of the records
  (an access with several records).
CPU is the process's (``time.process_time``: every thread), from the first span until the last is
encoded. Variants alternate, five rounds each; means and the ratio are printed.
Run: .venv/bin/python benchmarks/bench_agent_spans.py
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from _common import env_flag
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from secret_audit._internal import agent_spans
from secret_audit._internal.agent_span_otlp import SpanShipper, encode_lone_span, encode_span
from secret_audit._internal.builder import RecordBuilder
from secret_audit._internal.config import load_settings
from secret_audit._internal.otlp import encode_attributes

N = int(env_flag("BENCH_SPANS", "20000"))
RESOURCE = {"service.name": "bench", "service.instance.id": "i-1", "telemetry.sdk.language": "python"}
ATTRS = {"secret.name": "secret:mem", "secret.source": "redis", "secret.resource": "redis://127.0.0.1:6379/0",
         "audit.operation": "read", "audit.action": "GET", "audit.outcome": "success", "audit.result": "found",
         "audit.access_path": "direct"}


class _Encoded(SpanExporter):
    def __init__(self) -> None:
        self.bytes = 0
        self.spans = 0

    def export(self, spans: Any) -> SpanExportResult:
        self.bytes += len(encode_spans(spans).SerializeToString())
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class _Kept:
    endpoint, problem = "kept", None

    def __init__(self) -> None:
        self.bytes = 0

    def send(self, body: bytes) -> str:
        self.bytes += len(body)
        return "ok"

    def close(self) -> None:
        pass


def sdk_path() -> float:
    ids = agent_spans._chosen()
    exporter = _Encoded()
    provider = TracerProvider(resource=Resource(RESOURCE), id_generator=ids)
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=2048, max_export_batch_size=512,
                                                   schedule_delay_millis=50))
    maker = type("Maker", (), {"ids": ids, "context": agent_spans.SpanMaker.context})()
    builder = RecordBuilder(load_settings({}), provider)
    begin = time.process_time()
    for i in range(1, N + 1):
        start = 1_700_000_000_000_000_000 + i * 1000
        records = [{**ATTRS, "audit.duration_ms": 0.05}]
        builder.span_ids(maker.context(0xABC, i, 1, 0x1234), records, start, start + 50_000)
        if i % 1000 == 0:  # a full queue would drop spans: both variants wait for theirs alike
            provider.force_flush(60_000)
    provider.force_flush(60_000)
    spent = time.process_time() - begin
    provider.shutdown()
    if exporter.spans != N:
        raise RuntimeError(f"SDK path: {exporter.spans} of {N} spans exported")
    return spent / N * 1e6


def ours(general: bool = False) -> float:
    sender = _Kept()
    shipper = SpanShipper(sender, {"OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_BSP_MAX_QUEUE_SIZE": "2048"})
    key = encode_attributes(ATTRS)
    begin = time.process_time()
    for i in range(1, N + 1):
        start = 1_700_000_000_000_000_000 + i * 1000
        if general:
            records = [{**ATTRS, "audit.duration_ms": (50_000) / 1e6}]
            span = encode_span(0xABC, i, 0x1234, start, start + 50_000, records)
        else:
            span = encode_lone_span(0xABC, i, 0x1234, start, start + 50_000, ATTRS, key)
        shipper.add("r", RESOURCE, span)
        if i % 1000 == 0:
            shipper.flush(60)
    shipper.flush(60)
    spent = time.process_time() - begin
    if shipper.dropped:
        raise RuntimeError(f"ours: {shipper.dropped} spans dropped")
    return spent / N * 1e6


def main() -> int:
    rounds: dict[str, list[float]] = {"SDK path": [], "ours": [], "ours, general": []}
    for _ in range(5):
        rounds["SDK path"].append(sdk_path())
        rounds["ours"].append(ours())
        rounds["ours, general"].append(ours(general=True))
    for name, values in rounds.items():
        print(f"  {name:<13} {statistics.fmean(values):6.1f} µs CPU a span "
              f"({', '.join(f'{v:.1f}' for v in values)})")
    print(f"ours / SDK path: {statistics.fmean(rounds['ours']) / statistics.fmean(rounds['SDK path']):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
