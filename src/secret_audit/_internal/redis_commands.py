"""Which Redis commands touch which keys, how, and what their replies say, without ever keeping a value."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

__all__ = ["COMMANDS", "Command", "lookup"]

READ, WRITE, DELETE, META = "read", "write", "delete", "metadata"

Args = Sequence[Any]
KeyFn = Callable[[Args], list[tuple[Any, str]]]
ResultFn = Callable[[Args, Any, int], Sequence[str | None]]


class Command(NamedTuple):
    """How one command names its keys and how its reply maps to a result per key."""

    keys: KeyFn
    result: ResultFn


# ---- key extraction ----------------------------------------------------------------------


def _at(index: int, op: str) -> KeyFn:
    def keys(args: Args) -> list[tuple[Any, str]]:
        return [(args[index], op)] if len(args) > index else []

    return keys


def _all(op: str, start: int = 1, stop_from_end: int = 0) -> KeyFn:
    def keys(args: Args) -> list[tuple[Any, str]]:
        end = len(args) - stop_from_end
        return [(k, op) for k in args[start:end]]

    return keys


def _pairs(op: str) -> KeyFn:
    def keys(args: Args) -> list[tuple[Any, str]]:
        return [(k, op) for k in args[1::2]]

    return keys


def _two(first: str, second: str) -> KeyFn:
    def keys(args: Args) -> list[tuple[Any, str]]:
        if len(args) < 3:
            return []
        return [(args[1], first), (args[2], second)]

    return keys


def _bitop(args: Args) -> list[tuple[Any, str]]:
    """BITOP operation destkey key [key ...]: the sources are read, the destination written."""
    if len(args) < 4:
        return []
    return [(args[2], WRITE)] + [(k, READ) for k in args[3:]]


def _sort(args: Args) -> list[tuple[Any, str]]:
    """SORT key [... STORE destination]: the values come back (read), or land in destination."""
    if len(args) < 2:
        return []
    keys = [(args[1], READ)]
    for i in range(2, len(args) - 1):
        if _upper(args[i]) == "STORE":
            keys.append((args[i + 1], WRITE))
            break
    return keys


def _migrate(args: Args) -> list[tuple[Any, str]]:
    """MIGRATE host port key|"" db timeout [COPY] [REPLACE] [AUTH ...] [KEYS key ...].

    The value leaves for another server: a read (without COPY the key is also gone here,
    which the next access shows).
    """
    if len(args) < 6:
        return []
    if args[3] not in ("", b""):
        return [(args[3], READ)]
    for i in range(6, len(args)):
        if _upper(args[i]) == "KEYS":
            return [(k, READ) for k in args[i + 1 :]]
    return []


def _msetex(args: Args) -> list[tuple[Any, str]]:
    """MSETEX numkeys key value [key value ...] [options]."""
    try:
        count = int(args[1])
    except (IndexError, TypeError, ValueError):
        return []
    return [(k, WRITE) for k in args[2 : 2 + 2 * max(count, 0) : 2]]


def _numkeys(op: str) -> KeyFn:
    """EVAL/EVALSHA/FCALL: ``CMD script numkeys key... arg...``; only declared keys count."""

    def keys(args: Args) -> list[tuple[Any, str]]:
        try:
            count = int(args[2])
        except (IndexError, TypeError, ValueError):
            return []
        return [(k, op) for k in args[3 : 3 + max(count, 0)]]

    return keys


# ---- reply interpretation -----------------------------------------------------------------


def _none(_args: Args, _reply: Any, n: int) -> Sequence[str | None]:
    return [None] * n


def _empty(reply: Any) -> bool:
    return reply is None or (isinstance(reply, (dict, list, bytes, str)) and len(reply) == 0)


def _found(_args: Args, reply: Any, n: int) -> Sequence[str | None]:
    return ["not_found" if _empty(reply) else "found"] * n


def _any_found(_args: Args, reply: Any, n: int) -> Sequence[str | None]:
    """HMGET and JSON paths: a key counts as found when any requested part exists."""
    if isinstance(reply, list):
        return ["found" if any(v is not None for v in reply) else "not_found"] * n
    return _found(_args, reply, n)


def _each_found(_args: Args, reply: Any, n: int) -> Sequence[str | None]:
    if isinstance(reply, list) and len(reply) == n:
        return ["not_found" if v is None else "found" for v in reply]
    return [None] * n


def _exists(_args: Args, reply: Any, n: int) -> Sequence[str | None]:
    if n == 1 and isinstance(reply, int):
        return ["found" if reply else "not_found"]
    if isinstance(reply, int) and reply == 0:
        return ["not_found"] * n
    return [None] * n


def _type(_args: Args, reply: Any, n: int) -> Sequence[str | None]:
    return ["not_found" if reply in ("none", b"none") else "found"] * n


def _ttl(_args: Args, reply: Any, n: int) -> Sequence[str | None]:
    return ["not_found" if reply == -2 else "found"] * n


def _deleted(_args: Args, reply: Any, n: int) -> Sequence[str | None]:
    if isinstance(reply, int) and not isinstance(reply, bool):
        if reply == 0:
            return ["not_found"] * n
        if reply >= n:
            return ["deleted"] * n
    return [None] * n


def _field_deleted(_args: Args, reply: Any, n: int) -> Sequence[str | None]:
    if isinstance(reply, int):
        return ["deleted" if reply else "not_found"] * n
    return [None] * n


def _set_if(success: str, failure: str) -> ResultFn:
    def result(_args: Args, reply: Any, n: int) -> Sequence[str | None]:
        ok = reply is True or reply == 1 or reply in ("OK", b"OK")
        return [success if ok else failure] * n

    return result


def _hset(_args: Args, reply: Any, n: int) -> Sequence[str | None]:
    if isinstance(reply, int):
        return ["created" if reply > 0 else "updated"] * n
    return [None] * n


def _upper(token: Any) -> str:
    if isinstance(token, bytes):
        return token.decode("latin-1").upper()
    return str(token).upper() if isinstance(token, str) else ""


def _set(args: Args, reply: Any, n: int) -> Sequence[str | None]:
    """SET key value [NX|XX] [GET] ...: NX/XX/GET make the reply say created or updated."""
    opts = {_upper(a) for a in args[3:]}
    if "GET" in opts:
        if "NX" in opts or "XX" in opts:
            return [None] * n
        return ["created" if reply is None else "updated"] * n
    written = reply is True or reply in ("OK", b"OK")
    if "IFEQ" in opts:  # Valkey 8.1+: set only if the current value equals the given one
        return ["updated" if written else "unchanged"] * n
    if "NX" in opts:
        return ["created" if written else "unchanged"] * n
    if "XX" in opts:
        return ["updated" if written else "not_found"] * n
    return [None] * n


def _expire(args: Args, reply: Any, n: int) -> Sequence[str | None]:
    """EXPIRE key seconds [NX|XX|GT|LT]: 0 means "no such key" only without a condition."""
    if reply == 1:
        return ["updated"] * n
    if reply == 0 and len(args) <= 3:
        return ["not_found"] * n
    return [None] * n


def _restore(args: Args, reply: Any, n: int) -> Sequence[str | None]:
    """RESTORE fails when the key exists, unless REPLACE: then created or updated is unknown."""
    if any(_upper(a) == "REPLACE" for a in args[4:]):
        return [None] * n
    return _set_if("created", "unchanged")(args, reply, n)


def _json_set(args: Args, reply: Any, n: int) -> Sequence[str | None]:
    """JSON.SET key path value [NX|XX]: only the conditional forms tell created from updated."""
    opts = {_upper(a) for a in args[4:]}
    written = reply is True or reply in ("OK", b"OK")
    if "NX" in opts:
        return ["created" if written else "unchanged"] * n
    if "XX" in opts:
        return ["updated" if written else "not_found"] * n
    return [None] * n


def _getset(_args: Args, reply: Any, n: int) -> Sequence[str | None]:
    return ["created" if reply is None else "updated"] * n


def _copy(_args: Args, reply: Any, n: int) -> Sequence[str | None]:
    if reply in (1, True):
        return ["found", "created"][:n]
    return [None, "unchanged"][:n]


def _rename(_args: Args, reply: Any, n: int) -> Sequence[str | None]:
    if reply in (True, "OK", b"OK", 1):
        return ["deleted", None][:n]
    return ["unchanged", "unchanged"][:n]


# ---- the table ----------------------------------------------------------------------------

_GET_LIKE = Command(_at(1, READ), _found)
_META1 = Command(_at(1, META), _none)
_WRITE1 = Command(_at(1, WRITE), _none)

COMMANDS: dict[str, Command] = {
    # strings
    "GET": _GET_LIKE,
    "GETEX": _GET_LIKE,
    "GETDEL": _GET_LIKE,
    "GETRANGE": Command(_at(1, READ), _none),
    "SUBSTR": Command(_at(1, READ), _none),
    "LCS": Command(_two(READ, READ), _none),  # LCS key1 key2 [LEN] [IDX] ...: options are no keys
    "MGET": Command(_all(READ), _each_found),
    "SET": Command(_at(1, WRITE), _set),
    "SETNX": Command(_at(1, WRITE), _set_if("created", "unchanged")),
    "SETEX": _WRITE1,
    "PSETEX": _WRITE1,
    "GETSET": Command(_at(1, WRITE), _getset),
    "MSET": Command(_pairs(WRITE), _none),
    "MSETNX": Command(_pairs(WRITE), _set_if("created", "unchanged")),
    "MSETEX": Command(_msetex, _none),
    "DELIFEQ": Command(_at(1, DELETE), _set_if("deleted", "unchanged")),
    # bitmaps read and write the string value bit by bit
    "GETBIT": Command(_at(1, READ), _none),
    "BITCOUNT": Command(_at(1, READ), _none),
    "BITPOS": Command(_at(1, READ), _none),
    "BITFIELD_RO": Command(_at(1, READ), _none),
    "BITFIELD": _WRITE1,
    "SETBIT": _WRITE1,
    "BITOP": Command(_bitop, _none),
    "APPEND": _WRITE1,
    "SETRANGE": _WRITE1,
    "INCR": _WRITE1,
    "INCRBY": _WRITE1,
    "INCRBYFLOAT": _WRITE1,
    "DECR": _WRITE1,
    "DECRBY": _WRITE1,
    "STRLEN": _META1,
    # hashes
    "HGET": _GET_LIKE,
    "HMGET": Command(_at(1, READ), _any_found),
    "HGETALL": _GET_LIKE,
    "HVALS": _GET_LIKE,
    "HRANDFIELD": _GET_LIKE,
    "HGETDEL": Command(_at(1, READ), _any_found),
    "HGETEX": Command(_at(1, READ), _any_found),
    "HSCAN": Command(_at(1, READ), _none),
    "HSET": Command(_at(1, WRITE), _hset),
    "HMSET": _WRITE1,
    "HSETNX": Command(_at(1, WRITE), _set_if("created", "unchanged")),
    "HSETEX": _WRITE1,
    "HINCRBY": _WRITE1,
    "HINCRBYFLOAT": _WRITE1,
    "HDEL": Command(_at(1, DELETE), _field_deleted),
    "HKEYS": _META1,
    "HLEN": _META1,
    "HEXISTS": Command(_at(1, META), _exists),
    "HSTRLEN": _META1,
    "HTTL": _META1,
    "HEXPIRE": _WRITE1,
    "HPEXPIRE": _WRITE1,
    "HEXPIREAT": _WRITE1,
    "HPEXPIREAT": _WRITE1,
    "HPERSIST": _WRITE1,
    "HPTTL": _META1,
    "HEXPIRETIME": _META1,
    "HPEXPIRETIME": _META1,
    # generic keys
    "DEL": Command(_all(DELETE), _deleted),
    "UNLINK": Command(_all(DELETE), _deleted),
    "EXISTS": Command(_all(META), _exists),
    "TYPE": Command(_at(1, META), _type),
    "TTL": Command(_at(1, META), _ttl),
    "PTTL": Command(_at(1, META), _ttl),
    "EXPIRETIME": Command(_at(1, META), _ttl),
    "PEXPIRETIME": Command(_at(1, META), _ttl),
    "TOUCH": Command(_all(META), _exists),
    "OBJECT": Command(_at(2, META), _none),
    "MEMORY USAGE": Command(_at(1, META), _none),
    "EXPIRE": Command(_at(1, WRITE), _expire),
    "PEXPIRE": Command(_at(1, WRITE), _expire),
    "EXPIREAT": Command(_at(1, WRITE), _expire),
    "PEXPIREAT": Command(_at(1, WRITE), _expire),
    "PERSIST": _WRITE1,
    "MOVE": Command(_at(1, WRITE), _none),
    "DUMP": _GET_LIKE,
    "RESTORE": Command(_at(1, WRITE), _restore),
    "SORT": Command(_sort, _none),
    "SORT_RO": Command(_at(1, READ), _none),
    "MIGRATE": Command(_migrate, _none),
    "COPY": Command(_two(READ, WRITE), _copy),
    "RENAME": Command(_two(DELETE, WRITE), _rename),
    "RENAMENX": Command(_two(DELETE, WRITE), _rename),
    # scripts and functions: only their declared keys are knowable
    "EVAL": Command(_numkeys(WRITE), _none),
    "EVALSHA": Command(_numkeys(WRITE), _none),
    "EVAL_RO": Command(_numkeys(READ), _none),
    "EVALSHA_RO": Command(_numkeys(READ), _none),
    "FCALL": Command(_numkeys(WRITE), _none),
    "FCALL_RO": Command(_numkeys(READ), _none),
    # RedisJSON
    "JSON.GET": _GET_LIKE,
    "JSON.MGET": Command(_all(READ, 1, 1), _each_found),
    "JSON.SET": Command(_at(1, WRITE), _json_set),
    "JSON.MSET": Command(_all(WRITE), _none),
    "JSON.DEL": Command(_at(1, DELETE), _field_deleted),
    "JSON.FORGET": Command(_at(1, DELETE), _field_deleted),
    "JSON.TYPE": Command(_at(1, META), _found),
    "JSON.STRLEN": _META1,
    "JSON.OBJKEYS": _META1,
}


def _json_mset(args: Args) -> list[tuple[Any, str]]:
    """JSON.MSET key path value [key path value ...]."""
    return [(k, WRITE) for k in args[1::3]]


COMMANDS["JSON.MSET"] = Command(_json_mset, _none)


def lookup(name: Any) -> Command | None:
    """Find a command's spec, tolerating lowercase and bytes names at a small cost."""
    spec = COMMANDS.get(name)
    if spec is None and name is not None:
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if isinstance(name, str):
            spec = COMMANDS.get(name.upper())
    return spec
