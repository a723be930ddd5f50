"""Where a Redis command's keys are and how it touches them, from the server's key specifications.

The rules follow the server's own (``getKeysUsingKeySpecs`` in Redis and Valkey), but leniently:
a call with too few arguments yields the keys that are there, so that a failing call on a secret
key is still audited as an error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "DELETE", "META", "READ", "UNKNOWN", "WRITE",
    "SINGLE", "KeyFn", "at", "compile_specs", "describe_specs", "operation", "upper",
]

READ, WRITE, DELETE, META, UNKNOWN = "read", "write", "delete", "metadata", "unknown"

Args = Sequence[Any]
KeyFn = Callable[[Args], list[tuple[Any, str]]]
Spec = tuple[tuple[Any, ...], tuple[Any, ...], tuple[str, ...], str]


def upper(token: Any) -> str:
    """An argument as upper-case text, for comparing with option words; "" for non-text."""
    if isinstance(token, bytes):
        return token.decode("latin-1").upper()
    return token.upper() if isinstance(token, str) else ""


def operation(flags: Sequence[str]) -> str:
    """The audit operation a key spec's flags mean.

    RM removes the key; ``access`` returns its data, which makes a pop a read (the value leaves)
    while an access that also updates or inserts (INCR, SETBIT, GETSET) is a write; RO without
    ``access`` reads only metadata (EXISTS, TYPE, LLEN); a spec that only deletes data is a delete.
    """
    flag = set(flags)
    if "RM" in flag:
        return DELETE
    if "access" in flag:
        return WRITE if flag & {"update", "insert"} and "delete" not in flag else READ
    if "RO" in flag:
        return META
    if "delete" in flag and not flag & {"update", "insert"}:
        return DELETE
    return WRITE


# ---- fast key functions for the common shapes (the hot path runs these) ---------------------

# ``at``'s key functions, with their position and operation: a command whose one key sits at a
# fixed position is classified by its name and that key alone, so a pipeline caches it by them.
SINGLE: dict[KeyFn, tuple[int, str]] = {}


def at(index: int, op: str) -> KeyFn:
    """One key at a fixed position (GET, HSET, LPUSH...)."""

    def keys(args: Args) -> list[tuple[Any, str]]:
        return [(args[index], op)] if len(args) > index else []

    SINGLE[keys] = (index, op)
    return keys


def _range(first: int, from_end: int, step: int, op: str) -> KeyFn:
    """Keys from ``first`` to ``len(args) - from_end`` every ``step`` (DEL, MSET, BLPOP...)."""

    def keys(args: Args) -> list[tuple[Any, str]]:
        return [(k, op) for k in args[first : len(args) - from_end + 1 : step]]

    return keys


def _joined(parts: list[KeyFn]) -> KeyFn:
    """Several specs in the server's order (LMOVE source then destination)."""
    if len(parts) == 2:
        one, two = parts

        def keys2(args: Args) -> list[tuple[Any, str]]:
            return one(args) + two(args)

        return keys2

    def keys(args: Args) -> list[tuple[Any, str]]:
        out: list[tuple[Any, str]] = []
        for part in parts:
            out += part(args)
        return out

    return keys


# ---- the general interpreter -------------------------------------------------------------------


def _first(begin: tuple[Any, ...], args: Args, shift: int) -> int | None:
    """begin_search: the index of the first key, or None when the keyword is absent."""
    if begin[0] == "index":
        return int(begin[1]) - shift
    word, start = begin[1], int(begin[2])
    argc = len(args)
    if start > 0:
        positions: Sequence[int] = range(start - shift, argc - 1)
    else:
        positions = range(argc + start, 1 - shift, -1)
    for i in positions:
        if 1 <= i < argc and upper(args[i]) == word:
            return i + 1
    return None


def _spec_keys(begin: tuple[Any, ...], find: tuple[Any, ...], op: str, shift: int) -> KeyFn:
    def keys(args: Args) -> list[tuple[Any, str]]:
        first = _first(begin, args, shift)
        argc = len(args)
        if first is None or first >= argc:
            return []
        if find[0] == "range":
            lastkey, step, limit = int(find[1]), int(find[2]), int(find[3])
            if lastkey >= 0:
                last = first + lastkey
            elif limit:
                last = first + (argc - first) // limit + lastkey
            else:
                last = argc + lastkey
        else:
            numidx, firstkey, step = int(find[1]), int(find[2]), int(find[3])
            try:
                count = int(args[first + numidx])
            except (IndexError, TypeError, ValueError):
                return []
            if count < 0:
                return []
            first += firstkey
            last = first + (count - 1) * max(step, 1)
        return [(args[i], op) for i in range(first, min(last, argc - 1) + 1, max(step, 1))]

    return keys


def compile_specs(specs: Sequence[Spec], ops: Sequence[str] | None = None, *, shift: int = 0) -> KeyFn:
    """Turn a command's key specs into its key function, choosing a fast one for common shapes.

    ``ops`` replaces the operation each spec's flags give (hand-tuned classifications); ``shift``
    is 1 for the joined form redis-py sends for subcommands (``"XINFO STREAM", key``).
    """
    specs = [s for s in specs if "not_key" not in s[2]]
    parts: list[KeyFn] = []
    for i, (begin, find, flags, _) in enumerate(specs):
        op = ops[i] if ops is not None else operation(flags)
        if begin[0] == "unknown" or find[0] == "unknown":
            raise ValueError("a key spec of unknown shape needs a hand-written key function")
        if begin[0] == "index" and find[0] == "range" and not find[3]:
            first, lastkey, step = int(begin[1]) - shift, int(find[1]), int(find[2])
            if lastkey == 0:
                parts.append(at(first, op))
                continue
            if lastkey < 0:
                parts.append(_range(first, -lastkey, step, op))
                continue
        parts.append(_spec_keys(begin, find, op, shift))
    if not parts:
        return no_keys
    return parts[0] if len(parts) == 1 else _joined(parts)


def no_keys(_args: Args) -> list[tuple[Any, str]]:
    return []


def describe_specs(specs: Sequence[Spec], ops: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(where the key is, operation) per spec, for the generated documentation."""
    out = []
    specs = [s for s in specs if "not_key" not in s[2]]
    for i, (begin, find, flags, name) in enumerate(specs):
        op = ops[i] if ops is not None else operation(flags)
        if begin[0] == "keyword":
            many = " …" if find[0] == "range" and find[1] != 0 else ""
            part = {2: " (the first half of the rest)"}.get(find[3], "") if find[0] == "range" else ""
            where = f"{name}{many} after `{begin[1]}`{part}"
        elif find[0] == "keynum":
            where = f"{name}s (counted by `numkeys`)"
        elif find[0] == "range" and (find[1] != 0 or find[3]):
            nth = {2: "2nd", 3: "3rd"}.get(find[2], f"{find[2]}th")
            where = f"{name} …" if find[2] == 1 else f"{name} (every {nth} argument)"
        else:
            where = name
        out.append((where, op))
    return out
