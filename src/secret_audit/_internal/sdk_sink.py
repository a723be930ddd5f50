"""The SDK back end: records through a dedicated LoggerProvider to any LogRecordExporter (imported lazily)."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import (
    LoggerProvider,
    LogRecordProcessor,
    ReadableLogRecord,
    ReadWriteLogRecord,
)
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from secret_audit._internal.otlp import RecordData
from secret_audit._internal.senders import SendResult
from secret_audit._internal.sinks import Sink

__all__ = ["SdkSink"]


class _Collector(LogRecordProcessor):
    """Keeps emitted records for the sink's batch instead of exporting them on its own schedule."""

    def __init__(self) -> None:
        self.batch: list[ReadWriteLogRecord] = []

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        self.batch.append(log_record)

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _readable(record: ReadWriteLogRecord) -> ReadableLogRecord:
    """What the SDK's own processors hand exporters: the console exporter needs its ``to_json``."""
    return ReadableLogRecord(
        log_record=record.log_record,
        resource=record.resource or Resource.get_empty(),
        instrumentation_scope=record.instrumentation_scope,
        limits=record.limits,
    )


class SdkSink(Sink):
    """Emits through a dedicated SDK LoggerProvider, for custom exporters and the stock encoder."""

    empty: list[ReadableLogRecord] = []  # noqa: RUF012 - never mutated: what the probe exports

    def __init__(self, resource: Resource, scope: str, version: str, exporter: LogRecordExporter) -> None:
        self._collector = _Collector()
        self._provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
        self._provider.add_log_record_processor(self._collector)
        self._logger = self._provider.get_logger(scope, version)
        self._exporter = exporter

    def add(self, record: RecordData, prefix: bytes = b"", skip: int = 0, tail: bytes | None = None) -> None:
        span_context = SpanContext(
            record.trace_id, record.span_id, is_remote=False, trace_flags=TraceFlags(record.flags)
        )
        ctx = trace.set_span_in_context(NonRecordingSpan(span_context))
        self._logger.emit(
            timestamp=record.time_unix_nano,
            observed_timestamp=record.observed_time_unix_nano,
            context=ctx,
            severity_number=SeverityNumber(record.severity_number),
            severity_text=record.severity_text,
            body=record.body,
            attributes=dict(record.attributes),
            event_name=record.event_name,
        )

    def pending(self) -> int:
        return len(self._collector.batch)

    def seal(self) -> list[ReadableLogRecord]:
        sealed = [_readable(r) for r in self._collector.batch]
        self._collector.batch = []
        return sealed

    def send(self, payload: list[ReadableLogRecord]) -> str:
        result = self._exporter.export(payload)
        return SendResult.OK if result is LogRecordExportResult.SUCCESS else SendResult.RETRY

    def close(self) -> None:
        self._exporter.shutdown()  # type: ignore[no-untyped-call]
