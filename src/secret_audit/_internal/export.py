"""Choosing the audit record sink from settings, apart from the SDK's global logs pipeline."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Union

from secret_audit._internal.config import Settings
from secret_audit._internal.otlp import RecordData
from secret_audit._internal.senders import SendResult, build_sender
from secret_audit._internal.sinks import FastSink, Sink

if TYPE_CHECKING:
    from opentelemetry.sdk._logs.export import LogRecordExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.trace import TracerProvider

__all__ = ["AnyResource", "NullSink", "PlainResource", "audit_resource", "build_sink", "early_resource",
           "preload_sink"]


class PlainResource(NamedTuple):
    """An app's resource as the agent has it: the SDK's ``Resource`` would import its module, and psutil
    with it, into the agent (about 2 MiB), for two fields the fast sink reads."""

    attributes: Mapping[str, Any]
    schema_url: str = ""


AnyResource = Union["Resource", PlainResource]


def _sdk_resource(resource: Any) -> bool:
    """An SDK ``Resource``, without importing its module: none exists unless it was imported."""
    module = sys.modules.get("opentelemetry.sdk.resources")
    return module is not None and isinstance(resource, module.Resource)


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
    settings: Settings, resource: AnyResource, scope: str, version: str, exporter: LogRecordExporter | None
) -> Sink:
    """An explicit exporter wins; otherwise OTLP (fast or stock encoder), console, or nothing."""
    if settings.exporter == "otlp" and settings.encoder == "fast" and exporter is None:
        sender = build_sender(settings.otlp_protocol, settings.otlp_endpoint, settings.otlp_headers)
        return FastSink(resource, scope, version, sender)
    if settings.exporter == "none" and exporter is None:
        return NullSink()
    from opentelemetry.sdk.resources import Resource

    from secret_audit._internal.sdk_sink import SdkSink

    if isinstance(resource, PlainResource):  # the SDK's log pipeline takes the SDK's resource
        resource = Resource(resource.attributes, resource.schema_url or None)

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


def _provider(provider: TracerProvider | None) -> Any:
    """The given tracer provider, else the global one; none without the API's trace module imported (the
    audit agent does not import it): only an SDK provider carries a resource, and the SDK imports it."""
    if provider is not None:
        return provider
    trace = sys.modules.get("opentelemetry.trace")
    return None if trace is None else trace.get_tracer_provider()


def early_resource(provider: TracerProvider | None = None) -> AnyResource | None:
    """Detect the resource now when no tracer provider carries one: detection runs on a thread
    pool, which refuses work once the interpreter has begun to exit (when a short script's records
    are built)."""
    if _sdk_resource(getattr(_provider(provider), "resource", None)):
        return None
    return audit_resource(provider)


def audit_resource(
    provider: TracerProvider | None = None, detected: AnyResource | None = None
) -> AnyResource:
    """Reuse the tracer provider's resource so audit records and spans name the same service."""
    resource: Any = getattr(_provider(provider), "resource", None)
    if not _sdk_resource(resource):
        resource = detected
        if resource is None:
            from opentelemetry.sdk.resources import Resource

            resource = Resource.create()
    if "service.instance.id" in resource.attributes:
        return resource  # type: ignore[no-any-return]
    instance = {"service.instance.id": str(uuid.uuid4())}
    if isinstance(resource, PlainResource):  # as Resource.merge: the id added last, the schema kept
        return PlainResource({**resource.attributes, **instance}, resource.schema_url)
    from opentelemetry.sdk.resources import Resource

    return resource.merge(Resource(instance))  # type: ignore[no-any-return]
