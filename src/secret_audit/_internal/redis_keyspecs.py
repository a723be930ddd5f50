"""The server's command table, read from ``redis_keyspecs.json``, which scripts/gen_redis_commands.py
generates: every command and subcommand the server lists, with its group and its key specifications.

The JSON holds ``server`` (what generated it) and ``specs``: "NAME" or "CONTAINER SUBCOMMAND" ->
[group, [key spec, ...]], each key spec [begin_search, find_keys, flags, argument name] from
``COMMAND`` (where each key is, and the server's flags for it) and ``COMMAND DOCS`` (the group, the
key argument's name). Keyless commands are listed too, with no specs, so that they are known rather
than "unknown". It is data, one line a command, so it is kept out of Python (and out of this
module's length); here it becomes tuples, as redis_commands.py reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["SERVER", "SPECS"]

# begin_search: ("index", pos) | ("keyword", word, startfrom) | ("unknown",)
# find_keys: ("range", lastkey, keystep, limit) | ("keynum", keynumidx, firstkey, keystep) | ("unknown",)
KeySpec = tuple[tuple[Any, ...], tuple[Any, ...], tuple[str, ...], str]


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _load() -> tuple[str, dict[str, tuple[str, tuple[KeySpec, ...]]]]:
    data = json.loads(Path(__file__).with_name("redis_keyspecs.json").read_bytes())
    specs = {name: (group, _tuples(keyspecs)) for name, (group, keyspecs) in data["specs"].items()}
    return str(data["server"]), specs


SERVER, SPECS = _load()
