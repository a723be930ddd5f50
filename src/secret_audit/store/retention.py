"""Retention: archive whole monthly partitions to compressed JSON lines, then drop them (owner only)."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from secret_audit import contract
from secret_audit.store._rows import event_json
from secret_audit.store.verify import Break, VerifyReport

__all__ = ["Expired", "apply_retention", "expired_partitions", "prune_heads", "verify_archives"]


@dataclass
class Expired:
    """A partition wholly older than the retention period, and what happened to it."""

    name: str
    start: dt.datetime
    end: dt.datetime
    rows: int = 0
    archive: str | None = None
    sha256: str | None = None


def expired_partitions(
    conn: psycopg.Connection[Any], days: int, now: dt.datetime | None = None
) -> list[Expired]:
    """Monthly partitions whose upper bound is at least ``days`` old."""
    now = now or dt.datetime.now(dt.timezone.utc)
    cutoff = now - dt.timedelta(days=days)
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'audit_events'::regclass ORDER BY c.relname"
    ).fetchall()
    out = []
    for (name,) in rows:
        stamp = str(name).removeprefix("audit_events_p")
        if len(stamp) != 6 or not stamp.isdigit():
            continue
        year, month = int(stamp[:4]), int(stamp[4:])
        start = dt.datetime(year, month, 1, tzinfo=dt.timezone.utc)
        end = dt.datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=dt.timezone.utc)
        if end <= cutoff:
            out.append(Expired(str(name), start, end))
    return out


def apply_retention(
    conn: psycopg.Connection[Any],
    days: int,
    archive_dir: Path,
    *,
    dry_run: bool = False,
    now: dt.datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Expired]:
    """Archive and drop each expired partition in its own transaction; the archive is written first."""
    done = []
    for part in expired_partitions(conn, days, now):
        ident = sql.Identifier(part.name)
        count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ident)).fetchone()
        part.rows = int(count[0]) if count else 0
        if dry_run:
            done.append(part)
            continue
        archive_dir.mkdir(parents=True, exist_ok=True)
        path = archive_dir / f"{part.name}.jsonl.gz"
        heads: dict[str, tuple[int, str, int]] = {}
        digest = hashlib.sha256()
        with conn.transaction():
            conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(ident))
            tmp = path.with_suffix(".tmp")
            with gzip.open(tmp, "wb") as out, conn.cursor(f"ret_{part.name}", row_factory=dict_row) as cur:
                cur.itersize = 2000
                cur.execute(sql.SQL("SELECT * FROM {} ORDER BY stream_id, sequence, id").format(ident))
                for row in cur:
                    line = orjson.dumps(event_json(row)) + b"\n"
                    out.write(line)
                    digest.update(line)
                    seq, stream = int(row["sequence"]), str(row["stream_id"])
                    _, _, n = heads.get(stream, (0, "", 0))
                    heads[stream] = (seq, str(row["chain_hash"]), n + 1)
                    if progress is not None:
                        progress(1)
            tmp.replace(path)
            part.archive, part.sha256 = str(path), digest.hexdigest()
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO audit_stream_archives (stream_id, partition_name, archived_count, "
                    "archived_through, archived_hash) VALUES (%s, %s, %s, %s, %s)",
                    [(s, part.name, n, seq, h) for s, (seq, h, n) in heads.items()],
                )
            conn.execute(
                "INSERT INTO audit_retention_log (partition_name, rows, archive, archive_sha256) "
                "VALUES (%s, %s, %s, %s)",
                (part.name, part.rows, part.archive, part.sha256),
            )
            conn.execute(sql.SQL("ALTER TABLE audit_events DETACH PARTITION {}").format(ident))
            conn.execute(sql.SQL("DROP TABLE {}").format(ident))
        done.append(part)
    if not dry_run:
        prune_heads(conn, (now or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(days=days))
    return done


def prune_heads(conn: psycopg.Connection[Any], before: dt.datetime) -> int:
    """Drop stream heads written before ``before`` that a later head of their stream supersedes (the
    table's trigger refuses any other delete): the history stays as long as the records."""
    with conn.transaction():
        cur = conn.execute(
            "DELETE FROM audit_stream_heads h WHERE h.at < %s AND EXISTS "
            "(SELECT 1 FROM audit_stream_heads n WHERE n.stream_id = h.stream_id AND n.id > h.id)",
            (before,),
        )
    return cur.rowcount


def _lines(paths: Iterable[Path]) -> Iterable[dict[str, Any]]:
    for path in paths:
        with gzip.open(path, "rb") as f:
            for line in f:
                if line.strip():
                    yield orjson.loads(line)


def verify_archives(paths: list[Path]) -> VerifyReport:
    """Re-check chains inside retention archives (give every archive of a period to check across months)."""
    report = VerifyReport()
    by_stream: dict[str, list[dict[str, Any]]] = {}
    for event in _lines(sorted(paths)):
        by_stream.setdefault(str(event["stream_id"]), []).append(event)
    for stream, events in by_stream.items():
        report.streams += 1
        events.sort(key=lambda e: int(e["sequence"]))
        prev_seq, prev_hash = 0, None
        for e in events:
            report.rows += 1
            seq = int(e["sequence"])
            attrs = e["attributes"]
            computed = contract.chain_hash(contract.canonical_bytes(
                time_unix_nano=int(e["time_unix_nano"]), event_name=e["event_name"],
                severity_number=int(e["severity_number"]), body=e["body"], trace_id=e["trace_id"],
                span_id=e["span_id"], attributes=attrs,
            ))
            if computed != attrs.get("audit.chain.hash"):
                _add(report, Break("modified", stream, seq, "archived record does not match its hash",
                                   None, e["time"], computed, attrs.get("audit.chain.hash")))
            expected = contract.GENESIS if seq == 1 else (prev_hash if seq == prev_seq + 1 else None)
            if expected is not None and attrs.get("audit.chain.prev") != expected:
                _add(report, Break("chain_break", stream, seq, "archived link does not match",
                                   None, e["time"], expected, attrs.get("audit.chain.prev")))
            elif prev_seq and seq > prev_seq + 1:
                _add(report, Break("gap", stream, seq, f"sequence {prev_seq + 1}..{seq - 1} missing",
                                   None, e["time"]))
            prev_seq, prev_hash = seq, attrs.get("audit.chain.hash")
    return report


def _add(report: VerifyReport, b: Break) -> None:
    report.total_breaks += 1
    report.breaks.append(b)
