"""What a Redis reply says about each key a command named (found, created, ...), never keeping it.

Each function gets the command's arguments, its reply (after redis-py's response callbacks, so a
set, a tuple, a dict or a bool as often as a list or an int) and the number of keys, and returns
one result per key (None where the reply does not tell). They return only these fixed words: no
part of a reply ever leaves here. ``LABELS`` says in words what each one tells, for the docs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from secret_audit._internal.redis_keys import upper

__all__ = ["LABELS", "ResultFn", "same_name"]

Args = Sequence[Any]
Keys = Sequence[tuple[Any, str]]
ResultFn = Callable[[Args, Any, Keys], Sequence[Any]]
LABELS: dict[ResultFn, str] = {}

_OK = ("OK", b"OK")


def _says(label: str) -> Callable[[ResultFn], ResultFn]:
    def mark(fn: ResultFn) -> ResultFn:
        LABELS[fn] = label
        return fn

    return mark


def _int(reply: Any) -> int | None:
    return int(reply) if isinstance(reply, int) else None


def same_name(a: Any, b: Any) -> bool:
    """Whether two key names are the same, whichever of str and bytes each one is."""
    if isinstance(a, str):
        a = a.encode("utf-8", "surrogateescape")
    if isinstance(b, str):
        b = b.encode("utf-8", "surrogateescape")
    try:
        return bytes(a) == bytes(b)
    except (TypeError, ValueError):
        return False


@_says("")
def none(_args: Args, _reply: Any, keys: Keys) -> Sequence[str | None]:
    n = len(keys)
    return [None] * n


def _empty(reply: Any) -> bool:
    """No data: nil, or an empty collection (Redis deletes empty lists, sets, hashes and zsets)."""
    return reply is None or (isinstance(reply, (dict, list, set, tuple)) and len(reply) == 0)


@_says("`found`, `not_found` when nil or empty")
def found(_args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    n = len(keys)
    return ["not_found" if _empty(reply) else "found"] * n


@_says("`found` (the first key) when the reply is not empty")
def hit(_args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    """Ranges and lookups: an empty reply may still come from an existing key (out of range)."""
    n = len(keys)
    return (["found"] + [None] * (n - 1)) if n and not _empty(reply) else [None] * n


@_says("`found` when any part exists, else `not_found`")
def any_found(args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    """HMGET, GEOPOS, ZMSCORE: a key counts as found when any requested part exists."""
    n = len(keys)
    if isinstance(reply, (list, tuple)):
        return ["found" if any(v is not None and v is not False and v != 0 for v in reply)
                else "not_found"] * n
    return found(args, reply, keys)


@_says("`found` or `not_found` per key")
def each_found(_args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    n = len(keys)
    if isinstance(reply, list) and len(reply) == n:
        return ["not_found" if v is None else "found" for v in reply]
    return [None] * n


@_says("`found` or `not_found`")
def exists(_args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    n = len(keys)
    if n == 1 and isinstance(reply, int):
        return ["found" if reply else "not_found"]
    if isinstance(reply, int) and reply == 0:
        return ["not_found"] * n
    return [None] * n


def _count(label: str) -> Callable[[Callable[[int, Args], str]], ResultFn]:
    """For replies that are a count: ``verdict(count, args)`` names what happened to every key."""

    def wrap(verdict: Callable[[int, Args], str]) -> ResultFn:
        @_says(label)
        def result(args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
            count = _int(reply)
            return [None if count is None else verdict(count, args)] * len(keys)

        return result

    return wrap


@_count("`found`, `not_found` when the length is 0")
def length(count: int, _args: Args) -> str:
    """LLEN, SCARD, ZCARD, HLEN: an empty list, set, zset or hash does not exist."""
    return "found" if count else "not_found"


@_says("`found` or `not_found`")
def type_(_args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    n = len(keys)
    return ["not_found" if reply in ("none", b"none") else "found"] * n


@_says("`found` or `not_found`")
def ttl(_args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    n = len(keys)
    return ["not_found" if reply == -2 else "found"] * n


@_says("`deleted` or `not_found`")
def deleted(_args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    n = len(keys)
    if isinstance(reply, int) and not isinstance(reply, bool):
        if reply == 0:
            return ["not_found"] * n
        if reply >= n:
            return ["deleted"] * n
    return [None] * n


@_says("`deleted` or `not_found`")
def field_deleted(_args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    n = len(keys)
    if isinstance(reply, int):
        return ["deleted" if reply else "not_found"] * n
    return [None] * n


@_count("`deleted`, or `unchanged` when nothing was removed")
def removed(count: int, _args: Args) -> str:
    """SREM, ZREM, LREM, XDEL, XTRIM: a count of removed members, entries or elements."""
    return "deleted" if count else "unchanged"


def set_if(success: str, failure: str) -> ResultFn:
    def result(_args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
        n = len(keys)
        ok = reply is True or reply == 1 or reply in _OK
        return [success if ok else failure] * n

    LABELS[result] = f"`{success}` or `{failure}`"
    return result


@_says("`created` or `updated`")
def hset(_args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    n = len(keys)
    if isinstance(reply, int):
        return ["created" if reply > 0 else "updated"] * n
    return [None] * n


@_says("`created`/`updated`/`unchanged`/`not_found` with NX, XX, GET or IFEQ")
def set_(args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    """SET key value [NX|XX] [GET] ...: NX/XX/GET make the reply say created or updated."""
    n = len(keys)
    opts = {upper(a) for a in args[3:]}
    if "GET" in opts:
        if "NX" in opts or "XX" in opts:
            return [None] * n
        return ["created" if reply is None else "updated"] * n
    if "IFEQ" in opts:  # Valkey 8.1+: set only if the current value equals the given one
        return ["updated" if reply is True or reply in _OK else "unchanged"] * n
    return _conditional(opts, reply, n)


def _conditional(opts: set[str], reply: Any, n: int) -> Sequence[str | None]:
    """SET and JSON.SET with NX or XX: the reply says whether the condition let the write happen."""
    written = reply is True or reply in _OK
    if "NX" in opts:
        return ["created" if written else "unchanged"] * n
    if "XX" in opts:
        return ["updated" if written else "not_found"] * n
    return [None] * n


@_says("`updated`, or `not_found` without a condition")
def expire(args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    """EXPIRE key seconds [NX|XX|GT|LT]: 0 means "no such key" only without a condition."""
    n = len(keys)
    if reply == 1:
        return ["updated"] * n
    if reply == 0 and len(args) <= 3:
        return ["not_found"] * n
    return [None] * n


@_says("`created` or `unchanged` without REPLACE")
def restore(args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    """RESTORE fails when the key exists, unless REPLACE: then created or updated is unknown."""
    n = len(keys)
    if any(upper(a) == "REPLACE" for a in args[4:]):
        return [None] * n
    return _created_or_unchanged(args, reply, keys)


_created_or_unchanged = set_if("created", "unchanged")


@_says("`created`/`updated`/`unchanged`/`not_found` with NX or XX")
def json_set(args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    """JSON.SET key path value [NX|XX]: only the conditional forms tell created from updated."""
    return _conditional({upper(a) for a in args[4:]}, reply, len(keys))


@_says("`created` or `updated`")
def getset(_args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    n = len(keys)
    return ["created" if reply is None else "updated"] * n


@_says("source `found`, destination `created` or `unchanged`")
def copy(_args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    n = len(keys)
    if reply in (1, True):
        return ["found", "created"][:n]
    return [None, "unchanged"][:n]


@_says("source `deleted`, or both `unchanged`")
def rename(_args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    n = len(keys)
    if reply in (True, "OK", b"OK", 1):
        return ["deleted", None][:n]
    return ["unchanged", "unchanged"][:n]


@_says("source `deleted`, or both `unchanged`")
def smove(_args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    n = len(keys)
    if reply in (1, True):
        return ["deleted", None][:n]
    if reply in (0, False):
        return ["unchanged", "unchanged"][:n]
    return [None] * n


# ---- lists, sets, sorted sets, streams, HyperLogLog, geo ------------------------------------


@_count("`created` or `updated`")
def pushed(count: int, args: Args) -> str:
    """LPUSH/RPUSH key element...: the new length equals the count pushed only for a new list."""
    return "created" if count == len(args) - 2 else "updated"


@_count("`updated`, `not_found` (no such key), `unchanged` (LINSERT: no such pivot)")
def pushed_x(count: int, _args: Args) -> str:
    """LPUSHX/RPUSHX, LINSERT: 0 means no such list (LINSERT: -1, no such pivot)."""
    return "not_found" if count == 0 else "unchanged" if count < 0 else "updated"


@_says("`updated`")
def ok_updated(_args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    """LSET answers OK only when it replaced an element (no such key is an error)."""
    n = len(keys)
    return ["updated" if reply is True or reply in _OK else None] * n


@_says("`unchanged` when nothing changed")
def changed(_args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    """PFADD, XACK: 0 means nothing changed; otherwise created or updated, which the reply does not say."""
    n = len(keys)
    count = _int(reply)
    return ["unchanged" if count == 0 else None] * n


def _unique(values: Args) -> int | None:
    try:
        return len(set(values))
    except TypeError:
        return None


def added(first: int, step: int, options: frozenset[str] = frozenset()) -> ResultFn:
    """SADD, ZADD, GEOADD: compare the count added with the distinct members given.

    A count below that means some members existed, so the key did (``updated``); 0 means nothing
    changed when the count covers every change (CH, or NX which never updates); with INCR a nil
    reply means the NX/XX/GT/LT condition refused the write.
    """

    def result(args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
        n = len(keys)
        i, opts = first, set()
        while i < len(args) and upper(args[i]) in options:
            opts.add(upper(args[i]))
            i += 1
        if "INCR" in opts:
            return ["unchanged" if reply is None else None] * n
        count, members = _int(reply), _unique(args[i + step - 1 :: step])
        if count is None or members is None:
            return [None] * n
        counts_all = not options or "CH" in opts or "NX" in opts
        if count == 0 and counts_all:
            return ["unchanged"] * n
        if 0 < count < members and counts_all:
            return ["updated"] * n
        return [None] * n

    LABELS[result] = "`updated` or `unchanged` when the count tells"
    return result


def _reply_key(reply: Any) -> Any:
    """The key named first in a pop reply (BLPOP, LMPOP, BZPOPMIN, ZMPOP), or None."""
    if isinstance(reply, (list, tuple)) and reply:
        return reply[0]
    return None


@_says("the key popped from `found`; all `not_found` on nil")
def popped_from(args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    """BLPOP, BRPOP, LMPOP, BLMPOP, BZPOPMIN/MAX, ZMPOP, BZMPOP: the reply names the key it popped."""
    n = len(keys)
    if reply is None or (isinstance(reply, (list, tuple)) and not reply):
        return ["not_found"] * n
    name = _reply_key(reply)
    return ["found" if same_name(key, name) else None for key, _ in keys]


@_says("source `found`, or `not_found` and destination `unchanged` on nil")
def moved(_args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    """LMOVE, BLMOVE, RPOPLPUSH, BRPOPLPUSH: nil means the source list was empty (absent)."""
    n = len(keys)
    if reply is None:
        return ["not_found", "unchanged"][:n]
    return ["found", None][:n]


@_says("`not_found` on nil (NOMKSTREAM)")
def xadd(_args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    n = len(keys)
    return ["not_found" if reply is None else None] * n


@_says("`found` for each stream the reply has entries from")
def streams(args: Args, reply: Any, keys: Keys) -> Sequence[str | None]:
    """XREAD, XREADGROUP: RESP2 replies are [[name, entries], ...], RESP3 ones {name: entries}."""
    n = len(keys)
    if isinstance(reply, dict):
        names = list(reply)
    elif isinstance(reply, (list, tuple)):
        names = [_reply_key(r) for r in reply]
    else:
        return [None] * n
    return ["found" if any(same_name(key, x) for x in names) else None for key, _ in keys]
