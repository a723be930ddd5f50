"""One call core for every source, sync and async: describe, time, hand off, or (fail-closed) wait.

A source supplies hooks: ``describe`` says cheaply whether a call touches a secret (None: the
call runs untouched), ``access`` turns the call and its reply or error into an ``Access`` for the
worker. Everything else is spelled once here: fail-closed (refuse up front while degraded, wait
for the record to be durable, refuse a call whose record cannot be built), and the one counter of
failures inside our wrappers, which reaches ``stats()`` as ``call_errors``. A failure of ours
never changes what the caller gets in fail-open mode.
"""

from __future__ import annotations

from collections.abc import Callable
from time import time_ns
from typing import Any, Protocol

from opentelemetry.context import Context, get_current

from secret_audit._internal.event import Access
from secret_audit._internal.handoff import Handoff
from secret_audit.exceptions import AuditUnavailableError

__all__ = ["CallCore", "Hooks", "Wrapper"]

Args = tuple[Any, ...]
Kwargs = dict[str, Any]
Wrapper = Callable[[Callable[..., Any], Any, Args, Kwargs], Any]
Waits = Callable[[Any], bool] | None  # fail-closed: does this described call wait (None: every one)
Begin = Callable[[Any], None] | None  # run on the instance just before the call

_BEFORE = "secret access refused: audit records cannot be made durable (fail-closed mode)"
_AFTER = "secret access refused: its audit record could not be made durable in time (fail-closed mode)"
_UNBUILT = "secret access refused: its audit record could not be built (fail-closed mode)"


class Hooks(Protocol):
    """What a source tells the call core about one kind of call."""

    def describe(self, instance: Any, args: Args, kwargs: Kwargs) -> Any:
        """What the call touches, cheaply (a table lookup, a key match); None when it touches no secret."""

    def access(self, instance: Any, args: Args, kwargs: Kwargs, described: Any, start: int, end: int,
               ctx: Context, reply: Any, error: BaseException | None) -> Access:
        """Classify the reply or the error into the Access the worker builds records from: what
        ``describe`` returned, the call's start and end (ns), its context, and its reply or error."""


class CallCore:
    """The wrappers' shared core, bound to one hand-off; ``closed`` makes secret calls wait for durability."""

    def __init__(self, handoff: Handoff, *, closed: bool = False) -> None:
        self.handoff = handoff
        self.closed = closed
        self.note_error = handoff.note_error

    # ---- fail-closed, spelled once --------------------------------------------------------------

    def refuse_unless_accepting(self) -> None:
        """Refuse up front while the pipeline is known to be unable to keep records."""
        if not self.handoff.accepting():
            self.handoff.refuse("unavailable")
            raise AuditUnavailableError(_BEFORE)

    def _enter(self, wait: bool, begin: Begin, instance: Any) -> tuple[Context, int]:
        """Just before the call: refuse it if it waits and nothing can be kept; its context and start."""
        if wait:
            self.refuse_unless_accepting()
        ctx = get_current()
        if begin is not None:
            begin(instance)
        return ctx, time_ns()

    def hand_off(self, access: Callable[..., Access], call: tuple[Any, ...]) -> None:
        """Hand the call off without waiting; a failure of ours is counted, never raised. A call that
        raised goes this way in fail-closed mode too: no value leaves, its own error goes through."""
        try:
            self.handoff.submit(access(*call))
        except Exception:
            self.note_error()

    def _made(self, access: Callable[..., Access], call: tuple[Any, ...]) -> Access:
        """The Access a fail-closed call waits on; a call whose record cannot be built is refused."""
        try:
            return access(*call)
        except Exception:
            self.note_error()
            self.handoff.refuse("unbuilt")
            raise AuditUnavailableError(_UNBUILT) from None

    def _not_durable(self) -> AuditUnavailableError:
        self.handoff.refuse("not_durable")
        return AuditUnavailableError(_AFTER)

    # ---- the wrappers -------------------------------------------------------------------------

    def wrapper(
        self, hooks: Hooks, waits: Waits = None, begin: Begin = None, *, is_async: bool = False
    ) -> Wrapper:
        """A wrapt wrapper: ``waits(described)`` tells, in fail-closed mode, whether this call waits
        (default: every described call); ``begin(instance)`` runs just before it. For a method that
        returns a coroutine (``is_async``), the awaited call is timed, not the coroutine's creation."""
        describe, access, closed = hooks.describe, hooks.access, self.closed
        submit, note_error = self.handoff.submit, self.note_error

        async def run(wrapped: Callable[..., Any], instance: Any, args: Args, kwargs: Kwargs, described: Any,
                      wait: bool) -> Any:
            ctx, start = self._enter(wait, begin, instance)
            try:
                reply = await wrapped(*args, **kwargs)
            except BaseException as exc:
                end = time_ns()
                self.hand_off(access, (instance, args, kwargs, described, start, end, ctx, None, exc))
                raise
            end = time_ns()
            if not wait:
                try:
                    submit(access(instance, args, kwargs, described, start, end, ctx, reply, None))
                except Exception:
                    note_error()
            elif not await self.handoff.wait_durable_async(
                self._made(access, (instance, args, kwargs, described, start, end, ctx, reply, None))
            ):
                raise self._not_durable()
            return reply

        def audited(wrapped: Callable[..., Any], instance: Any, args: Args, kwargs: Kwargs) -> Any:
            # described now, also for a coroutine: a pipeline's stack is read before execute() empties it
            described = describe(instance, args, kwargs)
            if described is None:
                return wrapped(*args, **kwargs)
            wait = closed and (waits is None or waits(described))
            if is_async:
                return run(wrapped, instance, args, kwargs, described, wait)
            if wait:
                self.refuse_unless_accepting()
            ctx = get_current()
            if begin is not None:
                begin(instance)
            start = time_ns()
            try:
                reply = wrapped(*args, **kwargs)
            except BaseException as exc:
                self.hand_off(access, (instance, args, kwargs, described, start, time_ns(), ctx, None, exc))
                raise
            end = time_ns()
            if wait:
                made = self._made(access, (instance, args, kwargs, described, start, end, ctx, reply, None))
                if not self.handoff.wait_durable(made):
                    raise self._not_durable()
                return reply
            try:
                submit(access(instance, args, kwargs, described, start, end, ctx, reply, None))
            except Exception:
                note_error()
            return reply

        return audited
