"""The redis-py wrappers: classify, time and enqueue; the rest happens on the audit worker."""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Sequence
from time import time_ns
from typing import Any

from opentelemetry.context import get_current

from secret_audit._internal import failclosed
from secret_audit._internal.errors import error_type, safe_prefix
from secret_audit._internal.event import Access, Item
from secret_audit._internal.matcher import KeyMatcher
from secret_audit._internal.pipeline import AuditPipeline
from secret_audit._internal.redis_commands import LISTS, SUBCOMMAND, UNKNOWN_COMMAND, Command, lookup
from secret_audit._internal.redis_keys import META, upper

__all__ = ["RedisSource", "Wrappers"]

# Error codes Redis and Valkey send. Only these are ever quoted: a script can reply with any text
# (``redis.error_reply(value)``), so an upper-case first word is not proof that it is a code.
_KNOWN_CODES = frozenset(
    {
        "ERR", "WRONGTYPE", "NOAUTH", "WRONGPASS", "NOPERM", "NOSCRIPT", "BUSY", "BUSYKEY",
        "MOVED", "ASK", "TRYAGAIN", "CROSSSLOT", "CLUSTERDOWN", "LOADING", "READONLY",
        "MASTERDOWN", "EXECABORT", "NOREPLICAS", "OOM", "MISCONF", "NOPROTO", "NOGROUP",
        "BUSYGROUP", "UNBLOCKED", "NOTBUSY", "UNKILLABLE", "NOTREADY",
    }
)
_DENIED_CODES = frozenset({"NOAUTH", "WRONGPASS", "NOPERM"})
_DENIED_CLASSES = frozenset({"AuthenticationError", "AuthorizationError", "NoPermissionError"})
# Exception classes whose text is whatever the server (or a script) replied: never quoted as is.
_SERVER_TEXT_CLASSES = frozenset({"ResponseError", "AuthenticationError"})
# redis-py prefixes pipeline errors with the failing command, arguments (values!) included.
_PIPELINE_NOTE = re.compile(r"^Command # \d+ \(.*?\) of pipeline caused error: ", re.DOTALL)
# Server messages whose leading words are known to carry no data.
_KNOWN_MESSAGES = (
    "unknown command",
    "unknown subcommand",
    "wrong number of arguments",
    "syntax error",
    "value is not an integer or out of range",
    "value is not a valid float",
    "no such key",
    "Operation against a key holding the wrong kind of value",
    "Error running script",
    "user_script",
    "Number of keys can't be greater than number of args",
    "Authentication required",
    "invalid username-password pair",
    "this user has no permissions",
    "increment or decrement would overflow",
    "DUMP payload version or checksum are wrong",
    "Target key name is busy",
    "Invalid TTL value",
)


def _tls(connection_class: Any) -> bool:
    """True for redis-py's TLS connection classes (sync and asyncio), and subclasses of them."""
    return isinstance(connection_class, type) and any(
        c.__name__ == "SSLConnection" for c in connection_class.__mro__
    )


class RedisSource:
    """Describes redis-py clients to the audit worker."""

    name = "redis"

    def __init__(self) -> None:
        # A client's address and user name are read once: by id, checked against a weak reference
        # so that a new client reusing a collected one's id is described afresh.
        self._memo: dict[int, tuple[weakref.ref[Any], str | None, str | None]] = {}

    def _describe(self, target: Any) -> tuple[str | None, str | None]:
        entry = self._memo.get(id(target))
        if entry is not None and entry[0]() is target:
            return entry[1], entry[2]
        resource, principal = self._resource(target), self._principal(target)
        try:
            ref = weakref.ref(target)
        except TypeError:
            return resource, principal
        if len(self._memo) >= 256:
            self._memo.clear()
        self._memo[id(target)] = (ref, resource, principal)
        return resource, principal

    def resource(self, target: Any) -> str | None:
        """Build ``redis://host:port/db`` from the client's connection settings (never its password)."""
        return self._describe(target)[0]

    def principal(self, target: Any) -> str | None:
        """The Redis ACL user name the client logs in as, if it names one."""
        return self._describe(target)[1]

    def _resource(self, target: Any) -> str | None:
        pool = getattr(target, "connection_pool", None)
        kwargs = getattr(pool, "connection_kwargs", None)
        if isinstance(kwargs, dict):
            db = kwargs.get("db", 0)
            service = getattr(pool, "service_name", None)
            if isinstance(service, str):  # Sentinel: the master moves, the service name stays
                return f"redis+sentinel://{service}/{db}"
            if kwargs.get("path"):
                return f"redis+unix://{kwargs['path']}?db={db}"
            scheme = "rediss" if _tls(getattr(pool, "connection_class", None)) else "redis"
            return f"{scheme}://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"
        nodes = getattr(target, "nodes_manager", None)
        node = getattr(nodes, "default_node", None) or (
            next(iter(getattr(nodes, "startup_nodes", {}).values()), None) if nodes else None
        )
        if node is None:
            node = getattr(target, "node", None)
        host, port = getattr(node, "host", None), getattr(node, "port", None)
        if host is not None:
            settings = getattr(nodes, "connection_kwargs", None) or getattr(target, "connection_kwargs", None)
            tls = isinstance(settings, dict) and (
                bool(settings.get("ssl")) or _tls(settings.get("connection_class"))
            )
            return f"{'rediss' if tls else 'redis'}://{host}:{port}/0"
        return None

    def _principal(self, target: Any) -> str | None:
        pool = getattr(target, "connection_pool", None)
        kwargs = getattr(pool, "connection_kwargs", None)
        if not isinstance(kwargs, dict):  # cluster clients: sync keeps them on the nodes manager
            nodes = getattr(target, "nodes_manager", None)
            kwargs = getattr(nodes, "connection_kwargs", None)
        if not isinstance(kwargs, dict):  # ... and async on the client itself
            kwargs = getattr(target, "connection_kwargs", None)
        user = kwargs.get("username") if isinstance(kwargs, dict) else None
        return f"redis:{user}" if isinstance(user, str) and user else None

    def describe_error(self, error: BaseException) -> tuple[str, str, str]:
        """Map redis-py exceptions to an outcome, never quoting data from the message.

        The text kept is built only from known error codes and known server phrases; for
        exceptions that carry server text nothing else is kept, because a script decides it.
        """
        etype = error_type(error)
        cls = type(error)
        outcome = "denied" if cls.__name__ in _DENIED_CLASSES else "error"
        if not cls.__module__.startswith("redis") or not isinstance(error, Exception):
            return outcome, etype, ""
        text = str(error)
        for _ in range(3):  # a transaction error can be annotated twice
            note = _PIPELINE_NOTE.match(text)
            if note is None:
                break
            text = text[note.end() :]
            if text[:2] in ("('", '("'):  # redis.asyncio.cluster quotes the args tuple
                text = text[2:]
        code = getattr(error, "status_code", None)  # redis-py strips the codes it maps to classes
        if not (isinstance(code, str) and code in _KNOWN_CODES):
            code = None
        first, _, rest = text.partition(" ")
        if first in _KNOWN_CODES:
            code, text = first, rest
        if code in _DENIED_CODES:
            outcome = "denied"
        known = next((m for m in _KNOWN_MESSAGES if text.startswith(m)), None)
        if known is not None:
            # redis-py drops the generic ERR code itself; keep the phrase alone, as it does
            return outcome, etype, known if code in (None, "ERR") else f"{code} {known}"
        if code is not None:
            return outcome, etype, code
        if any(c.__name__ in _SERVER_TEXT_CLASSES for c in cls.__mro__):
            return outcome, etype, ""
        return outcome, etype, safe_prefix(text)


SOURCE = RedisSource()

Submit = Callable[[Access], None]
_PLAIN_KEYS = (str, bytes)
# Building the NamedTuple from a full field tuple skips its Python-level __new__ (hot path).
_new_tuple = tuple.__new__
Found = tuple[Command, list[tuple[Any, str]], list[int]]


class Wrappers:
    """Factories for the wrapt wrappers; ``submit`` and ``is_secret`` are bound at instrument time."""

    def __init__(
        self,
        submit: Submit,
        is_secret: KeyMatcher,
        *,
        closed_pipeline: AuditPipeline | None = None,
        unknown_commands: bool = True,
    ) -> None:
        self.submit = submit
        self.is_secret = is_secret
        # Set only in fail-closed mode: the pipeline whose durability each secret call waits for.
        self.closed = closed_pipeline
        # How a command missing from the table is classified (its first argument, as "unknown").
        self.unknown = UNKNOWN_COMMAND if unknown_commands else None

    # ---- shared pieces ---------------------------------------------------------------------

    def _secret_keys(self, args: Sequence[Any]) -> Found | None:
        """Return the command spec, its keys and the positions of the secret ones, or None."""
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
            _note_internal_error()
            return None
        if hits:
            return (spec, keys, hits)
        if keys or not spec.kind & LISTS:
            return None
        return (spec, keys, hits)  # KEYS, SCAN...: the reply tells which secrets they name

    @staticmethod
    def _results(
        args: Sequence[Any], found: Found, reply: Any, error: BaseException | None
    ) -> Sequence[Any]:
        """What the reply tells about each key (found, created, ...); read now, the reply is not kept."""
        if error is not None:
            return ()
        spec, keys, _ = found
        try:
            return spec.result(args, reply, keys)
        except Exception:
            return ()

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

    def _items(
        self, args: Sequence[Any], found: Found, reply: Any, error: BaseException | None
    ) -> tuple[Item, ...]:
        return self._make_items(args, found, self._results(args, found, reply, error), error)

    def _expand_single(self, pending: Any) -> tuple[Item, ...]:
        """Build a single command's Items on the worker, from what the caller's path kept."""
        args, found, results, error = pending
        return self._make_items(args, found, results, error)

    def _access(
        self,
        target: Any,
        args: Sequence[Any],
        found: Found,
        start: int,
        end: int,
        ctx: Any,
        reply: Any,
        error: BaseException | None,
    ) -> Access:
        items = self._items(args, found, reply, error)
        return Access(SOURCE, start, end, ctx, target, items, "success", error)

    def _record(
        self,
        target: Any,
        args: Sequence[Any],
        found: Found,
        start: int,
        end: int,
        ctx: Any,
        reply: Any,
        error: BaseException | None,
    ) -> None:
        """Enqueue the access with only what the worker needs; failures are counted, never raised."""
        try:
            keys = found[1]
            for i in found[2]:
                if type(keys[i][0]) not in _PLAIN_KEYS:
                    # A memoryview or bytearray key may be reused by the caller before the worker
                    # reads it: keep the name it had at call time.
                    found = (found[0], [(_key_name(k), op) for k, op in keys], found[2])
                    break
            pending = (args, found, self._results(args, found, reply, error), error)
            expand = self._expand_single
            fields = (SOURCE, start, end, ctx, target, None, "success", error, expand, pending, None)
            self.submit(_new_tuple(Access, fields))
        except Exception:
            _note_internal_error()

    # ---- single commands -------------------------------------------------------------------

    def execute_command(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Any
    ) -> Any:
        """Wrap sync ``execute_command``: only calls on secret keys pay more than one lookup."""
        found = self._secret_keys(args)
        if found is None:
            return wrapped(*args, **kwargs)
        closed = self.closed
        if closed is not None:
            failclosed.before_call(closed)
        ctx = get_current()
        start = time_ns()
        try:
            reply = wrapped(*args, **kwargs)
        except BaseException as exc:
            end = time_ns()
            self._record(instance, args, found, start, end, ctx, None, exc)
            raise
        end = time_ns()
        if closed is not None:
            failclosed.durable(closed, self._access(instance, args, found, start, end, ctx, reply, None))
            return reply
        self._record(instance, args, found, start, end, ctx, reply, None)
        return reply

    def async_execute_command(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Any
    ) -> Any:
        """Wrap async ``execute_command``, timing the awaited call rather than coroutine creation."""
        found = self._secret_keys(args)
        if found is None:
            return wrapped(*args, **kwargs)
        closed = self.closed

        async def run() -> Any:
            if closed is not None:
                failclosed.before_call(closed)
            ctx = get_current()
            start = time_ns()
            try:
                reply = await wrapped(*args, **kwargs)
            except BaseException as exc:
                end = time_ns()
                self._record(instance, args, found, start, end, ctx, None, exc)
                raise
            end = time_ns()
            if closed is not None:
                access = self._access(instance, args, found, start, end, ctx, reply, None)
                await failclosed.durable_async(closed, access)
                return reply
            self._record(instance, args, found, start, end, ctx, reply, None)
            return reply

        return run()

    def strategy_execute_command(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Any
    ) -> Any:
        """Wrap a cluster transaction's immediate commands (reads between WATCH and MULTI)."""
        return self.execute_command(wrapped, getattr(instance, "_pipe", instance), args, kwargs)

    def async_strategy_execute_command(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Any
    ) -> Any:
        """The async form of ``strategy_execute_command``."""
        return self.async_execute_command(wrapped, getattr(instance, "_pipe", instance), args, kwargs)

    # ---- pipelines -------------------------------------------------------------------------

    def _expand_pipeline(self, pending: Any) -> tuple[Item, ...]:
        """Classify a pipeline's commands on the worker, off the caller's path."""
        stack, replies, error = pending
        items: list[Item] = []
        for pos, cmd in enumerate(stack):
            args = cmd.args if hasattr(cmd, "args") else cmd[0]
            found = self._secret_keys(args)
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
            items.extend(self._items(args, found, reply, err))
        return tuple(items)

    def _pipeline_access(
        self, instance: Any, stack: list[Any], start: int, ctx: Any, replies: Any, error: BaseException | None
    ) -> Access:
        end = time_ns()
        copied = list(replies) if isinstance(replies, list) else replies
        pending = (stack, copied, error)
        expand = self._expand_pipeline
        return Access(SOURCE, start, end, ctx, instance, None, "success", None, expand, pending)

    def _pipeline_done(
        self, instance: Any, stack: list[Any], start: int, ctx: Any, replies: Any, error: BaseException | None
    ) -> None:
        try:
            self.submit(self._pipeline_access(instance, stack, start, ctx, replies, error))
        except Exception:  # auditing must never break the caller (fail-open)
            _note_internal_error()

    def _closed_for(self, plan: list[Any]) -> AuditPipeline | None:
        """The fail-closed pipeline, when this pipeline touches at least one secret key."""
        closed = self.closed
        if closed is None or not any(self._secret_keys(_args_of(c)) for c in plan):
            return None
        return closed

    def _pipeline_failed(
        self, instance: Any, stack: list[Any], start: int, ctx: Any, error: BaseException
    ) -> None:
        """execute() raised: per-command outcomes when redis-py had all the replies, else all failed."""
        replies = _take_replies(instance)
        if replies is None:
            replies = _cluster_results(instance, stack, error)
        if replies is not None and len(replies) == len(stack):
            self._pipeline_done(instance, stack, start, ctx, replies, None)
        else:
            self._pipeline_done(instance, stack, start, ctx, None, error)

    def pipeline_first_error(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Any
    ) -> Any:
        """Wrap ``Pipeline.raise_first_error``: keep the reply list that execute() then drops.

        The server ran every command of a pipeline (and of an EXEC'd transaction) even when one
        failed; the exception only names the first failure. The replies say what happened to each.
        """
        try:
            _keep_replies(instance, args[1] if len(args) > 1 else kwargs.get("response"))
        except Exception:
            _note_internal_error()
        return wrapped(*args, **kwargs)

    def strategy_first_error(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Any
    ) -> Any:
        """Wrap a cluster ``TransactionStrategy._raise_first_error`` (sync, or async returning a
        coroutine): keep the EXEC replies on the cluster pipeline, as ``pipeline_first_error`` does."""
        try:
            _keep_replies(getattr(instance, "_pipe", None), args[0] if args else kwargs.get("responses"))
        except Exception:
            _note_internal_error()
        return wrapped(*args, **kwargs)

    def pipeline_execute(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Any
    ) -> Any:
        """Wrap sync ``Pipeline.execute``: snapshot the stack; the worker classifies it later."""
        plan = _snapshot(instance)
        if not plan:
            return wrapped(*args, **kwargs)
        closed = self._closed_for(plan)
        if closed is not None:
            failclosed.before_call(closed)
        ctx = get_current()
        _arm_replies(instance)
        start = time_ns()
        try:
            replies = wrapped(*args, **kwargs)
        except BaseException as exc:
            self._pipeline_failed(instance, plan, start, ctx, exc)
            raise
        if closed is not None:
            failclosed.durable(closed, self._pipeline_access(instance, plan, start, ctx, replies, None))
            return replies
        self._pipeline_done(instance, plan, start, ctx, replies, None)
        return replies

    def async_pipeline_execute(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Any
    ) -> Any:
        """Wrap async ``Pipeline.execute``."""
        plan = _snapshot(instance)
        if not plan:
            return wrapped(*args, **kwargs)
        closed = self._closed_for(plan)

        async def run() -> Any:
            if closed is not None:
                failclosed.before_call(closed)
            ctx = get_current()
            _arm_replies(instance)
            start = time_ns()
            try:
                replies = await wrapped(*args, **kwargs)
            except BaseException as exc:
                self._pipeline_failed(instance, plan, start, ctx, exc)
                raise
            if closed is not None:
                access = self._pipeline_access(instance, plan, start, ctx, replies, None)
                await failclosed.durable_async(closed, access)
                return replies
            self._pipeline_done(instance, plan, start, ctx, replies, None)
            return replies

        return run()


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


def _arm_replies(instance: Any) -> None:
    """Let ``pipeline_first_error`` keep the replies of the execute() about to run (no stale ones)."""
    try:
        instance.__dict__[_REPLIES] = None
    except Exception:
        _note_internal_error()


def _take_replies(instance: Any) -> list[Any] | None:
    """Pop the replies ``pipeline_first_error`` kept on the pipeline, if any."""
    try:
        replies = instance.__dict__.pop(_REPLIES, None)
    except Exception:
        return None
    return replies if isinstance(replies, list) else None


def _args_of(cmd: Any) -> Sequence[Any]:
    args: Sequence[Any] = cmd.args if hasattr(cmd, "args") else cmd[0]
    return args


def _snapshot(instance: Any) -> list[Any]:
    """Copy the queued commands before execute() resets the stack; empty on any surprise."""
    try:
        return list(_command_stack(instance))
    except Exception:
        return []


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


_internal_errors = [0]


def _note_internal_error() -> None:
    _internal_errors[0] += 1
