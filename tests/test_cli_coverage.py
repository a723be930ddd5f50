"""Every `secret-audit` command and flag is run by some test: a documented command no test runs is a bug waiting.

The command tree is read from the parser itself; a new command or flag without a test that names it
fails here. "Names it" means a test file that spells the command's words (as a list, ``"tokens",
"list"``, or as text, ``tokens list``), and a test file that spells the flag (``"--strict"``); test
helpers that run one command with varying flags are common, so flags are looked for in every file.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from secret_audit.cli import build_parser

TESTS = Path(__file__).parent


def commands() -> dict[tuple[str, ...], list[str]]:
    out: dict[tuple[str, ...], list[str]] = {}

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out[path] = [o for a in parser._actions for o in a.option_strings
                         if o.startswith("--") and o != "--help"]
            return
        for name, sub in subs[0].choices.items():
            walk(sub, (*path, name))

    walk(build_parser(), ())
    return out


def files_running(path: tuple[str, ...]) -> list[str]:
    as_list = r'"\s*,\s*"'.join(re.escape(p) for p in path)
    as_text = r"\s+".join(re.escape(p) for p in path)
    pattern = re.compile(rf'"{as_list}"|[\'"(\[ ]{as_text}[\'" \]]')
    return [p.read_text() for p in TESTS.rglob("test_*.py") if pattern.search(p.read_text())]


def test_every_command_and_flag_is_run_by_a_test():
    missing = []
    every = [p.read_text() for p in TESTS.rglob("test_*.py")]
    for path, flags in commands().items():
        if not files_running(path):
            missing.append(" ".join(path))
            continue
        missing += [f"{' '.join(path)} {flag}" for flag in flags if not any(f'"{flag}"' in t for t in every)]
    assert not missing, f"commands or flags no test runs: {missing}"
