"""A pipeline's short way: its commands merged into Items after execute(), one Item straight into a slot.

A pipeline is a new object each time, so the hand-off cannot keep what it worked out by the
pipeline, as it does by the client for a single-key command. It keeps it by the pipeline's
connection pool instead (the owner), which describes as the pipeline does (``RedisSource``: a
pipeline's address and user are its pool's). A pipeline whose commands merge into one Item (100 GETs
of one secret: one Item, ``audit.count`` 100) is then a dict lookup and a slot; any other (several
Items, an error, no pool) takes the call core's way, as before. Fail-closed mode takes the call
core's way throughout: its callers wait for their records.
"""

from __future__ import annotations

from collections.abc import Callable
from time import time_ns
from typing import TYPE_CHECKING, Any

from opentelemetry.context import get_current

from secret_audit._internal.callcore import Args, CallCore, Kwargs, Wrapper
from secret_audit._internal.event import Access
from secret_audit._internal.redis_source import SOURCE

if TYPE_CHECKING:
    from secret_audit._internal.redis_calls import Pipelines

__all__ = ["pipeline_wrapper"]

_new_tuple = tuple.__new__  # an Access from a full field tuple, without the NamedTuple's Python __new__
_NO_MORE = (None, None, None, None)  # an Access's error, expand, pending, ticket


def pipeline_wrapper(core: CallCore, pipelines: Pipelines, *, is_async: bool = False) -> Wrapper:
    """``Pipeline.execute``'s wrapt wrapper: the call core's, with a short way for a pipeline whose
    commands merge into one Item when the hand-off has one (an agent's); sync or async (``is_async``)."""
    general = core.wrapper(pipelines, pipelines.waits, pipelines.begin, is_async=is_async)
    merged: Callable[..., None] | None = getattr(core.handoff, "submit_merged", None)
    if core.closed or merged is None:
        return general
    describe, begin, expand = pipelines.describe, pipelines.begin, pipelines.classified.expand
    submit = core.handoff.submit

    def record(instance: Any, stack: list[Any], replies: Any, start: int, end: int, ctx: Any) -> None:
        try:
            items = expand(stack, replies, None)
            if len(items) == 1 and items[0].error is None:
                owner = getattr(instance, "connection_pool", None)
                merged(SOURCE, instance, items[0], start, end, ctx, instance if owner is None else owner)
            elif items:
                submit(_new_tuple(Access, (SOURCE, start, end, ctx, instance, items, "success", *_NO_MORE)))
        except Exception:
            core.note_error()

    def failed(instance: Any, args: Args, kwargs: Kwargs, stack: list[Any], start: int, ctx: Any,
               exc: BaseException) -> None:
        core.hand_off(pipelines.access, (instance, args, kwargs, stack, start, time_ns(), ctx, None, exc))

    async def run(wrapped: Callable[..., Any], instance: Any, args: Args, kwargs: Kwargs, stack: list[Any]
                  ) -> Any:
        ctx = get_current()  # when awaited, as the call core's: the context the call runs in
        begin(instance)
        start = time_ns()
        try:
            replies = await wrapped(*args, **kwargs)
        except BaseException as exc:
            failed(instance, args, kwargs, stack, start, ctx, exc)
            raise
        record(instance, stack, replies, start, time_ns(), ctx)
        return replies

    def audited(wrapped: Callable[..., Any], instance: Any, args: Args, kwargs: Kwargs) -> Any:
        stack = describe(instance, args, kwargs)  # read now: execute() empties it
        if stack is None:
            return wrapped(*args, **kwargs)
        if is_async:
            return run(wrapped, instance, args, kwargs, stack)
        ctx = get_current()
        begin(instance)
        start = time_ns()
        try:
            replies = wrapped(*args, **kwargs)
        except BaseException as exc:
            failed(instance, args, kwargs, stack, start, ctx, exc)
            raise
        record(instance, stack, replies, start, time_ns(), ctx)
        return replies

    return audited
