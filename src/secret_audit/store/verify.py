"""Offline re-verification of every stored stream: hashes, links, sequences and stream heads."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from secret_audit import contract
from secret_audit.store._columns import COLUMN_KINDS, NO_STREAM, ColumnCheck
from secret_audit.store._query import Filters, and_all, where_clause
from secret_audit.store._rows import Owner, canonical_of_row, link_of, owner_of

__all__ = ["Break", "VerifyReport", "verify"]

# kinds that mean the stored trail differs from what was produced (as opposed to a reported loss).
BREAK_KINDS = (
    "modified",
    "chain_break",
    "gap",
    "duplicate_sequence",
    "unregistered_stream",
    "head_mismatch",
    "count_mismatch",
    *COLUMN_KINDS,
)


@dataclass
class Break:
    """One verification failure with the evidence an auditor needs to look at the row."""

    kind: str
    stream_id: str
    sequence: int | None
    detail: str
    row_id: int | None = None
    time: str | None = None
    expected: str | None = None
    actual: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the CLI and the API."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class VerifyReport:
    """The result of a verification run: counts, the first break, and every break found (capped)."""

    rows: int = 0
    streams: int = 0
    breaks: list[Break] = field(default_factory=list)
    reported_losses: int = 0
    rebuilt: int = 0  # records a successor stream built again after its predecessor's agent died
    total_breaks: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing in the window was modified, deleted, inserted or reordered."""
        return self.total_breaks == 0

    @property
    def first_break(self) -> Break | None:
        """The earliest break by record time, the one to investigate first."""
        if not self.breaks:
            return None
        return min(self.breaks, key=lambda b: (b.time is None, b.time or "", b.row_id or 0))

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the CLI and the API."""
        first = self.first_break
        return {
            "ok": self.ok,
            "rows": self.rows,
            "streams": self.streams,
            "breaks": self.total_breaks,
            "reported_losses": self.reported_losses,
            "rebuilt": self.rebuilt,
            "first_break": first.as_dict() if first else None,
            "details": [b.as_dict() for b in self.breaks],
        }


_MAX_KEPT = 1000


class _Walker:
    """Walks one stream's rows in sequence order, comparing each with its predecessor."""

    def __init__(
        self,
        report: VerifyReport,
        registry: dict[str, tuple[int, str, int, int, str]],
        tenants: dict[str, str | None] | None = None,
        columns: ColumnCheck | None = None,
    ) -> None:
        self.report = report
        self.registry = registry
        self.tenants = tenants or {}
        self.columns = columns or ColumnCheck({})
        self.stream: str | None = None
        self.prev_seq = 0
        self.prev_hash: str | None = None
        self.count = 0
        self.losses: list[tuple[int, int]] = []
        self.pending: list[Break] = []
        self.whole = True
        self.links: dict[str, tuple[str, int, int, str, Owner]] = {}  # stream -> its successor's first record
        self.ends: dict[str, int] = {}  # stream -> its last stored sequence
        self.owners: dict[str, Owner] = {}  # stream -> the producer its rows name

    def add(self, b: Break) -> None:
        self.report.total_breaks += 1
        if len(self.report.breaks) < _MAX_KEPT:
            self.report.breaks.append(b)

    def start(self, conn: psycopg.Connection[Any], row: dict[str, Any], whole: bool) -> None:
        self.stream = row["stream_id"]
        self.owners[str(self.stream)] = owner_of(row)
        self.count = 0
        self.losses = []
        self.pending = []
        self.whole = whole
        self.report.streams += 1
        seq = int(row["sequence"])
        self.prev_seq, self.prev_hash = 0, None
        if seq > 1:
            before = conn.execute(
                "SELECT sequence, chain_hash FROM audit_events WHERE stream_id = %s AND sequence < %s "
                "ORDER BY sequence DESC LIMIT 1",
                (self.stream, seq),
            ).fetchone()
            reg = self.registry.get(str(self.stream))
            if before is not None:
                self.prev_seq, self.prev_hash = int(before[0]), str(before[1])
            elif reg is not None and reg[3] >= seq - 1:
                # Everything before this row went to a retention archive; link to its recorded head.
                self.prev_seq = seq - 1
                self.prev_hash = reg[4] if reg[3] == seq - 1 else None
        if self.stream not in self.registry:
            self.add(Break("unregistered_stream", str(self.stream), seq,
                           "rows exist for a stream the store never ingested",
                           int(row["id"]), _iso(row["time"])))

    def row(self, row: dict[str, Any]) -> str:
        """Check one row against its predecessor; returns the hash recomputed from its content."""
        seq = int(row["sequence"])
        stream = str(self.stream)
        where = (int(row["id"]), _iso(row["time"]))
        computed = contract.chain_hash(canonical_of_row(row))
        if computed != row["chain_hash"]:
            self.add(Break("modified", stream, seq, "the row's content does not match its chain hash",
                           *where, computed, row["chain_hash"]))
        for kind, detail, expected, actual in self.columns.problems(row, self.tenants.get(stream, NO_STREAM)):
            self.add(Break(kind, stream, seq, detail, *where, expected, actual))
        if seq == self.prev_seq:
            self.add(Break("duplicate_sequence", stream, seq, "two rows carry the same sequence", *where))
        elif seq == 1 or seq == self.prev_seq + 1:
            expected = contract.GENESIS if seq == 1 else self.prev_hash
            if expected is not None and row["chain_prev"] != expected:
                self.add(Break("chain_break", stream, seq,
                               "audit.chain.prev does not match the previous row's hash",
                               *where, expected, row["chain_prev"]))
        elif seq > self.prev_seq + 1:
            first, last = self.prev_seq + 1, seq - 1
            self.pending.append(
                Break("gap", stream, seq, f"sequence {first}..{last} missing before this row", *where,
                      None, f"{first}..{last}")
            )
        if (link := link_of(row)) is not None:
            self.links[link[0]] = (stream, link[1], *where, owner_of(row))
        if row["event_name"] == "audit.dropped":
            a = row["attributes"]
            lo, hi = a.get("audit.dropped.first_sequence"), a.get("audit.dropped.last_sequence")
            if isinstance(lo, int) and isinstance(hi, int):
                self.losses.append((lo, hi))
        self.prev_seq, self.prev_hash = seq, str(row["chain_hash"])
        self.count += 1
        return computed

    def settle_links(self, conn: psycopg.Connection[Any]) -> None:
        """Check each stream a successor's first record (``audit.stream.continued``) says ended when its
        audit agent died: the producer must be the same; every record up to the named sequence was
        durable and must be stored (``cut``, whatever the stream's head says); records past it were
        delivered unacknowledged, and the successor's copies of them are counted as ``rebuilt``."""
        for stream, (successor, last, row_id, time, owner) in self.links.items():
            if self.owners.get(stream, owner) != owner:
                self.add(Break("bad_link", successor, 1, f"its first record names stream {stream} of another "
                               "producer (service, instance or tenant) as the one it continues: forged",
                               row_id, time))
                continue
            stored = self.ends.get(stream, 0)
            if stored < last:
                self.add(Break("cut", stream, stored + 1,
                               f"sequence {stored + 1}..{last} missing: stream {successor} continues this "
                               "one and its first record says the producer's audit agent had made them "
                               "durable (sent or spooled) before it died", row_id, time, str(last),
                               str(stored)))
            elif stored > last:
                self.report.rebuilt += _copies(conn, stream, last, successor)

    def _explained(self, first: int, last: int) -> bool:
        # The producer reports export losses in a later audit.dropped record; those gaps are not tampering.
        for lo, hi in self.losses:
            if lo <= first and last <= hi:
                self.report.reported_losses += last - first + 1
                return True
        return False

    def finish(self) -> None:
        for gap in self.pending:
            first, _, last = str(gap.actual).partition("..")
            if not self._explained(int(first), int(last)):
                self.add(gap)
        self.pending = []
        if self.stream is None or not self.whole:
            return
        self.ends[self.stream] = self.prev_seq
        reg = self.registry.get(self.stream)
        if reg is None:
            return
        last_seq, last_hash, count, _, _ = reg
        if last_seq != self.prev_seq or last_hash != self.prev_hash:
            self.add(Break("head_mismatch", self.stream, self.prev_seq,
                           f"the stream's last stored row is {self.prev_seq}, "
                           f"the store ingested up to {last_seq}",
                           None, None, last_hash, self.prev_hash))
        elif count != self.count:
            self.add(Break("count_mismatch", self.stream, None,
                           f"{self.count} rows stored, {count} ingested"))


def _copies(conn: psycopg.Connection[Any], stream: str, last: int, successor: str) -> int:
    """How many of ``successor``'s records repeat one of ``stream``'s past ``last``: the same access (its
    time, trace and span ids, event and body), built again from the ring after the agent died."""
    row = conn.execute(
        "SELECT count(*) FROM audit_events s WHERE s.stream_id = %s AND s.sequence > 1 AND EXISTS ("
        "SELECT 1 FROM audit_events p WHERE p.stream_id = %s AND p.sequence > %s "
        "AND p.time_unix_nano = s.time_unix_nano AND p.event_name = s.event_name AND p.body = s.body "
        "AND p.trace_id IS NOT DISTINCT FROM s.trace_id AND p.span_id IS NOT DISTINCT FROM s.span_id)",
        (successor, stream, last),
    ).fetchone()
    return int(row[0]) if row else 0


def _iso(value: dt.datetime) -> str:
    return value.isoformat()


def verify(
    conn: psycopg.Connection[Any],
    *,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    tenant: str | None = None,
    progress: Callable[[int], None] | None = None,
    also: Callable[[dict[str, Any], str], None] | None = None,
) -> VerifyReport:
    """Re-check every row in the window (default: the whole store) and report all breaks.

    ``also`` sees every row, in stream and sequence order, with the hash recomputed from its content
    (the signed and reconciling checks ride on this one scan).
    """
    report = VerifyReport()
    conds, params = where_clause(Filters(start=start, end=end), tenant)
    whole = start is None and end is None
    registry = {}
    tenants = {}
    for r in conn.execute(
        "SELECT stream_id, last_sequence, last_hash, record_count, archived_count, archived_through, "
        "archived_hash, tenant FROM audit_stream_state"
    ):
        registry[str(r[0])] = (int(r[1]), str(r[2]), int(r[3]) - int(r[4]), int(r[5]), str(r[6]))
        tenants[str(r[0])] = r[7]
    seen: set[str] = set()
    walker = _Walker(report, registry, tenants, ColumnCheck.load(conn))
    with conn.transaction(), conn.cursor("verify_scan", row_factory=dict_row) as cur:
        cur.itersize = 2000
        cur.execute(
            sql.SQL("SELECT * FROM audit_events WHERE {} ORDER BY stream_id, sequence, id").format(
                and_all(conds)
            ),
            params,
        )
        batch = 0
        for row in cur:
            if row["stream_id"] != walker.stream:
                walker.finish()
                walker.start(conn, row, whole)
                seen.add(row["stream_id"])
            computed = walker.row(row)
            if also is not None:
                also(row, computed)
            report.rows += 1
            batch += 1
            if progress is not None and batch >= 1000:
                progress(batch)
                batch = 0
        walker.finish()
        if progress is not None and batch:
            progress(batch)
    if whole:
        walker.settle_links(conn)
        for stream, (last_seq, _, left, _, _) in registry.items():
            if stream not in seen and left > 0 and (tenant is None or _tenant_of(conn, stream) == tenant):
                walker.add(Break("head_mismatch", stream, None,
                                 f"the store ingested up to sequence {last_seq} but no row is left"))
    return report


def _tenant_of(conn: psycopg.Connection[Any], stream: str) -> str | None:
    row = conn.execute("SELECT tenant FROM audit_streams WHERE stream_id = %s", (stream,)).fetchone()
    return None if row is None else row[0]
