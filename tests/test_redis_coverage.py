"""The command table covers every command a real server lists, and finds the keys the server finds.

If a new valkey or Redis adds a command that takes keys, or changes a key spec, these fail until
``scripts/gen_redis_commands.py`` is run again.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from secret_audit._internal.redis_commands import (
    COMMANDS,
    ENUMERATORS,
    KEYS,
    OPERATIONS,
    SUBCOMMAND,
    lookup,
    rows,
)
from secret_audit._internal.redis_keys import no_keys, operation
from secret_audit._internal.redis_keyspecs import SPECS

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_redis_commands.py"


@pytest.fixture(scope="module")
def server(redis_address):
    """COMMAND, COMMAND DOCS and a raw connection for COMMAND GETKEYSANDFLAGS, on the test server."""
    client = redis.Redis(*redis_address, protocol=3)
    conn = client.connection_pool.get_connection()

    def raw(*args: str) -> Any:
        conn.send_command(*args)
        return conn.read_response()

    commands = []

    def walk(entries: list[Any]) -> None:
        for entry in entries:
            commands.append(entry)
            walk(entry[9])

    walk(raw("COMMAND"))
    docs = {}
    for name, doc in _script()._text(raw("COMMAND", "DOCS")).items():
        docs[name] = doc
        docs.update(doc.get("subcommands") or {})
    yield commands, docs, raw
    client.connection_pool.release(conn)
    client.close()


def _takes_keys(entry: list[Any]) -> bool:
    specs = [s for s in entry[8] if b"not_key" not in s[b"flags"]]
    return bool(specs)


def test_every_key_taking_command_of_the_server_is_classified(server):
    commands, _, _ = server
    keyed = [e[0].decode().upper().replace("|", " ") for e in commands if _takes_keys(e)]
    assert len(keyed) >= 200
    missing = [name for name in keyed if name not in COMMANDS]
    assert not missing, f"run scripts/gen_redis_commands.py: the table lacks {missing}"
    for name in keyed:
        container, _, sub = name.partition(" ")
        assert COMMANDS[name].keys is not no_keys or name in ENUMERATORS, name
        if sub:  # sent split, the container dispatches on the subcommand
            assert COMMANDS[container].kind & SUBCOMMAND, name
    # and no command is in the table that the server does not list (other than modules')
    listed = {e[0].decode().upper().replace("|", " ") for e in commands}
    assert set(SPECS) == listed


def _sample(arguments: list[Any] | None, keys: list[str], optional: bool) -> list[str]:
    """Arguments for one call, built from COMMAND DOCS: keys are k1, k2...; the first of each oneof."""
    out: list[str] = []
    for arg in arguments or []:
        flags = arg.get("flags", [])
        if "optional" in flags and not optional:
            continue
        reps = 2 if "multiple" in flags else 1
        token = arg.get("token") if arg["type"] != "pure-token" else None
        each = "multiple_token" in flags or reps == 1
        if token is not None and not each:
            out.append(token)
        for _ in range(reps):
            if token is not None and each:
                out.append(token)
            kind = arg["type"]
            if kind == "pure-token":
                out.append(arg["token"])
            elif kind == "key":
                keys.append(f"k{len(keys) + 1}")
                out.append(keys[-1])
            elif kind in ("oneof", "block"):
                out += _sample(arg["arguments"][:1] if kind == "oneof" else arg["arguments"], keys, optional)
            elif kind in ("integer", "unix-time"):
                out.append("1")
            elif kind == "double":
                out.append("1.5")
            elif kind == "pattern":
                out.append("*")
            else:
                out.append("v")
    return out


def test_keys_and_operations_agree_with_the_servers_own_key_extraction(server):
    """For sample calls of every key-taking command, our keys (and, unless hand-tuned, operations)
    equal what ``COMMAND GETKEYSANDFLAGS`` says, in both the joined and the split form."""
    commands, docs, raw = server
    compared, disagreements = 0, []
    for entry in commands:
        if not _takes_keys(entry):
            continue
        name = entry[0].decode()
        parts = name.upper().split("|")
        joined = " ".join(parts)
        for optional in (False, True):
            rest = _sample(docs.get(name, {}).get("arguments"), [], optional)
            try:
                got = raw("COMMAND", "GETKEYSANDFLAGS", *parts, *rest)
            except redis.ResponseError:
                continue  # a sample the server itself cannot read (e.g. MIGRATE key and KEYS)
            theirs = [(k.decode(), operation([f.decode() for f in flags])) for k, flags in got]
            tuned = joined in OPERATIONS or joined in KEYS
            for form in ([joined, *rest], [*parts, *rest]) if len(parts) == 2 else ([joined, *rest],):
                ours = [(k, op) for k, op in lookup(form[0]).keys(form) if "*" not in k]  # SORT patterns
                same = ours == theirs if not tuned else [k for k, _ in ours] == [k for k, _ in theirs]
                compared += 1
                if not same:
                    disagreements.append((form, ours, theirs))
    assert not disagreements
    assert compared >= 400


def test_every_spec_the_generic_rules_cannot_read_has_a_hand_written_key_function():
    for name, (_, specs) in SPECS.items():
        odd = [s for s in specs if s[0][0] == "unknown" or s[1][0] == "unknown" or "incomplete" in s[2]]
        if odd:
            assert name in KEYS, name
        if name in OPERATIONS:  # an override names one operation per key spec
            assert len(OPERATIONS[name]) == len([s for s in specs if "not_key" not in s[2]]), name


def test_enumerators_and_hand_tuned_names_exist_on_the_server():
    assert set(ENUMERATORS) <= set(SPECS)
    assert set(OPERATIONS) <= set(SPECS)
    assert set(KEYS) <= set(SPECS)


def _script():
    spec = importlib.util.spec_from_file_location("gen_redis_commands", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_table_and_doc_are_what_the_script_generates(redis_url):
    """The documented command, run against the test server in check mode."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--url", redis_url],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr


def test_doc_lists_every_key_taking_command_by_family():
    doc = (ROOT / "docs" / "redis-commands.md").read_text()
    assert doc == _script().render_doc()
    for family, name, *_ in rows():
        assert f"| `{name}`" in doc, name
    for title in ("## Lists", "## Sets", "## Sorted sets", "## Streams", "## Hashes", "## Strings",
                  "## Bitmaps", "## HyperLogLog", "## Geospatial", "## Generic (keyspace)"):
        assert title in doc


def test_check_mode_fails_on_a_stale_doc(tmp_path, monkeypatch):
    module = _script()
    stale = tmp_path / "redis-commands.md"
    stale.write_text("# stale\n")
    monkeypatch.setattr(module, "DOC", stale)
    assert module.main(["--check", "--doc-only"]) == 1
    assert module.main(["--doc-only"]) == 0
    assert stale.read_text() == (ROOT / "docs" / "redis-commands.md").read_text()
