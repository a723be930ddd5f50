"""A redis-py pipeline's commands as Items, at a dict lookup per command, already merged.

A command whose one key sits at a fixed position (GET, SET, HGET, INCR...) is classified by its
name and that key alone: the first time, through the command table and the key matcher; then
from a cache keyed by (name, key), which holds only names and keys, never a value. Its Item per
result word is made once and counted: 100 GETs of one key are one Item with a count of 100, the
``audit.count`` the record builder gives them. Any other command (several keys, a subcommand, a
key that is not plain text, a failed command) takes the single-command path, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from secret_audit._internal import redis_replies as rr
from secret_audit._internal.event import Item
from secret_audit._internal.redis_commands import Command, lookup
from secret_audit._internal.redis_keys import SINGLE

__all__ = [
    "GENERAL", "SKIP", "PipelineItems", "args_of", "command_stack", "count_native", "count_python",
    "key_name", "make_item", "verb",
]

_PLAIN_KEYS = (str, bytes)
_CACHE_LIMIT = 4096  # (name, key) pairs; a pipeline over many distinct keys starts afresh
_SKIP, _GENERAL = 0, 1  # cached: no secret key; not cacheable (the single-command path)
SKIP, GENERAL = _SKIP, _GENERAL
_NONE: Any = object()  # no command seen yet
_EMPTIABLE = (dict, list, set, tuple)  # an empty one of these is no data, as ``rr.found`` says
# A cached command: its result function, its keys (as the result function expects them), and its
# Items by result word, made once.
_Entry = tuple[Callable[..., Sequence[Any]], list[tuple[Any, str]], dict[Any, Item], str | bytes, str, str]

Describe = Callable[[Any, Sequence[Any], Any], Any]
Expand = Callable[[Sequence[Any], Any, Any, BaseException | None], tuple[Item, ...]]


def key_name(key: Any) -> str | bytes:
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


def verb(name: Any) -> str:
    """A command's name as a record's action: upper-case text, whatever type redis-py was given."""
    text = name if isinstance(name, str) else name.decode("latin-1") if isinstance(name, bytes) else str(name)
    return text.upper()


class PipelineItems:
    """One client's pipelines: their commands classified from a (name, key) cache, their Items merged."""

    def __init__(
        self, is_secret: Callable[[Any], bool], unknown: Command | None, describe: Describe, items: Expand
    ) -> None:
        self.is_secret = is_secret
        self.unknown = unknown
        self.describe = describe  # the single-command path: ``Commands.describe`` and ``Commands.items``
        self.items = items
        self._cache: dict[tuple[Any, Any], _Entry | int] = {}  # names and keys only, never a value
        self._names: dict[Any, tuple[Command, str] | int] = {}  # a command's kind, by its name
        self.cached = self._cache.get  # a single call's entry, if known (``redis_single``)
        self.entry = self._entry
        # a cached Item repeated n times, made once (by the Item's id and n): one object, as a single call's
        # Item is, so that the hand-off keeps its shape id by identity (``agent_short``)
        self._merged: dict[tuple[int, int], tuple[Item, Item]] = {}

    def touches_secret(self, stack: Sequence[Any]) -> bool:
        """Whether any queued command names a secret key (fail-closed: only such a pipeline waits)."""
        for cmd in stack:
            args = cmd[0] if type(cmd) is tuple else args_of(cmd)
            entry = self._entry(args[0], args[1]) if len(args) > 1 else _GENERAL
            if entry is _SKIP:
                continue
            if entry is not _GENERAL or self.describe(None, args, None):
                return True
        return False

    def expand(self, stack: Sequence[Any], replies: Any, error: BaseException | None) -> tuple[Item, ...]:
        """The Items of a pipeline's commands, each distinct one once with its count, in order."""
        if error is not None:  # nothing to tell the commands apart: each takes the single-command path
            return self._general(stack, [None] * len(stack), error)
        n = len(stack)
        fits = type(replies) is list and len(replies) == n
        got = replies if fits else [_reply_at(replies, i) for i in range(n)]
        commands = stack if type(stack) is list else list(stack)
        groups = _count(commands, got, self._entry, self._one, make_item, rr.found, rr.none, _EMPTIABLE,
                        args_of)
        return tuple(item if count == 1 else self._times(item, count) for item, count in groups)

    def _times(self, item: Item, count: int) -> Item:
        """``item`` done ``count`` times, one object for each pair while the cache holds them."""
        merged = self._merged
        got = merged.get((id(item), count))
        if got is not None and got[0] is item:
            return got[1]
        out = item._replace(times=count)
        if item.error is None:  # an error's is never kept: an exception holds its traceback's frames
            if len(merged) >= _CACHE_LIMIT:
                merged.clear()
            merged[id(item), count] = (item, out)
        return out

    def _entry(self, name: Any, key: Any) -> _Entry | int:
        """A command's cache entry by its name and key, learnt the first time they are seen."""
        cache = self._cache
        try:
            entry = cache.get((name, key))
        except (TypeError, ValueError):  # an unhashable key (bytearray; a writable memoryview: ValueError)
            return _GENERAL
        if entry is not None:
            return entry
        if type(key) not in _PLAIN_KEYS:
            return _GENERAL  # 1 and 1.0 are equal dict keys, but name different keys: never cached
        kind = self._names.get(name) if type(name) in _PLAIN_KEYS else _GENERAL
        if kind is None:
            kind = self._kind(name)
        if kind is _GENERAL:  # its first argument may be no key (ECHO's): nothing of it is kept
            return _GENERAL
        spec, op = kind  # type: ignore[misc]
        try:
            secret = self.is_secret(key)
        except Exception:
            return _GENERAL
        entry = (spec.result, [(key, op)], {}, key_name(key), op, verb(name)) if secret else _SKIP
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[name, key] = entry
        return entry

    def _kind(self, name: str | bytes) -> tuple[Command, str] | int:
        """Whether a command's one key is its first argument (and how it touches it); kept for the
        table's own names only, so that no text an app sends in a command's place is kept."""
        spec = lookup(name)
        known = spec is not None
        spec = spec or self.unknown
        where = SINGLE.get(spec.keys) if spec is not None and not spec.kind else None
        kind: tuple[Command, str] | int = _GENERAL
        if spec is not None and where is not None and where[0] == 1:
            kind = (spec, where[1])
        if known:
            if len(self._names) >= _CACHE_LIMIT:
                self._names.clear()
            self._names[name] = kind
        return kind

    def _one(self, args: Sequence[Any], reply: Any, error: BaseException | None = None) -> tuple[Item, ...]:
        """One command through the single-command path (a reply that is an exception is its error)."""
        found = self.describe(None, args, None)
        if found is None:
            return ()
        if error is None and isinstance(reply, BaseException):
            error, reply = reply, None
        return self.items(args, found, reply, error)

    def _general(self, stack: Sequence[Any], replies: list[Any], error: BaseException) -> tuple[Item, ...]:
        out: list[Item] = []
        for cmd, reply in zip(stack, replies, strict=True):
            out.extend(self._one(cmd[0] if type(cmd) is tuple else args_of(cmd), reply, error))
        return tuple(out)


def make_item(entry: _Entry, word: Any) -> Item:
    """A cached command's Item for one result word, made once."""
    item = entry[2][word] = Item(entry[3], entry[4], entry[5], word)
    return item


def count_python(
    stack: list[Any],
    got: list[Any],
    entry_of: Callable[[Any, Any], _Entry | int],
    general: Callable[[Sequence[Any], Any], tuple[Item, ...]],
    make: Callable[[_Entry, Any], Item],
    found: Any,
    none: Any,
    emptiable: tuple[type, ...],
    args_of: Callable[[Any], Sequence[Any]],
    /,
) -> list[list[Any]]:
    """[Item, count] per distinct Item, in order: the loop ``_pipeline_native.count`` runs in C, its twin."""
    groups: dict[int, list[Any]] = {}  # by the Item's id: a cached Item repeats as the same object
    entry: _Entry | int = _GENERAL
    group: list[Any] = []  # the last cached command's group, which a run of the same one adds to
    last_name = last_key = last_word = _NONE
    for cmd, reply in zip(stack, got, strict=True):
        args = cmd[0] if type(cmd) is tuple and cmd else args_of(cmd)
        if len(args) < 2:
            entry = _GENERAL
            last_name = _NONE
        elif args[0] is not last_name or args[1] is not last_key:  # else: the same command again
            last_name, last_key, last_word = args[0], args[1], _NONE
            entry = entry_of(last_name, last_key)
        if entry is _SKIP:
            continue
        if entry is _GENERAL or isinstance(reply, BaseException):
            for one in general(args, reply):
                groups[id(one)] = [one, 1]
            continue
        result, keys, made = entry[0], entry[1], entry[2]  # type: ignore[index]
        word: Any
        if result is found:  # GET and its kind, without the call: held to rr.found by a test
            empty = reply is None or (isinstance(reply, emptiable) and not reply)
            word = "not_found" if empty else "found"
        elif result is none:
            word = None
        else:
            try:
                said = result(args, reply, keys)
                word = said[0] if said else None
            except Exception:
                word = None
        if word is last_word:
            group[1] += 1
            continue
        last_word = word
        item = made.get(word)
        if item is None:
            item = make(entry, word)  # type: ignore[arg-type]
        group = groups.get(id(item)) or []
        if group:
            group[1] += 1
        else:
            group = groups[id(item)] = [item, 1]
    return list(groups.values())


try:  # the same loop in C, when the extension is built (setup.py: optional)
    from secret_audit._internal import _pipeline_native
except ImportError:  # pragma: no cover - no C compiler where this was installed
    _pipeline_native = None  # type: ignore[assignment]

count_native = _pipeline_native.count if _pipeline_native is not None else None
_count = count_native if count_native is not None else count_python


def _reply_at(replies: Any, pos: int) -> Any:
    try:
        return replies[pos]
    except (IndexError, TypeError, KeyError):
        return None


def args_of(cmd: Any) -> Sequence[Any]:
    """A queued command's arguments: a cluster pipeline queues objects, the others tuples."""
    args: Sequence[Any] = cmd.args if hasattr(cmd, "args") else cmd[0]
    return args


def command_stack(instance: Any) -> list[Any]:
    """A copy of the commands a pipeline queued, before execute() resets them."""
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
