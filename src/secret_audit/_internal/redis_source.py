"""The redis source as the audit worker sees it: a client's resource and principal, and safe error text."""

from __future__ import annotations

import re
import weakref
from typing import Any

from secret_audit._internal.errors import error_type, safe_prefix

__all__ = ["SOURCE", "RedisSource"]

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
        # A client's (or a pipeline's) address and user are its connection pool's: kept by the pool,
        # which outlives the pipelines made on it (a new object for every pipeline).
        pool = getattr(target, "connection_pool", None)
        owner = pool if isinstance(getattr(pool, "connection_kwargs", None), dict) else target
        entry = self._memo.get(id(owner))
        if entry is not None and entry[0]() is owner:
            return entry[1], entry[2]
        resource, principal = self._resource(target), self._principal(target)
        try:
            ref = weakref.ref(owner)
        except TypeError:
            return resource, principal
        if len(self._memo) >= 256:
            self._memo.clear()
        self._memo[id(owner)] = (ref, resource, principal)
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
