"""A single-key command's short way into the ring: its slot from what is kept per context and per client.

``redis_single`` hands a call that succeeded with one prepared Item to ``submit_one``. What a context
tells a slot (its accessor, its span ids or the ids the agent's span is made with) is worked out once
per context; the Item's shape id once per client and accessor, by the Item's identity (an Item is made
once per kind of call and kept). A miss takes the hand-off's whole way (``AgentHandoff.put``) and
keeps what it worked out. Nothing kept is a value: contexts, accessors, Items (names and fixed words)
and shape ids. What it asks of the hand-off is ``Writer``.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import trace
from opentelemetry.context import Context

from secret_audit._internal.agent_spans import chosen_ids
from secret_audit._internal.event import Access, Item
from secret_audit._internal.ring import SPAN, Ring
from secret_audit.context import resolve

if TYPE_CHECKING:
    from secret_audit._internal.agent_shape_ids import ShapeIds
    from secret_audit._internal.builder import RecordBuilder
    from secret_audit._internal.config import Settings

__all__ = ["ShortWay", "Writer"]

_KEPT_LIMIT = 4096  # Items kept per client and accessor
_NO_IDS: tuple[int, ...] = (0, 0, 0)
_NO_CONTEXT: tuple[Any, ...] = (object(), None, False, None, None)
_SPAN_KEY: str | None = getattr(trace.propagation, "_SPAN_KEY", None)  # where a context holds its span
_SPAN_TYPES: set[type] = set()  # the classes seen in that place that are Spans
_PROBE = trace.SpanContext(3, 5, False, trace.TraceFlags(1))
# the API's SpanContext is a tuple of its fields (trace id, span id, remote, flags, state, valid)
_FIELDS_IN_PLACE = isinstance(_PROBE, tuple) and tuple(_PROBE) == (3, 5, False, 1, _PROBE.trace_state, True)
_NO_SHAPES: tuple[Any, ...] = (object(), object(), None, {}, None)
_NO_MORE = (None, None, None, None)  # an Access's error, expand, pending, ticket
_random_bits = random.getrandbits  # a span id, as ``chosen_ids`` draws it
_new_tuple = tuple.__new__  # an Access from a full field tuple, without the NamedTuple's Python __new__


class Writer(Protocol):
    """What the short way asks of its hand-off (``AgentHandoff``): its ring and shape ids, its whole way."""

    settings: Settings
    spans: str  # the SPANS setting
    builder: RecordBuilder
    shape_ids: ShapeIds
    ring: Ring | None
    fallback: Any
    closed: bool

    def spans_by_agent(self) -> bool: ...

    def submit(self, access: Access) -> None: ...

    def put(self, access: Access, flags: int) -> int: ...

    def nudge(self) -> None: ...


class ShortWay:
    """One per hand-off, for its life (the wrappers hold its ``submit_one``); emptied at fork and reset."""

    def __init__(self, handoff: Writer) -> None:
        self._handoff = handoff
        self.forget()

    def forget(self) -> None:
        """Nothing kept: at start and in a forked child (the parent's ring is the parent's)."""
        self._ctx: tuple[Any, ...] = _NO_CONTEXT  # the last context, and what it tells a slot
        self._kept: tuple[Any, ...] = _NO_SHAPES  # the last client: its Items' shape ids, its ring

    def drop_shape_ids(self) -> None:
        """The shape ids kept are no longer valid (forgotten, or the hand-off closed)."""
        self._kept = _NO_SHAPES

    def submit_one(self, source: Any, target: Any, item: Item, start: int, end: int, ctx: Context,
                   owner: Any = None) -> None:
        """A call that succeeded with one Item (a single-key command, a pipeline whose commands merged into
        one): its slot straight from what is kept for its context (accessor, span ids) and its client
        (the Item's shape id), else ``submit``. ``owner`` stands for the client when the target is made
        afresh for each call (a pipeline: its connection pool) and describes as the target does."""
        now = self._ctx
        if ctx is not now[0]:
            now = self._context(ctx)
        kept = self._kept
        if (target if owner is None else owner) is kept[0] and source is kept[2] and (
                now[1] is kept[1] or now[1] == kept[1]):
            got = kept[3].get(id(item))  # by identity: an Item is made once per kind of call and kept
            ids = now[2]
            if got is not None and got[1] is item and ids is not False:  # False: a span made here
                sid = got[0]
                if ids is None:  # the agent makes the span: only its ids are chosen here
                    chosen = now[4]
                    if chosen is None:  # a root span: its trace id too
                        chosen = chosen_ids(now[3])
                        span_id = chosen[1]
                    else:
                        span_id = _random_bits(64) or 1
                    idx, sleeping = kept[4].put_one(SPAN, start, end, chosen[0], span_id, chosen[2], sid,
                                                    chosen[3])
                else:
                    idx, sleeping = kept[4].put_one(0, start, end, ids[0], ids[1], ids[2], sid)
                if idx >= 0:
                    if sleeping:
                        kept[4].wake()
                        self._handoff.nudge()
                    return
                self._kept = _NO_SHAPES  # full or sealed: the whole way, until learnt again
        self._learn(_new_tuple(Access, (source, start, end, ctx, target, (item,), "success", *_NO_MORE)),
                    target if owner is None else owner)

    def _context(self, ctx: Context) -> tuple[Any, ...]:
        """What a context tells every slot written in it: its accessor, its span ids (None: chosen per
        slot, the agent makes the span; False: a span made here, the whole way), its parent span."""
        h = self._handoff
        who = resolve(ctx, h.settings.default_access_path)
        span: Any = ctx.get(_SPAN_KEY) if _SPAN_KEY is not None else trace.get_current_span(ctx)
        kind = type(span)
        if kind not in _SPAN_TYPES:  # isinstance of the Span ABC costs more than the rest of this together
            if not isinstance(span, trace.Span):
                span = trace.INVALID_SPAN
            elif len(_SPAN_TYPES) < 64:
                _SPAN_TYPES.add(kind)
        parent = span.get_span_context()
        if _FIELDS_IN_PLACE and type(parent) is trace.SpanContext:  # its properties, read in one unpacking
            trace_id, span_id, _, flags, _, valid = parent
        else:
            trace_id, span_id, flags = parent.trace_id, parent.span_id, parent.trace_flags
            valid = parent.is_valid
        spans = h.spans
        ids: tuple[int, ...] | bool | None
        chosen: tuple[int, int, int, int] | None = None
        if spans in ("off", "errors") or (spans == "in_trace" and not valid):
            # a call that succeeded never asks for an ``errors`` span
            ids = (trace_id, span_id, int(flags)) if valid else _NO_IDS
        elif h.spans_by_agent():
            ids = None
            if valid:  # every span in this context: the parent's trace id, flags and span id (as chosen_ids)
                chosen = (trace_id, 0, flags, span_id)
        else:
            ids = False
        now = self._ctx = (ctx, who, ids, parent, chosen)
        return now

    def _learn(self, access: Access, owner: Any) -> None:
        """The whole way for one Item; then keep its shape id for the next access of its kind."""
        h = self._handoff
        if h.fallback is not None or h.closed:
            h.submit(access)
            return
        if h.put(access, 0) < 0:
            return
        now, ring, seen = self._ctx, h.ring, h.builder.last_shape(access)
        who = now[1]
        if now[0] is not access.context or now[2] is False or ring is None or seen is None or seen[0] != who:
            return
        sid = h.shape_ids.kept(seen[2])
        if sid is None:
            return
        kept = self._kept
        if kept[0] is not owner or kept[1] is not who or kept[2] is not access.source or kept[4] is not ring:
            kept = self._kept = (owner, who, access.source, {}, ring)
        if len(kept[3]) < _KEPT_LIMIT:
            item = access.items[0]  # type: ignore[index]
            kept[3][id(item)] = (sid, item)
