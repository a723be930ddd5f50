"""Which Redis commands touch which keys, how, and what their replies say, without ever keeping a value.

The table is built at import from the server's key specifications (``redis_keyspecs``, generated
by ``scripts/gen_redis_commands.py``), with the hand-tuned classifications below on top, so that
the wrapper never asks the server anything and finds a command with one dict lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from secret_audit._internal import redis_replies as rr
from secret_audit._internal.redis_keys import (
    DELETE,
    META,
    READ,
    UNKNOWN,
    WRITE,
    KeyFn,
    at,
    compile_specs,
    describe_specs,
    no_keys,
    upper,
)
from secret_audit._internal.redis_keyspecs import SERVER, SPECS
from secret_audit._internal.redis_replies import ResultFn

__all__ = [
    "COMMANDS", "ENUMERATORS", "EVERY", "LISTS", "SERVER", "SUBCOMMAND", "UNKNOWN_COMMAND", "WHOLE",
    "Command", "keyless", "lookup", "rows",
]

Args = Sequence[Any]
PLAIN, SUBCOMMAND, LISTS, EVERY = 0, 1, 2, 4


class Command(NamedTuple):
    """How one command names its keys and how its reply maps to a result per key.

    ``kind`` is SUBCOMMAND for a container sent split (``"XINFO", "STREAM", key``), whose action
    then names the subcommand too, and LISTS for commands whose reply lists key names (KEYS, SCAN):
    their ``result`` returns those names, which are audited as metadata reads when secret; and
    EVERY for commands that touch every key without naming one (FLUSHALL): audited on each pattern.
    """

    keys: KeyFn
    result: ResultFn
    kind: int = PLAIN


# ---- hand-tuned classifications on top of the flags --------------------------------------------

# One operation per key spec, in the server's order, where the flags say less than we know.
OPERATIONS: dict[str, tuple[str, ...]] = {
    "GETEX": (READ,), "HGETEX": (READ,),  # they return values; the update is only to expiry
    "TTL": (META,), "PTTL": (META,), "EXPIRETIME": (META,), "PEXPIRETIME": (META,),
    "HTTL": (META,), "HPTTL": (META,), "HEXPIRETIME": (META,), "HPEXPIRETIME": (META,),
    "HKEYS": (META,),  # field names, not values
    "PFCOUNT": (META,),  # a cardinality (RW only because it caches it)
    "RENAME": (DELETE, WRITE), "RENAMENX": (DELETE, WRITE),  # the old name is gone
    "SMOVE": (DELETE, WRITE),  # the caller names the member: nothing is returned
    "XCLAIM": (READ,), "XAUTOCLAIM": (READ,),  # they return the claimed entries
    "XINFO GROUPS": (META,), "XINFO CONSUMERS": (META,),
}


def _sort(args: Args) -> list[tuple[Any, str]]:
    """SORT key [BY pattern] [LIMIT o c] [GET pattern ...] [STORE destination].

    BY and GET patterns with ``*`` name keys built from the sorted values, which are never
    recorded: the pattern itself is audited as the name (BY as metadata, GET as read).
    """
    if len(args) < 2:
        return []
    keys = [(args[1], READ)]
    i = 2
    while i < len(args) - 1:
        word = upper(args[i])
        if word in ("BY", "GET"):
            pattern = args[i + 1]
            if (isinstance(pattern, str) and "*" in pattern) or (
                isinstance(pattern, bytes) and b"*" in pattern
            ):
                keys.append((pattern, META if word == "BY" else READ))
            i += 2
        elif word == "STORE":
            keys.append((args[i + 1], WRITE))
            i += 2
        else:
            i += 3 if word == "LIMIT" else 1
    return keys


def _migrate(args: Args) -> list[tuple[Any, str]]:
    """MIGRATE host port key|"" db timeout [COPY] [REPLACE] [AUTH ...] [KEYS key ...].

    The value leaves for another server: a read (without COPY the key is also gone here, which
    the next access shows). The server's KEYS spec is marked incomplete: a key may be named KEYS.
    """
    if len(args) < 6:
        return []
    if args[3] not in ("", b""):
        return [(args[3], READ)]
    for i in range(6, len(args)):
        if upper(args[i]) == "KEYS":
            return [(k, READ) for k in args[i + 1 :]]
    return []


def _bitfield(args: Args) -> list[tuple[Any, str]]:
    """BITFIELD key [GET ...] [SET ...] [INCRBY ...]: only GETs is a read (its flags vary the same way)."""
    if len(args) < 2:
        return []
    writes = any(upper(a) in ("SET", "INCRBY") for a in args[2:])
    return [(args[1], WRITE if writes else READ)]


def _json_mget(args: Args) -> list[tuple[Any, str]]:
    """JSON.MGET key [key ...] path."""
    return [(k, READ) for k in args[1:-1]]


def _json_mset(args: Args) -> list[tuple[Any, str]]:
    """JSON.MSET key path value [key path value ...]."""
    return [(k, WRITE) for k in args[1::3]]


KEYS: dict[str, KeyFn] = {"SORT": _sort, "SORT_RO": _sort, "MIGRATE": _migrate, "BITFIELD": _bitfield}
KEY_NOTES = {
    "SORT": "key: read; `BY` pattern: metadata; `GET` pattern: read (the pattern is the name); "
    "`STORE` destination: write",
    "SORT_RO": "key: read; `BY` pattern: metadata; `GET` pattern: read (the pattern is the name)",
    "MIGRATE": "key, or each key after `KEYS`: read",
    "BITFIELD": "key: write with a `SET` or `INCRBY` subcommand, else read",
}

_GET_LIKE = rr.found
_ZADD_OPTS = frozenset({"NX", "XX", "GT", "LT", "CH", "INCR"})

RESULTS: dict[str, ResultFn] = {
    # strings and generic
    "GET": _GET_LIKE, "GETEX": _GET_LIKE, "GETDEL": _GET_LIKE, "DUMP": _GET_LIKE,
    "MGET": rr.each_found, "SET": rr.set_, "SETNX": rr.set_if("created", "unchanged"),
    "GETSET": rr.getset, "MSETNX": rr.set_if("created", "unchanged"),
    "DELIFEQ": rr.set_if("deleted", "unchanged"),
    "RESTORE": rr.restore, "RESTORE-ASKING": rr.restore,
    "DEL": rr.deleted, "UNLINK": rr.deleted, "EXISTS": rr.exists, "TOUCH": rr.exists,
    "TYPE": rr.type_, "TTL": rr.ttl, "PTTL": rr.ttl, "EXPIRETIME": rr.ttl, "PEXPIRETIME": rr.ttl,
    "EXPIRE": rr.expire, "PEXPIRE": rr.expire, "EXPIREAT": rr.expire, "PEXPIREAT": rr.expire,
    "COPY": rr.copy, "RENAME": rr.rename, "RENAMENX": rr.rename,
    "OBJECT ENCODING": rr.found, "OBJECT FREQ": rr.found, "OBJECT IDLETIME": rr.found,
    "OBJECT REFCOUNT": rr.found, "MEMORY USAGE": rr.found,
    # hashes
    "HGET": _GET_LIKE, "HGETALL": _GET_LIKE, "HVALS": _GET_LIKE, "HRANDFIELD": _GET_LIKE,
    "HKEYS": _GET_LIKE, "HMGET": rr.any_found, "HGETDEL": rr.any_found, "HGETEX": rr.any_found,
    "HSET": rr.hset, "HSETNX": rr.set_if("created", "unchanged"), "HDEL": rr.field_deleted,
    "HEXISTS": rr.exists, "HLEN": rr.length,
    # lists
    "LPOP": rr.found, "RPOP": rr.found, "BLPOP": rr.popped_from, "BRPOP": rr.popped_from,
    "LMPOP": rr.popped_from, "BLMPOP": rr.popped_from, "LMOVE": rr.moved, "BLMOVE": rr.moved,
    "RPOPLPUSH": rr.moved, "BRPOPLPUSH": rr.moved, "LPUSH": rr.pushed, "RPUSH": rr.pushed,
    "LPUSHX": rr.pushed_x, "RPUSHX": rr.pushed_x, "LINSERT": rr.pushed_x, "LSET": rr.ok_updated,
    "LREM": rr.removed, "LRANGE": rr.hit, "LINDEX": rr.hit, "LPOS": rr.hit, "LLEN": rr.length,
    # sets
    "SADD": rr.added(2, 1), "SREM": rr.removed, "SPOP": rr.found, "SRANDMEMBER": rr.found,
    "SMEMBERS": rr.found, "SISMEMBER": rr.exists, "SMISMEMBER": rr.any_found, "SCARD": rr.length,
    "SMOVE": rr.smove, "SINTER": rr.hit, "SDIFF": rr.hit,
    # sorted sets
    "ZADD": rr.added(2, 2, _ZADD_OPTS), "ZREM": rr.removed, "ZREMRANGEBYLEX": rr.removed,
    "ZREMRANGEBYRANK": rr.removed, "ZREMRANGEBYSCORE": rr.removed, "ZPOPMIN": rr.found,
    "ZPOPMAX": rr.found, "BZPOPMIN": rr.popped_from, "BZPOPMAX": rr.popped_from,
    "ZMPOP": rr.popped_from, "BZMPOP": rr.popped_from, "ZRANDMEMBER": rr.found,
    "ZRANGE": rr.hit, "ZRANGEBYSCORE": rr.hit, "ZRANGEBYLEX": rr.hit, "ZREVRANGE": rr.hit,
    "ZREVRANGEBYSCORE": rr.hit, "ZREVRANGEBYLEX": rr.hit, "ZSCORE": rr.hit, "ZRANK": rr.hit,
    "ZREVRANK": rr.hit, "ZMSCORE": rr.any_found, "ZCARD": rr.length, "ZINTER": rr.hit, "ZDIFF": rr.hit,
    # streams
    "XADD": rr.xadd, "XDEL": rr.removed, "XTRIM": rr.removed, "XRANGE": rr.hit, "XREVRANGE": rr.hit,
    "XREAD": rr.streams, "XREADGROUP": rr.streams, "XACK": rr.changed, "XCLAIM": rr.hit,
    "XINFO STREAM": rr.found, "XGROUP DESTROY": rr.removed,
    # HyperLogLog and geo
    "PFADD": rr.changed, "GEOADD": rr.added(2, 3, frozenset({"NX", "XX", "CH"})),
    "GEOPOS": rr.any_found, "GEOHASH": rr.any_found, "GEODIST": rr.hit, "GEOSEARCH": rr.hit,
    "GEORADIUS_RO": rr.hit, "GEORADIUSBYMEMBER_RO": rr.hit,
}


def listed(_args: Args, reply: Any, _keys: Any) -> list[Any]:
    """The key names a KEYS, SCAN or RANDOMKEY reply lists (a cluster client may map node to reply)."""
    if isinstance(reply, (str, bytes)):
        return [reply]
    if isinstance(reply, dict):
        return [name for part in reply.values() for name in listed(_args, part, _keys)]
    if isinstance(reply, (list, tuple)):
        cursor = reply[0] if len(reply) == 2 else None
        if isinstance(cursor, (int, bytes, str)) and isinstance(reply[1], (list, tuple)):
            reply = reply[1]  # SCAN: (cursor, names)
        return [name for name in reply if isinstance(name, (str, bytes))]
    return []


ENUMERATORS = ("KEYS", "SCAN", "RANDOMKEY", "CLUSTERSCAN", "CLUSTER GETKEYSINSLOT")
# Commands that delete or swap every key of a database, secrets included, naming none: audited on
# each configured key pattern, since that is all that can be said of which secrets they touched.
WHOLE = {"FLUSHALL": DELETE, "FLUSHDB": DELETE, "SWAPDB": WRITE}
WHOLE_NOTE = "each configured key pattern (the secrets matching it, all of them)"
rr.LABELS[listed] = "each secret name the reply lists: metadata, `found`"

# Modules the server here lacks (RedisJSON, valkey-json): classified by hand.
MODULES: dict[str, tuple[Command, str, str]] = {
    "JSON.GET": (Command(at(1, READ), rr.found), "key", READ),
    "JSON.MGET": (Command(_json_mget, rr.each_found), "key …", READ),
    "JSON.SET": (Command(at(1, WRITE), rr.json_set), "key", WRITE),
    "JSON.MSET": (Command(_json_mset, rr.none), "key (every 3rd argument)", WRITE),
    "JSON.DEL": (Command(at(1, DELETE), rr.field_deleted), "key", DELETE),
    "JSON.FORGET": (Command(at(1, DELETE), rr.field_deleted), "key", DELETE),
    "JSON.TYPE": (Command(at(1, META), rr.found), "key", META),
    "JSON.STRLEN": (Command(at(1, META), rr.none), "key", META),
    "JSON.OBJKEYS": (Command(at(1, META), rr.none), "key", META),
}
# Containers only a Sentinel lists: keyless, so never "unknown".
KEYLESS = ("SENTINEL",)

UNKNOWN_COMMAND = Command(at(1, UNKNOWN), rr.none)
_KEYLESS = Command(no_keys, rr.none)


def _command(name: str, specs: Sequence[Any], shift: int) -> Command:
    if name in ENUMERATORS:
        return Command(no_keys, listed, LISTS)
    if name in WHOLE:
        return Command(no_keys, rr.none, EVERY)
    keys = KEYS.get(name) or compile_specs(specs, OPERATIONS.get(name), shift=shift)
    return Command(keys, RESULTS.get(name, rr.none))


def _dispatch(subs: dict[str, Command]) -> Command:
    """A container sent split: its second argument picks the subcommand."""

    def keys(args: Args) -> list[tuple[Any, str]]:
        sub = subs.get(upper(args[1])) if len(args) > 1 else None
        return sub.keys(args) if sub is not None else []

    def result(args: Args, reply: Any, found: Any) -> Sequence[Any]:
        sub = subs.get(upper(args[1])) if len(args) > 1 else None
        return sub.result(args, reply, found) if sub is not None else [None] * len(found)

    kind = SUBCOMMAND | (LISTS if any(s.kind & LISTS for s in subs.values()) else 0)
    return Command(keys, result, kind)


def _takes_keys(name: str, specs: Sequence[Any]) -> bool:
    return name in ENUMERATORS or any("not_key" not in s[2] for s in specs)


def _build() -> tuple[dict[str, Command], frozenset[str]]:
    """The table, and the containers none of whose subcommands takes a key."""
    table: dict[str, Command] = {}
    containers: dict[str, dict[str, Command]] = {}
    keyed: set[str] = set()
    for name, (_, specs) in SPECS.items():
        container, _, sub = name.partition(" ")
        table[name] = _command(name, specs, 1 if sub else 0)
        if sub:
            containers.setdefault(container, {})[sub] = _command(name, specs, 0)
            if _takes_keys(name, specs):
                keyed.add(container)
    for container, subs in containers.items():
        table[container] = _dispatch(subs)
    for name in KEYLESS:
        table[name] = _KEYLESS
    for name, (command, _, _) in MODULES.items():
        table[name] = command
    return table, frozenset(containers.keys() - keyed) | frozenset(KEYLESS)


COMMANDS, _KEYLESS_CONTAINERS = _build()


def lookup(name: Any) -> Command | None:
    """Find a command's spec, tolerating lowercase and bytes names at a small cost."""
    spec = COMMANDS.get(name)
    if spec is None and name is not None:
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if isinstance(name, str):
            name = name.upper()
            spec = COMMANDS.get(name)
            if spec is None and name.partition(" ")[0] in _KEYLESS_CONTAINERS:
                spec = _KEYLESS  # a subcommand this table lacks, of a container that takes no keys
    return spec


def rows() -> list[tuple[str, str, list[tuple[str, str]], str, bool]]:
    """(group, command, [(key, operation)], what the reply tells, hand-tuned) for the docs."""
    out = []
    for name, (group, specs) in SPECS.items():
        if name in ENUMERATORS:
            out.append((group, name, [("names in the reply", META)], rr.LABELS[listed], True))
            continue
        if name in WHOLE:
            out.append((group, name, [(WHOLE_NOTE, WHOLE[name])], rr.LABELS[rr.none], True))
            continue
        if not _takes_keys(name, specs):
            continue
        keys = [(KEY_NOTES[name], "")] if name in KEY_NOTES else describe_specs(specs, OPERATIONS.get(name))
        result = RESULTS.get(name, rr.none)
        tuned = name in OPERATIONS or name in KEYS
        out.append((group, name, keys, rr.LABELS.get(result, ""), tuned))
    for name, (command, where, op) in MODULES.items():
        out.append(("json", name, [(where, op)], rr.LABELS.get(command.result, ""), True))
    return out


def keyless() -> list[str]:
    """Every command the server lists that names no key: never audited, never "unknown"."""
    keyed = {name.partition(" ")[0] for name, (_, specs) in SPECS.items() if _takes_keys(name, specs)}
    return [name for name, (_, specs) in SPECS.items()
            if not _takes_keys(name, specs) and name not in keyed and name not in WHOLE]

