"""A single-key command's wrapper (GET, SET, HGET, INCR...): a dict lookup, the call, a prepared hand-off.

The common call names one key at a fixed place, so it is classified by its name and that key from
the pipelines' cache (``redis_pipelines``: names and keys only, never a value). A key no secret
pattern matches costs that lookup and the call; a secret one its start and end, the reply's result
word (without keeping the reply), its Item (made once per word) and ``submit_one``, which the
agent's hand-off turns into a slot from what it keeps per context and per client. Every other call
(no key, a key that is not plain text, a command of another kind, one that raised, fail-closed
mode) takes the call core's general path, as before. The async clients' ``execute_command`` (and
the async cluster's) take the same way around the awaited call.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from time import time_ns
from typing import TYPE_CHECKING, Any

from opentelemetry.context import get_current

from secret_audit._internal import redis_replies as rr
from secret_audit._internal.callcore import Args, CallCore, Kwargs, Wrapper
from secret_audit._internal.handoff import Handoff
from secret_audit._internal.redis_pipelines import GENERAL, SKIP, PipelineItems, make_item
from secret_audit._internal.redis_source import SOURCE

if TYPE_CHECKING:
    from secret_audit._internal.redis_calls import Commands

__all__ = ["single_wrapper"]

_EMPTIABLE = (dict, list, set, tuple)  # an empty one of these is no data, as ``rr.found`` says
Classify = Callable[[Args], Any]
Record = Callable[[Any, Args, Any, Any, int, int, Any], None]


def _short_way(core: CallCore, classified: PipelineItems) -> tuple[Classify, Record]:
    """What the sync and async wrappers share: a call's entry in the cache (or SKIP, GENERAL), and the
    hand-off of a call that returned (its result word, its Item, ``submit_one``; a failure counted)."""
    handoff, note_error = core.handoff, core.note_error
    submit_one: Callable[..., None] | None = getattr(handoff, "submit_one", None)
    if submit_one is None:  # a hand-off with ``submit`` alone (a test's recorder): the in-process one's way
        submit_one = partial(Handoff.submit_one, handoff)
    cached, entry_of = classified.cached, classified.entry
    found, none, general_way = rr.found, rr.none, GENERAL  # closure cells: no global look-ups

    def classify(args: Args) -> Any:
        if len(args) < 2:
            return general_way
        try:
            entry = cached((args[0], args[1]))
            return entry_of(args[0], args[1]) if entry is None else entry
        except Exception:  # an unhashable key (bytearray; a writable memoryview: ValueError)
            return general_way

    def record(entry: Any, args: Args, reply: Any, instance: Any, start: int, end: int, ctx: Any) -> None:
        try:
            result = entry[0]
            if result is found:  # GET and its kind, without the call: held to rr.found by a test
                empty = reply is None or (isinstance(reply, _EMPTIABLE) and not reply)
                word: Any = "not_found" if empty else "found"
            elif result is none:
                word = None
            else:
                try:
                    said = result(args, reply, entry[1])
                    word = said[0] if said else None
                except Exception:  # what the reply tells is unknown, the access is not: as the general path
                    word = None
            item = entry[2].get(word)
            if item is None:
                item = make_item(entry, word)
            submit_one(SOURCE, instance, item, start, end, ctx)
        except Exception:
            note_error()

    return classify, record


def single_wrapper(core: CallCore, commands: Commands, classified: PipelineItems, *, is_async: bool = False
                   ) -> Wrapper:
    """``execute_command``'s wrapt wrapper: the general one, with a short way for single-key commands. For
    an async ``execute_command`` (``is_async``: redis.asyncio, its cluster) the call is classified when
    called and the awaited call is timed and handed off the same way."""
    general = core.wrapper(commands, is_async=is_async)
    if core.closed:  # fail-closed: every secret call waits for its record, the general path's work
        return general
    classify, record = _short_way(core, classified)
    skip, general_way = SKIP, GENERAL

    async def run(wrapped: Callable[..., Any], instance: Any, args: Args, kwargs: Kwargs, entry: Any) -> Any:
        ctx = get_current()  # when awaited, as the general path's: the context the call runs in
        start = time_ns()
        try:
            reply = await wrapped(*args, **kwargs)
        except BaseException as exc:
            _failed(core, commands, instance, args, kwargs, start, ctx, exc)
            raise
        record(entry, args, reply, instance, start, time_ns(), ctx)
        return reply

    def audited(wrapped: Callable[..., Any], instance: Any, args: Args, kwargs: Kwargs) -> Any:
        entry = classify(args)
        if entry is skip:
            return wrapped(*args, **kwargs)
        if entry is general_way:
            return general(wrapped, instance, args, kwargs)
        if is_async:
            return run(wrapped, instance, args, kwargs, entry)
        ctx = get_current()
        start = time_ns()
        try:
            reply = wrapped(*args, **kwargs)
        except BaseException as exc:
            _failed(core, commands, instance, args, kwargs, start, ctx, exc)
            raise
        record(entry, args, reply, instance, start, time_ns(), ctx)
        return reply

    return audited


def _failed(core: CallCore, commands: Commands, instance: Any, args: Args, kwargs: Kwargs, start: int,
            ctx: Any, exc: BaseException) -> None:
    """A call that raised: its record the general way (its error's shape is made for it alone)."""
    end = time_ns()
    try:
        described = commands.describe(instance, args, kwargs)
    except Exception:
        core.note_error()
        return
    if described is not None:
        core.hand_off(commands.access, (instance, args, kwargs, described, start, end, ctx, None, exc))
