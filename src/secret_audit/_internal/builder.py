"""The record builder: an access's shapes (cached per kind of access), names, summaries and audit span.

It reads the OpenTelemetry context (the accessor's baggage, the parent span) and starts audit spans
through the tracer provider: the app's side. The audit agent never builds from an access (it reads
shapes from its apps' rings), so it never imports this module or the API (``shapes`` holds what both
read).
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from secret_audit import contract
from secret_audit._internal.config import Settings
from secret_audit._internal.event import Access, Item
from secret_audit._internal.otlp import encode_attributes
from secret_audit._internal.shapes import (
    NO_IDS,
    SCOPE,
    SEVERITY,
    Ids,
    Shape,
    fill,
    span_start,
    summary,
    worst,
)
from secret_audit.context import resolve
from secret_audit.hashing import hash_name
from secret_audit.version import __version__

__all__ = ["Built", "RecordBuilder"]


def _ids(span_context: trace.SpanContext) -> Ids:
    if not span_context.is_valid:
        return NO_IDS
    trace_id, span_id = span_context.trace_id, span_context.span_id
    return trace_id, span_id, int(span_context.trace_flags), f"{trace_id:032x}", f"{span_id:016x}"


# One access, built: a record's attributes, shape and body per secret, its trace ids, its span (a
# plain tuple: a NamedTuple's constructor is a Python call, per access).
Built = tuple[list[dict[str, Any]], list[Shape], list[str], Ids, Span | None]


# Bounded so that high-cardinality key names cost at most about 2 MB of cached shapes.
_SHAPES_LIMIT = 1024
def _coalesce(items: tuple[Item, ...]) -> list[tuple[Item, int]]:
    """Merge identical accesses within one call (e.g. a pipeline reading one key 100 times)."""
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for item in items:
        key = (*item[:6], id(item.error))  # name, operation, action, result, resource, version
        group = groups.get(key)
        if group is None:
            groups[key] = [item, item.times]
        else:
            group[1] += item.times
    return [(g[0], g[1]) for g in groups.values()]


class RecordBuilder:
    """Shapes (cached per kind of access), names, summaries and audit spans of one stream's records."""

    def __init__(self, settings: Settings, tracer_provider: TracerProvider | None) -> None:
        self.settings = settings
        self._hmac_key = settings.hmac_key if settings.hash_names else None
        self._provider = tracer_provider
        self._tracer: trace.Tracer | None = None
        self._spans = settings.spans
        # Shapes by situation (who, through which client), then by (item, count, outcome).
        self._shapes: dict[tuple[Any, ...], dict[tuple[Any, ...], Shape]] = {}
        self._count = 0  # shapes cached
        self._last_who: tuple[Context | None, Any, trace.SpanContext] = (
            None, None, trace.INVALID_SPAN_CONTEXT)
        self._last_ids: tuple[trace.SpanContext | None, Ids] = (None, NO_IDS)
        # the last situation: (source, client, who), its resource and principal, its shapes
        self._last: tuple[Any, Any, Any, str | None, str | None, dict[tuple[Any, ...], Shape]] = (
            None, None, None, None, None, {})

    def tracer(self) -> trace.Tracer:
        """The audit spans' tracer, from the given provider or the global one when first needed."""
        if self._tracer is None:
            provider = self._provider or trace.get_tracer_provider()
            self._tracer = provider.get_tracer(SCOPE, __version__)
        return self._tracer

    def build(self, access: Access) -> Built | None:
        """One record per distinct secret the access touched, and its span if wanted; None for none."""
        found = self.shapes_of(access)
        if found is None:
            return None
        chosen, ctx, parent, parent_ids = found
        records, bodies = fill(chosen, access.start_ns, access.end_ns)
        if not self.wants_span(parent, records):
            return records, chosen, bodies, parent_ids, None
        span = self._start_span(ctx, records, access.start_ns)
        return records, chosen, bodies, _ids(span.get_span_context()), span

    def shapes_of(self, access: Access) -> tuple[list[Shape], Context, trace.SpanContext, Ids] | None:
        """The shape of each distinct secret the access touched, its context, parent span and its ids."""
        found = self.shapes_for(access)
        if found is None:
            return None
        last_ids = self._last_ids
        parent = found[2]
        if last_ids[0] is not parent:
            last_ids = self._last_ids = (parent, _ids(parent))
        return found[0], found[1], parent, last_ids[1]

    def shapes_for(self, access: Access) -> tuple[list[Shape], Context, trace.SpanContext] | None:
        """The shape of each distinct secret the access touched, its context and parent span; None for none.

        This is all the app's side works out per access when an agent builds the records.
        """
        source = access.source
        ctx = access.context
        items = access.items
        if items is None:
            items = access.expand(access.pending) if access.expand is not None else ()
        if not items:
            return None
        last_who = self._last_who  # one tuple: with an agent, app threads call this at once
        if ctx is last_who[0]:
            _, who, parent = last_who
        else:
            # Accesses made in one request share its context: resolved once for all of them.
            who = resolve(ctx, self.settings.default_access_path)
            parent = trace.get_current_span(ctx).get_span_context()
            self._last_who = (ctx, who, parent)
        target = access.target
        last = self._last
        if last[2] is not who or last[1] is not target or last[0] is not source:
            # Consecutive accesses mostly come from one client with the same accessor (a request's
            # context, or none: then ``resolve`` returns one shared object): described once.
            last = self._situation(source, target, who)
        base_resource, principal, shapes = last[3], last[4], last[5]
        chosen: list[Shape] = []
        outcome = access.outcome
        for item, count in _coalesce(items) if len(items) > 1 else ((items[0], items[0].times),):
            error = item.error or access.error
            if error is None:
                key: tuple[Any, ...] = (item, count, outcome)
                try:
                    shape = shapes.get(key)
                except TypeError:  # an unhashable value from a source: built every time
                    shape, key = None, ()
                if shape is None:
                    shape = self._shape(source, item, count, outcome, None, principal, base_resource, who)
                    if key:
                        self._keep(shapes, key, shape)
            else:
                shape = self._shape(source, item, count, access.outcome, error, principal, base_resource, who)
            chosen.append(shape)
        return chosen, ctx, parent

    def last_shape(self, access: Access) -> tuple[Any, trace.SpanContext, Shape] | None:
        """After ``shapes_for(access)`` of a one-Item access that succeeded: its accessor, parent span and
        shape, as kept for the next access of the same kind (None if another thread came between)."""
        last_who, last = self._last_who, self._last
        if last_who[0] is not access.context or last[1] is not access.target or last[2] is not last_who[1]:
            return None
        item = access.items[0] if access.items else None
        shape = None if item is None else last[5].get((item, item.times, access.outcome))
        return None if shape is None else (last_who[1], last_who[2], shape)

    def wants_span(self, parent: trace.SpanContext, records: list[dict[str, Any]]) -> bool:
        """One audit span per instrumented call, following the span mode (and then the sampler)."""
        mode = self._spans
        return not (
            mode == "off"
            or (mode == "in_trace" and not parent.is_valid)
            or (mode == "errors" and worst(records) not in ("error", "denied"))
        )

    def span_ids(self, ctx: Context, records: list[dict[str, Any]], start_ns: int, end_ns: int) -> Ids:
        """Make and end an access's audit span at once (the call is over); the ids its records carry."""
        span = self._start_span(ctx, records, start_ns)
        self.end_span(span, records, end_ns)
        return _ids(span.get_span_context())

    def _situation(
        self, source: Any, target: Any, who: Any
    ) -> tuple[Any, Any, Any, str | None, str | None, dict[tuple[Any, ...], Shape]]:
        """Who accesses, through which client: the resource and principal, and the shapes made for them."""
        resource = source.resource(target)
        principal = who.principal or self.settings.principal or source.principal(target)
        situation = (source.name, principal, resource, who.enduser, who.client_address, who.access_path)
        try:
            shapes = self._shapes.get(situation)
        except TypeError:  # an unhashable value from a source: its shapes are not kept
            shapes = {}
            self._last = (source, target, who, resource, principal, shapes)
            return self._last
        if shapes is None:
            if len(self._shapes) >= _SHAPES_LIMIT:  # many end users or clients: start afresh
                self._shapes.clear()
                self._count = 0
            shapes = self._shapes[situation] = {}
        self._last = (source, target, who, resource, principal, shapes)
        return self._last

    def _keep(self, shapes: dict[tuple[Any, ...], Shape], key: tuple[Any, ...], shape: Shape) -> None:
        """Cache a shape, forgetting them all at the bound (high-cardinality names cost at most ~2 MB)."""
        if self._count >= _SHAPES_LIMIT:
            self._count = 0
            for cached in self._shapes.values():
                cached.clear()
        shapes[key] = shape
        self._count += 1

    @staticmethod
    def end_span(span: Span, records: list[dict[str, Any]], end_ns: int) -> None:
        """End an access's span once its records are stamped: a lone record lends it all its attributes."""
        if len(records) == 1:
            span.set_attributes(records[0])
        if worst(records) in ("error", "denied"):
            span.set_status(Status(StatusCode.ERROR, records[0].get("error.type")))
        span.end(end_time=end_ns)

    def _name(self, raw: str | bytes) -> str:
        if self._hmac_key is not None:
            return hash_name(raw, self._hmac_key)
        if isinstance(raw, bytes):
            return raw.decode("utf-8", "backslashreplace")
        return raw

    def _shape(
        self,
        source: Any,
        item: Item,
        count: int,
        outcome: str,
        error: BaseException | None,
        principal: str | None,
        base_resource: str | None,
        who: Any,
    ) -> Shape:
        """Everything about a record that repeats from access to access, worked out once."""
        error_type = error_text = None
        if error is not None:
            outcome, error_type, error_text = source.describe_error(error)
        name = self._name(item.name)
        attrs: dict[str, Any] = {"secret.name": name, "secret.source": source.name}
        resource = item.resource or base_resource
        if resource and self._hmac_key is not None and item.resource:
            raw = item.name
            if isinstance(raw, bytes):
                raw = raw.decode("utf-8", "surrogateescape")
            resource = resource.replace(f"/secrets/{raw}", f"/secrets/{name}")
        if resource:
            attrs["secret.resource"] = resource
        if item.version:
            attrs["secret.version"] = item.version
        attrs["audit.operation"] = item.operation
        attrs["audit.action"] = item.action
        if error_type is None and item.result == "not_found":
            attrs["audit.outcome"] = "not_found"
        else:
            attrs["audit.outcome"] = outcome
            if item.result and error_type is None:
                attrs["audit.result"] = item.result
        if count > 1:
            attrs["audit.count"] = count
        if error_type is not None:
            attrs["error.type"] = error_type
            if error_text:
                attrs["audit.error"] = error_text
        if principal:
            attrs["audit.principal"] = principal
        if who.enduser:
            attrs["enduser.id"] = who.enduser
        if who.client_address:
            attrs["client.address"] = who.client_address
        attrs["audit.access_path"] = who.access_path
        marker = "\x00took\x00"
        text = summary({**attrs, "audit.duration_ms": 0.0}, took=marker)
        head, found, tail = text.partition(marker)
        severity, severity_text = SEVERITY.get(attrs["audit.outcome"], SEVERITY["error"])
        kind = (contract.EVENT_ACCESS, source.name, attrs["audit.outcome"])
        return Shape(attrs, head, tail if found else None, severity, severity_text, encode_attributes(attrs),
                     len(attrs), kind)

    def _start_span(self, ctx: Context, records: list[dict[str, Any]], start_ns: int) -> Span:
        """The audit span of one call: named by its operation, with its records' common facts."""
        name, attrs = span_start(records)
        return self.tracer().start_span(
            name, context=ctx, kind=SpanKind.INTERNAL, attributes=attrs, start_time=start_ns
        )
