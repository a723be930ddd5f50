"""Audit spans made by the audit agent (``OTEL_PYTHON_SECRET_AUDIT_SPANS_VIA=agent``).

The app's side chooses the audit span's ids on the caller's path (a random span id, the parent's
trace id and sampled flag) and writes them, with the parent's span id, into the slot; the agent
makes the span with those ids, through a tracer provider of its own whose sampler follows the
parent's flag and whose exporter is the one the app's environment names (``OTEL_TRACES_EXPORTER``,
``OTEL_EXPORTER_OTLP_*``). So the span stays in the caller's trace and sampled as the caller's
parent-based sampler would; the app's own span processors never see it. Only with the SDK's
default sampler (parent-based, always on at the root): with any other, spans are made in the app.
"""

from __future__ import annotations

import json
import random
import sys
import threading
from typing import Any, ClassVar

from opentelemetry import trace

__all__ = ["SpanMaker", "chosen_ids", "parent_based_default"]

_DEFAULT = (
    "ParentBased{root:AlwaysOnSampler,remoteParentSampled:AlwaysOnSampler,remoteParentNotSampled:"
    "AlwaysOffSampler,localParentSampled:AlwaysOnSampler,localParentNotSampled:AlwaysOffSampler}"
)


def parent_based_default(*, announce: bool = False) -> bool:
    """True when the app's sampler is the SDK's default, so the parent's flag alone decides."""
    sampler = getattr(trace.get_tracer_provider(), "sampler", None)
    describe = getattr(sampler, "get_description", None)
    default = callable(describe) and describe() == _DEFAULT
    if announce and not default:
        sys.stderr.write("otel-secret-audit: OTEL_PYTHON_SECRET_AUDIT_SPANS_VIA=agent needs the SDK's "
                         "default sampler (parent-based, always on): audit spans are made in the app.\n")
    return default


def chosen_ids(parent: trace.SpanContext) -> tuple[int, int, int, int]:
    """The audit span's trace id, span id and flags, and its parent's span id (0: a root span)."""
    span_id = random.getrandbits(64) or 1
    if parent.is_valid:
        return parent.trace_id, span_id, int(parent.trace_flags), parent.span_id
    return random.getrandbits(128) or 1, span_id, 1, 0  # a root: sampled, as ALWAYS_ON says


def _chosen() -> Any:
    """An id generator that hands out the ids the app chose for the span being made (random ones).

    Defined on first use: the app imports this module for ``chosen_ids`` and must not import the
    SDK's trace package for it, nor must an agent that makes no spans.
    """
    from opentelemetry.sdk.trace.id_generator import IdGenerator

    class Chosen(IdGenerator):
        def __init__(self) -> None:
            self.local = threading.local()

        def generate_span_id(self) -> int:
            return int(self.local.span_id)

        def generate_trace_id(self) -> int:
            return int(self.local.trace_id)

        def is_trace_id_random(self) -> bool:
            return True  # the app drew it with random.getrandbits, as the SDK's generator does

    return Chosen()


class SpanMaker:
    """The agent's tracer provider for the audit spans of the apps with one resource."""

    _makers: ClassVar[dict[str, SpanMaker]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()
    _processors: ClassVar[list[Any] | None] = None

    @classmethod
    def for_resource(cls, resource: dict[str, Any] | None) -> SpanMaker:
        """One provider per app resource, shared by the streams that have it; one export for all."""
        key = json.dumps(resource or {}, sort_keys=True)
        with cls._lock:
            maker = cls._makers.get(key)
            if maker is None:
                maker = cls._makers[key] = SpanMaker(resource or {})
            return maker

    def __init__(self, resource: dict[str, Any]) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        self.ids = _chosen()
        self.provider = TracerProvider(resource=Resource(resource), id_generator=self.ids)
        for processor in self._shared_processors():
            self.provider.add_span_processor(processor)

    @classmethod
    def _shared_processors(cls) -> list[Any]:
        """One batch processor per exporter for every provider (called under ``_lock``).

        Each span carries its provider's resource, and the OTLP encoder groups a batch by resource,
        so one export thread and one queue serve every app: a gunicorn's 8 workers (8 resources)
        would otherwise cost the agent 8 threads and up to 8 queues of spans (issue 19's memory goal).
        """
        if cls._processors is None:
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            cls._processors = [BatchSpanProcessor(exporter) for exporter in _exporters()]
        return cls._processors

    def context(self, trace_id: int, span_id: int, flags: int, parent: int) -> Any:
        """The context to start the span in (its parent, remote), with the chosen ids set for this thread."""
        self.ids.local.span_id, self.ids.local.trace_id = span_id, trace_id
        if not parent:
            return None
        parent_context = trace.SpanContext(trace_id, parent, True, trace.TraceFlags(flags))
        return trace.set_span_in_context(trace.NonRecordingSpan(parent_context))

    def flush(self, timeout_ms: int) -> None:
        self.provider.force_flush(timeout_ms)


def _exporters() -> list[Any]:
    """The span exporters the app's environment names, chosen as the SDK's configurator chooses them."""
    from opentelemetry.sdk._configuration import _get_exporter_names, _import_exporters

    names = _get_exporter_names("traces")
    span_classes, _, _ = _import_exporters(names, [], [])
    return [cls() for cls in span_classes.values()]
