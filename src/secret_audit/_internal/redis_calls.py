"""The redis-py calls' hooks into the call core: which commands touch secrets, and what their replies say.

Single commands are classified on the caller's path with one table lookup and a key match; their
Items are made on the worker from what the caller kept. A pipeline's command stack is copied on
the caller's path before execute() and classified after it, from a cache by command and key
(``redis_pipelines``, in C when built), into a few merged Items. The Redis command tables
(``redis_commands``, ``redis_keys``, ``redis_replies``, ``redis_keyspecs``) say what each command does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.context import Context

from secret_audit._internal.callcore import Args, CallCore, Kwargs, Wrapper
from secret_audit._internal.event import Access, Item
from secret_audit._internal.handoff import Handoff
from secret_audit._internal.matcher import KeyMatcher
from secret_audit._internal.redis_commands import (
    EVERY,
    LISTS,
    SUBCOMMAND,
    UNKNOWN_COMMAND,
    WHOLE,
    Command,
    lookup,
)
from secret_audit._internal.redis_keys import DELETE, META, upper
from secret_audit._internal.redis_pipeline_way import pipeline_wrapper
from secret_audit._internal.redis_pipelines import PipelineItems, command_stack, key_name, verb
from secret_audit._internal.redis_single import single_wrapper
from secret_audit._internal.redis_source import SOURCE

__all__ = ["Commands", "Pipelines", "Wrappers"]

_PLAIN_KEYS = (str, bytes)
# Building the NamedTuple from a full field tuple skips its Python-level __new__ (hot path).
_new_tuple = tuple.__new__
Found = tuple[Command, list[tuple[Any, str]], list[int]]
_MADE_LIMIT = 4096  # Items of plain commands kept (high-cardinality key names: at most a few MB)


class Commands:
    """Single commands' hooks: ``describe`` finds the secret keys, ``access`` keeps what the worker needs."""

    def __init__(self, is_secret: KeyMatcher, unknown: Command | None, note_error: Callable[[], None]):
        self.is_secret = is_secret
        self.unknown = unknown  # how a command missing from the table is classified, if at all
        self.note_error = note_error
        # A plain command's Items by (name, keys, results): key names and fixed words, never a value
        # (``access`` made every secret key a str or bytes name: 1 and 1.0, one dict key, are two names).
        # Read on the caller's path when an agent serves the process, so made once per kind of call.
        self._made: dict[tuple[Any, ...], tuple[Item, ...]] = {}

    def describe(self, instance: Any, args: Sequence[Any], kwargs: Any) -> Found | None:
        """The command spec, its keys and the positions of the secret ones; None when none is secret."""
        try:
            spec = lookup(args[0])
        except (IndexError, TypeError):
            return None
        if spec is None:
            spec = self.unknown
            if spec is None:
                return None
        is_secret = self.is_secret
        try:
            keys = spec.keys(args)
            hits = [i for i, (key, _) in enumerate(keys) if is_secret(key)]
        except Exception:  # never let classification change the caller's call
            self.note_error()
            return None
        if hits:
            return (spec, keys, hits)
        if keys or not spec.kind & (LISTS | EVERY):
            return None
        return (spec, keys, hits)  # KEYS, SCAN...: the reply tells which secrets they name; FLUSHALL...

    def access(
        self,
        instance: Any,
        args: Args,
        kwargs: Kwargs,
        found: Found,
        start: int,
        end: int,
        ctx: Context,
        reply: Any,
        error: BaseException | None,
    ) -> Access:
        """What the worker needs, read now (the reply is not kept): its Items are made there."""
        keys = found[1]
        for i in found[2]:
            if type(keys[i][0]) not in _PLAIN_KEYS:
                # A memoryview or bytearray key may be reused by the caller before the worker
                # reads it: keep the name it had at call time.
                found = (found[0], [(key_name(k), op) for k, op in keys], found[2])
                break
        pending = (args, found, self._results(args, found, reply, error), error)
        fields = (SOURCE, start, end, ctx, instance, None, "success", error, self._expand, pending, None)
        return _new_tuple(Access, fields)

    def items(
        self, args: Sequence[Any], found: Found, reply: Any, error: BaseException | None
    ) -> tuple[Item, ...]:
        return self._make_items(args, found, self._results(args, found, reply, error), error)

    @staticmethod
    def _results(args: Sequence[Any], found: Found, reply: Any, error: BaseException | None) -> Sequence[Any]:
        """What the reply tells about each key (found, created, ...)."""
        if error is not None:
            return ()
        spec, keys, _ = found
        try:
            return spec.result(args, reply, keys)
        except Exception:
            return ()

    def _expand(self, pending: Any) -> tuple[Item, ...]:
        """Build a single command's Items on the worker, from what the caller's path kept."""
        args, found, results, error = pending
        keys = found[1]
        if error is not None or found[0].kind:
            return self._make_items(args, found, results, error)
        try:
            key = (args[0], tuple(keys), tuple(results))
            made = self._made.get(key)
        except TypeError:  # an unhashable name or result: made every time
            return self._make_items(args, found, results, error)
        if made is None:
            made = self._make_items(args, found, results, error)
            if len(self._made) >= _MADE_LIMIT:
                self._made.clear()
            self._made[key] = made
        return made

    def _make_items(
        self, args: Sequence[Any], found: Found, results: Sequence[Any], error: BaseException | None
    ) -> tuple[Item, ...]:
        """One Item per secret key of one command (for KEYS, SCAN...: per secret name listed)."""
        spec, keys, hits = found
        action = verb(args[0])
        if spec.kind:
            if spec.kind & SUBCOMMAND and len(args) > 1:
                action = f"{action} {upper(args[1])}"
            if spec.kind & LISTS:
                is_secret = self.is_secret
                return tuple(
                    Item(name=key_name(name), operation=META, action=action, result="found")
                    for name in results
                    if is_secret(name)
                )
            if spec.kind & EVERY:
                op = WHOLE.get(action, DELETE)
                done = None if error is not None else ("deleted" if op == DELETE else "updated")
                return tuple(Item(name=pattern, operation=op, action=action, result=done, error=error)
                             for pattern in self.is_secret.patterns)
        return tuple(
            Item(
                name=key_name(keys[i][0]),
                operation=keys[i][1],
                action=action,
                result=results[i] if i < len(results) else None,
                error=error,
            )
            for i in hits
        )


class _StrategyCommands(Commands):
    """A cluster transaction's immediate commands (reads between WATCH and MULTI): the client is its pipe."""

    def access(self, instance: Any, *rest: Any) -> Access:
        return super().access(getattr(instance, "_pipe", instance), *rest)


class Pipelines:
    """Hooks for ``Pipeline.execute``: the stack is copied before the call and classified after it."""

    def __init__(self, commands: Commands) -> None:
        self.commands = commands
        self.classified = PipelineItems(
            commands.is_secret, commands.unknown, commands.describe, commands.items
        )

    def describe(self, instance: Any, args: Args, kwargs: Kwargs) -> list[Any] | None:
        """Copy the queued commands before execute() resets the stack; None when there are none."""
        try:
            return command_stack(instance) or None
        except Exception:
            return None

    def waits(self, plan: list[Any]) -> bool:
        """Fail-closed: only a pipeline that touches at least one secret key waits."""
        return self.classified.touches_secret(plan)

    def begin(self, instance: Any) -> None:
        """Let ``first_error`` keep the replies of the execute() about to run (no stale ones)."""
        try:
            instance.__dict__[_REPLIES] = None
        except Exception:
            self.commands.note_error()

    def access(
        self,
        instance: Any,
        args: Args,
        kwargs: Kwargs,
        plan: list[Any],
        start: int,
        end: int,
        ctx: Context,
        replies: Any,
        error: BaseException | None,
    ) -> Access:
        """After execute(): per-command outcomes when redis-py had every reply, else all failed.

        Classified now, at a dict lookup per command (in C when built): the Access keeps a few
        merged Items, not the stack and its replies, which held the app's memory (and its values)
        until the worker got to them, and made redis-py allocate afresh for every pipeline.
        """
        if error is not None:
            kept = _take_replies(instance)
            if kept is None:
                kept = _cluster_results(instance, plan, error)
            if kept is not None and len(kept) == len(plan):
                replies, error = kept, None
        items = self.classified.expand(plan, replies, error)
        return Access(SOURCE, start, end, ctx, instance, items, "success")

    def first_error(self, wrapped: Callable[..., Any], instance: Any, args: Args, kwargs: Kwargs) -> Any:
        """Wrap ``Pipeline.raise_first_error``: keep the reply list that execute() then drops.

        The server ran every command of a pipeline (and of an EXEC'd transaction) even when one
        failed; the exception only names the first failure. The replies say what happened to each.
        """
        try:
            out = wrapped(*args, **kwargs)
        except BaseException:
            self._keep(instance, args[1] if len(args) > 1 else kwargs.get("response"))
            raise
        if out is not None:  # a coroutine (it raises when awaited): kept now, as before
            self._keep(instance, args[1] if len(args) > 1 else kwargs.get("response"))
        return out

    def _keep(self, pipe: Any, replies: Any) -> None:
        try:
            _keep_replies(pipe, replies)
        except Exception:
            self.commands.note_error()

    def strategy_first_error(
        self, wrapped: Callable[..., Any], instance: Any, args: Args, kwargs: Kwargs
    ) -> Any:
        """Wrap a cluster ``TransactionStrategy._raise_first_error`` (sync, or async returning a
        coroutine): keep the EXEC replies on the cluster pipeline, as ``first_error`` does."""
        try:
            _keep_replies(getattr(instance, "_pipe", None), args[0] if args else kwargs.get("responses"))
        except Exception:
            self.commands.note_error()
        return wrapped(*args, **kwargs)


class Wrappers:
    """The wrapt wrappers of every redis-py entry point, made from the call core and these hooks."""

    def __init__(
        self, handoff: Handoff, is_secret: KeyMatcher, *, closed: bool = False, unknown_commands: bool = True
    ) -> None:
        core = CallCore(handoff, closed=closed)
        unknown = UNKNOWN_COMMAND if unknown_commands else None
        commands = Commands(is_secret, unknown, core.note_error)
        strategy = _StrategyCommands(is_secret, unknown, core.note_error)
        pipelines = Pipelines(commands)
        self.classified = pipelines.classified  # (name, key) -> how a command is classified: names and keys
        self.execute_command: Wrapper = single_wrapper(core, commands, pipelines.classified)
        self.async_execute_command: Wrapper = single_wrapper(core, commands, pipelines.classified,
                                                                    is_async=True)
        self.strategy_execute_command: Wrapper = core.wrapper(strategy)
        self.async_strategy_execute_command: Wrapper = core.wrapper(strategy, is_async=True)
        self.pipeline_execute: Wrapper = pipeline_wrapper(core, pipelines)
        self.async_pipeline_execute: Wrapper = pipeline_wrapper(core, pipelines, is_async=True)
        self.pipeline_first_error: Wrapper = pipelines.first_error
        self.strategy_first_error: Wrapper = pipelines.strategy_first_error


_REPLIES = "_secret_audit_replies"


def _keep_replies(pipe: Any, replies: Any) -> None:
    """Inside our execute() only: keep the reply list that redis-py drops once it raises the first error."""
    state = getattr(pipe, "__dict__", None)
    if isinstance(replies, list) and isinstance(state, dict) and _REPLIES in state:
        state[_REPLIES] = list(replies)


def _take_replies(instance: Any) -> list[Any] | None:
    """Pop the replies ``first_error`` kept on the pipeline, if any."""
    try:
        replies = instance.__dict__.pop(_REPLIES, None)
    except Exception:
        return None
    return replies if isinstance(replies, list) else None


def _cluster_results(instance: Any, stack: list[Any], error: BaseException) -> list[Any] | None:
    """A non-transactional cluster pipeline that raised its first error had read every reply.

    redis-py keeps each reply on its PipelineCommand (``result``), in the objects our snapshot
    holds; its "Command # N ... of pipeline caused error" note is only added once all are in.
    """
    try:
        strategy = getattr(instance, "_execution_strategy", None)
        if type(strategy).__name__ != "PipelineStrategy":
            return None
        if not str(error).startswith("Command # "):
            return None
        if not all(hasattr(cmd, "result") and hasattr(cmd, "position") for cmd in stack):
            return None
        return [cmd.result for cmd in stack]
    except Exception:
        return None
