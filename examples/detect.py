"""Which Sigma rules of detections/ match an audit trail: ``python examples/detect.py TRAIL.jsonl``.

The trail is JSON lines, one stored record each, as ``secret-audit query --all --json`` prints them.
The evaluator is pySigma's SQLite backend (pySigma-backend-sqlite, the one Zircolite runs on): each
rule becomes SQL over an in-memory table with one column per field (the record's columns and every
attribute under its own dotted name), and each correlation becomes that backend's query plan, run
by its executor. One thing is ours: Sigma has no first-seen construct, so a rule with a
``new_terms: {fields: [...]}`` attribute fires on a match whose values of those fields no earlier
match had. ``--since`` starts the watch there: what came before is history only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DETECTIONS = ROOT / "detections"


@dataclass
class Hit:
    """One firing of one rule: when, for which group of values, on which records (their ids)."""

    rule: str
    level: str
    time: str
    group: dict[str, Any] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)


def load_rules(directory: Path = DETECTIONS) -> Any:
    """Every rule file of ``directory`` as one pySigma collection (correlations resolved)."""
    from sigma.collection import SigmaCollection

    return SigmaCollection.load_ruleset([directory])


def _flat(event: dict[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in event.items() if not isinstance(v, (dict, list))}
    row.update({k: v for k, v in (event.get("attributes") or {}).items() if not isinstance(v, (dict, list))})
    row["timestamp"] = event["time"]
    return row


def _table(events: list[dict[str, Any]]) -> sqlite3.Connection:
    """The trail as table ``logs``: text columns compare case-insensitively, as Sigma matches."""
    conn = sqlite3.connect(":memory:")
    conn.create_function("REGEXP", 2, lambda pattern, value: value is not None
                         and re.search(pattern, str(value)) is not None, deterministic=True)
    rows = [_flat(e) for e in sorted(events, key=lambda e: (e["time"], int(e["id"])))]
    columns = sorted({k for r in rows for k in r})
    quoted = ", ".join(f'"{c}" COLLATE NOCASE' for c in columns) or '"timestamp"'
    conn.execute(f"CREATE TABLE logs ({quoted})")
    if rows:
        marks = ", ".join("?" for _ in columns)
        names = ", ".join(f'"{c}"' for c in columns)
        conn.executemany(f"INSERT INTO logs ({names}) VALUES ({marks})",
                         [[r.get(c) for c in columns] for r in rows])
    return conn


def _seconds(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def evaluate(events: list[dict[str, Any]], rules: Any = None, since: str | None = None) -> dict[str, list[Hit]]:
    """Run every rule that stands on its own (a correlation's building blocks do not) on the trail;
    returns the hits of those that fired, by rule title."""
    from sigma.backends.sqlite import sqliteBackend
    from sigma.backends.sqlite.runtime import execute_plan

    rules = load_rules() if rules is None else rules
    by_id = {str(r.id): r for r in rules}
    converted = sqliteBackend().convert(rules, "zircolite")
    conn = _table(events)
    conn.row_factory = sqlite3.Row
    start = _seconds(since) if since else float("-inf")
    out: dict[str, list[Hit]] = {}
    for item in json.loads(converted) if isinstance(converted, str) else converted:
        title, level = item["title"], item["level"]
        if item.get("correlation"):
            alerts, _ = execute_plan(conn, item["correlation_plan"])
            hits = [Hit(title, level, _iso(a["occurrence_time"]), dict(a["group_keys"]),
                        [str(e["event"]["id"]) for e in a["evidence"]])
                    for a in alerts if a["occurrence_time"] >= start]
        else:
            terms = (by_id[item["id"]].custom_attributes or {}).get("new_terms", {}).get("fields")
            hits = _plain(conn, item["rule"], title, level, terms, start)
        if hits:
            out[title] = hits
    return out


def _plain(conn: sqlite3.Connection, queries: list[str], title: str, level: str, terms: list[str] | None,
           start: float) -> list[Hit]:
    """A rule's matches in time order; with new_terms, only those whose values are new."""
    hits = []
    seen: set[tuple[str, ...]] = set()
    for query in queries:
        for row in _rows(conn, query + ' ORDER BY "timestamp", CAST("id" AS INTEGER)'):
            record = dict(row)
            if terms:
                key = tuple(str(record.get(f)).lower() for f in terms)
                if key in seen:
                    continue
                seen.add(key)
            if _seconds(record["timestamp"]) >= start:
                group = {f: record.get(f) for f in terms} if terms else {}
                hits.append(Hit(title, level, record["timestamp"], group, [str(record["id"])]))
    return hits


def _rows(conn: sqlite3.Connection, query: str) -> list[sqlite3.Row]:
    """Run a rule's query; a field no record of this trail has is an empty column (as in Zircolite)."""
    while True:
        try:
            return conn.execute(query).fetchall()
        except sqlite3.OperationalError as exc:
            missing = re.match(r"no such column: (.+)$", str(exc))
            if missing is None:
                raise
            conn.execute(f'ALTER TABLE logs ADD COLUMN "{missing.group(1)}" COLLATE NOCASE')


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def read_trail(path: Path) -> list[dict[str, Any]]:
    """A trail file as ``secret-audit query --all --json`` writes it."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trail", type=Path, help="JSON lines from `secret-audit query --all --json`")
    parser.add_argument("--rules", type=Path, default=DETECTIONS, help="a folder of Sigma rules")
    parser.add_argument("--since", help="ISO time: only firings from then on (earlier records are history)")
    args = parser.parse_args(argv)
    fired = evaluate(read_trail(args.trail), load_rules(args.rules), args.since)
    for title, hits in fired.items():
        group = ", ".join(f"{k}={v}" for k, v in hits[0].group.items())
        print(f"{hits[0].level:8}  {title}: {len(hits)} time(s), first at {hits[0].time}"
              + (f" ({group})" if group else ""))
    if not fired:
        print("no rule matched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
