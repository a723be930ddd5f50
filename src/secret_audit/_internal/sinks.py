"""Where built records go: straight to OTLP bytes (fast), or through the SDK to any LogRecordExporter."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor, ReadWriteLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from secret_audit._internal.otlp import RecordData, encode_log_record, encode_request
from secret_audit._internal.senders import Sender, SendResult

__all__ = ["FastSink", "SdkSink", "Sink"]


class Sink:
    """Accumulates one batch of records and delivers it; ``deliver`` returns a SendResult value."""

    def add(self, record: RecordData) -> None:
        raise NotImplementedError

    def pending(self) -> int:
        raise NotImplementedError

    def deliver(self) -> str:
        raise NotImplementedError

    def discard(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class FastSink(Sink):
    """Encodes each record once to protobuf and sends batches with our own sender."""

    def __init__(self, resource: Resource, scope: str, version: str, sender: Sender) -> None:
        self._resource = dict(resource.attributes)
        self._schema_url = resource.schema_url or ""
        self._scope = scope
        self._version = version
        self._sender = sender
        self._batch: list[bytes] = []

    def add(self, record: RecordData) -> None:
        self._batch.append(encode_log_record(record))

    def pending(self) -> int:
        return len(self._batch)

    def encode(self) -> bytes:
        """The pending batch as one ExportLogsServiceRequest."""
        return encode_request(
            self._resource,
            self._scope,
            self._version,
            self._batch,
            resource_schema_url=self._schema_url,
        )

    def send(self, body: bytes) -> str:
        """Send an encoded request (a fresh batch or a spooled one)."""
        return self._sender.send(body)

    def deliver(self) -> str:
        return self.send(self.encode())

    def discard(self) -> None:
        self._batch = []

    def close(self) -> None:
        self._sender.close()


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


class SdkSink(Sink):
    """Emits through a dedicated SDK LoggerProvider, for custom exporters and the stock encoder."""

    def __init__(self, resource: Resource, scope: str, version: str, exporter: LogRecordExporter) -> None:
        self._collector = _Collector()
        self._provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
        self._provider.add_log_record_processor(self._collector)
        self._logger = self._provider.get_logger(scope, version)
        self._exporter = exporter

    def add(self, record: RecordData) -> None:
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

    def deliver(self) -> str:
        result = self._exporter.export(self._collector.batch)  # type: ignore[arg-type]
        return SendResult.OK if result is LogRecordExportResult.SUCCESS else SendResult.RETRY

    def discard(self) -> None:
        self._collector.batch = []

    def close(self) -> None:
        self._exporter.shutdown()  # type: ignore[no-untyped-call]
