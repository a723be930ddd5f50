"""The redis-py calls' hooks into the call core: which commands touch secrets, and what their replies say.

Single commands are classified on the caller's path with one table lookup and a key match; their
Items are made on the worker from what the caller kept. A pipeline's command stack is copied on
the caller's path and classified on the worker. The Redis command tables (``redis_commands``,
``redis_keys``, ``redis_replies``, ``redis_keyspecs``) say what each command does.
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
                found = (found[0], [(_key_name(k), op) for k, op in keys], found[2])
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
        action = args[0]
        if not isinstance(action, str):
            action = action.decode("latin-1") if isinstance(action, bytes) else str(action)
        action = action.upper()
        if spec.kind:
            if spec.kind & SUBCOMMAND and len(args) > 1:
                action = f"{action} {upper(args[1])}"
            if spec.kind & LISTS:
                is_secret = self.is_secret
                return tuple(
                    Item(name=_key_name(name), operation=META, action=action, result="found")
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
                name=_key_name(keys[i][0]),
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
    """Hooks for ``Pipeline.execute``: the stack is copied now and classified on the worker."""

    def __init__(self, commands: Commands) -> None:
        self.commands = commands

    def describe(self, instance: Any, args: Args, kwargs: Kwargs) -> list[Any] | None:
        """Copy the queued commands before execute() resets the stack; None when there are none."""
        try:
            return list(_command_stack(instance)) or None
        except Exception:
            return None

    def waits(self, plan: list[Any]) -> bool:
        """Fail-closed: only a pipeline that touches at least one secret key waits."""
        describe = self.commands.describe
        return any(describe(None, _args_of(c), None) for c in plan)

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
        """After execute(): per-command outcomes when redis-py had every reply, else all failed."""
        if error is not None:
            kept = _take_replies(instance)
            if kept is None:
                kept = _cluster_results(instance, plan, error)
            if kept is not None and len(kept) == len(plan):
                replies, error = kept, None
        copied = list(replies) if isinstance(replies, list) else replies
        pending = (plan, copied, error)
        return Access(SOURCE, start, end, ctx, instance, None, "success", None, self._expand, pending)

    def _expand(self, pending: Any) -> tuple[Item, ...]:
        """Classify a pipeline's commands on the worker, off the caller's path."""
        stack, replies, error = pending
        describe, items = self.commands.describe, self.commands.items
        out: list[Item] = []
        for pos, cmd in enumerate(stack):
            args = _args_of(cmd)
            found = describe(None, args, None)
            if found is None:
                continue
            reply: Any = None
            err = error
            if err is None:
                try:
                    reply = replies[pos]
                except (IndexError, TypeError, KeyError):
                    reply = None
                if isinstance(reply, BaseException):
                    err, reply = reply, None
            out.extend(items(args, found, reply, err))
        return tuple(out)

    def first_error(self, wrapped: Callable[..., Any], instance: Any, args: Args, kwargs: Kwargs) -> Any:
        """Wrap ``Pipeline.raise_first_error``: keep the reply list that execute() then drops.

        The server ran every command of a pipeline (and of an EXEC'd transaction) even when one
        failed; the exception only names the first failure. The replies say what happened to each.
        """
        try:
            _keep_replies(instance, args[1] if len(args) > 1 else kwargs.get("response"))
        except Exception:
            self.commands.note_error()
        return wrapped(*args, **kwargs)

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
        self.execute_command: Wrapper = core.wrapper(commands)
        self.async_execute_command: Wrapper = core.wrapper(commands, is_async=True)
        self.strategy_execute_command: Wrapper = core.wrapper(strategy)
        self.async_strategy_execute_command: Wrapper = core.wrapper(strategy, is_async=True)
        self.pipeline_execute: Wrapper = core.wrapper(pipelines, pipelines.waits, pipelines.begin)
        self.async_pipeline_execute: Wrapper = core.wrapper(pipelines, pipelines.waits, pipelines.begin,
                                                             is_async=True)
        self.pipeline_first_error: Wrapper = pipelines.first_error
        self.strategy_first_error: Wrapper = pipelines.strategy_first_error


def _key_name(key: Any) -> str | bytes:
    """A key as the record names it: redis-py also takes memoryview, int and float keys."""
    if isinstance(key, str):
        return key if type(key) is str else str(key)
    if isinstance(key, bytes):
        return key if type(key) is bytes else bytes(key)
    if isinstance(key, (memoryview, bytearray)):
        return bytes(key)
    if isinstance(key, float):
        return repr(key)  # what redis-py sends
    return str(key)


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


def _args_of(cmd: Any) -> Sequence[Any]:
    args: Sequence[Any] = cmd.args if hasattr(cmd, "args") else cmd[0]
    return args


def _command_stack(instance: Any) -> Sequence[Any]:
    strategy = getattr(instance, "_execution_strategy", None)
    if strategy is not None:
        queue = getattr(strategy, "command_queue", None)
        if queue is None:
            queue = getattr(strategy, "_command_queue", None)
        if queue is not None:
            return list(queue)
    stack = getattr(instance, "command_stack", None)
    if stack is None:
        stack = getattr(instance, "_command_stack", [])
    return list(stack)
