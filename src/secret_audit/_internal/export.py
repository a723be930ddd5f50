"""Building the audit record exporter from settings, apart from the SDK's global logs pipeline."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    ConsoleLogRecordExporter,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.resources import Resource

from secret_audit._internal.config import Settings

__all__ = ["NullExporter", "audit_resource", "build_exporter"]


class NullExporter(LogRecordExporter):
    """Accepts and discards records, for ``EXPORTER=none`` where only spans or echo lines are wanted."""

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _parse_headers(raw: str | None) -> dict[str, str] | None:
    if not raw:
        return None
    headers: dict[str, str] = {}
    for part in raw.split(","):
        if "=" in part:
            key, _, value = part.partition("=")
            headers[key.strip().lower()] = value.strip()
    return headers


def build_exporter(settings: Settings) -> LogRecordExporter:
    """Create the exporter named by the settings; OTLP honours the standard ``OTEL_EXPORTER_OTLP_*``."""
    if settings.exporter == "none":
        return NullExporter()
    if settings.exporter == "console":
        return ConsoleLogRecordExporter()
    headers = _parse_headers(settings.otlp_headers)
    if settings.otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
            OTLPLogExporter as GrpcExporter,
        )

        endpoint = settings.otlp_endpoint
        insecure = None
        if endpoint is not None and endpoint.startswith("http://"):
            insecure = True
        return GrpcExporter(endpoint=endpoint, headers=headers, insecure=insecure)
    from opentelemetry.exporter.otlp.proto.http._log_exporter import (
        OTLPLogExporter as HttpExporter,
    )

    return HttpExporter(endpoint=settings.otlp_endpoint, headers=headers)


def audit_resource() -> Resource:
    """Reuse the tracer provider's resource so audit records and spans name the same service."""
    provider = trace.get_tracer_provider()
    resource = getattr(provider, "resource", None)
    if not isinstance(resource, Resource):
        resource = Resource.create()
    if "service.instance.id" not in resource.attributes:
        resource = resource.merge(
            Resource({"service.instance.id": str(uuid.uuid4())})
        )
    return resource
