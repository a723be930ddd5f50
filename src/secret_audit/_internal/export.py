"""Choosing the audit record sink from settings, apart from the SDK's global logs pipeline."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource

from secret_audit._internal.config import Settings
from secret_audit._internal.otlp import RecordData
from secret_audit._internal.senders import SendResult, build_sender
from secret_audit._internal.sinks import FastSink, Sink

if TYPE_CHECKING:
    from opentelemetry.sdk._logs.export import LogRecordExporter

__all__ = ["NullSink", "audit_resource", "build_sink", "early_resource", "preload_sink"]


class NullSink(Sink):
    """Discards records, for ``EXPORTER=none`` where only spans or echo lines are wanted."""

    def __init__(self) -> None:
        self._count = 0

    def add(self, record: RecordData, prefix: bytes = b"", skip: int = 0, tail: bytes | None = None) -> None:
        self._count += 1

    def pending(self) -> int:
        return self._count

    def seal(self) -> None:
        self._count = 0

    def send(self, payload: object) -> str:
        return SendResult.OK

    def close(self) -> None:
        return None


def _sdk_otlp_exporter(settings: Settings) -> LogRecordExporter:
    from secret_audit._internal.senders import _headers

    headers = _headers(settings.otlp_headers) or None
    if settings.otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as Grpc

        endpoint = settings.otlp_endpoint
        insecure = True if endpoint is not None and endpoint.startswith("http://") else None
        return Grpc(endpoint=endpoint, headers=headers, insecure=insecure)
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as Http

    return Http(endpoint=settings.otlp_endpoint, headers=headers)


def build_sink(
    settings: Settings, resource: Resource, scope: str, version: str, exporter: LogRecordExporter | None
) -> Sink:
    """An explicit exporter wins; otherwise OTLP (fast or stock encoder), console, or nothing."""
    if settings.exporter == "otlp" and settings.encoder == "fast" and exporter is None:
        sender = build_sender(settings.otlp_protocol, settings.otlp_endpoint, settings.otlp_headers)
        return FastSink(resource, scope, version, sender)
    if settings.exporter == "none" and exporter is None:
        return NullSink()
    from secret_audit._internal.sdk_sink import SdkSink

    if exporter is not None:
        return SdkSink(resource, scope, version, exporter)
    if settings.exporter == "console":
        from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter

        return SdkSink(resource, scope, version, ConsoleLogRecordExporter())
    return SdkSink(resource, scope, version, _sdk_otlp_exporter(settings))


def preload_sink(settings: Settings, exporter: object) -> None:
    """Import what the sink needs while the interpreter is alive: the SDK's logs module detects a
    resource on a thread pool when imported, which fails once the interpreter has begun to exit."""
    if exporter is not None or settings.exporter == "console" or (
        settings.exporter == "otlp" and settings.encoder == "sdk"
    ):
        import secret_audit._internal.sdk_sink  # noqa: F401

        if exporter is None and settings.exporter == "otlp" and settings.otlp_protocol == "grpc":
            import opentelemetry.exporter.otlp.proto.grpc._log_exporter
        elif exporter is None and settings.exporter == "otlp":
            import opentelemetry.exporter.otlp.proto.http._log_exporter  # noqa: F401
    elif settings.exporter == "otlp":
        from secret_audit._internal.senders import preload

        preload(settings.otlp_protocol)


def early_resource(provider: trace.TracerProvider | None = None) -> Resource | None:
    """Detect the resource now when no tracer provider carries one: detection runs on a thread
    pool, which refuses work once the interpreter has begun to exit (when a short script's records
    are built)."""
    if isinstance(getattr(provider or trace.get_tracer_provider(), "resource", None), Resource):
        return None
    return audit_resource(provider)


def audit_resource(
    provider: trace.TracerProvider | None = None, detected: Resource | None = None
) -> Resource:
    """Reuse the tracer provider's resource so audit records and spans name the same service."""
    provider = provider or trace.get_tracer_provider()
    resource = getattr(provider, "resource", None)
    if not isinstance(resource, Resource):
        resource = detected or Resource.create()
    if "service.instance.id" not in resource.attributes:
        resource = resource.merge(Resource({"service.instance.id": str(uuid.uuid4())}))
    return resource
