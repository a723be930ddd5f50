"""Ingest: validate audit records, check each stream's sequence and chain, COPY them in one transaction."""

from __future__ import annotations

import contextlib
import itertools
import operator
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.string import BytesBinaryDumper

from secret_audit.store._bounds import HELD_KIND, TimeBounds, Window
from secret_audit.store._live import CHANNEL, LiveBus, announcements
from secret_audit.store._otlp import RecordTuple
from secret_audit.store._prepare import (
    P_INDEX,
    P_ROW,
    P_SEQUENCE,
    ROW_ID,
    ROW_STREAM,
    ROW_TENANT,
    ROW_TIME,
    Prepared,
    prepare,
)
from secret_audit.store._results import Finding, IngestResult
from secret_audit.store._rows import COLUMN_TYPES, COLUMNS, is_audit_event, time_of_stamp
from secret_audit.store._walk import Walk
from secret_audit.store.migrations import ensure_partitions

try:
    from secret_audit.store import _native
except ImportError:  # not built: psycopg formats the rows
    _native = None  # type: ignore[assignment]

__all__ = ["Finding", "IngestResult", "Ingestor"]

_COPY = "COPY audit_events (id, {}) FROM STDIN (FORMAT BINARY)".format(", ".join(COLUMNS))
# jsonb columns arrive already in jsonb's binary form: sent as bytea they pass through psycopg untouched
# (binary COPY carries no type oids; the server reads them with jsonb's own receive function)
# (the time column likewise arrives as its int8 microseconds: see _rows.stamp_of)
_TYPES = ("int8", *("bytea" if t == "jsonb" else "int8" if t == "timestamptz" else t for t in COLUMN_TYPES))
# The same types as _native.encode_rows's codes, for its binary COPY without psycopg's row formatter.
_CODES = bytes(
    {"int8": ord("q"), "int2": ord("h"), "float8": ord("d"), "text": ord("t"), "bytea": ord("b")}[t]
    for t in _TYPES
)
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # binary COPY's header: signature, flags, no extension
_TRAILER = b"\xff\xff"
_CHUNK = 64  # rows per write: about 40 kB, so the server digests the rows while the next are made
_DAY_US = 86_400_000_000
_BY_SEQUENCE = operator.itemgetter(P_SEQUENCE)
_ROW_SERVICE = 1 + COLUMNS.index("service_name")
# The request's streams, in one round trip of pipelined statements: each stream locked (an advisory
# lock per stream, taken in key order so that concurrent requests cannot deadlock; the app role may not
# lock rows), registered if new (audit_streams is append-only: a stream's tenant is its first
# record's), then their tenants and heads read (a head is the stream's latest audit_stream_heads row),
# with the commit's clock and the first id of each block of ids the request needs. The sequence steps
# by a block (schema version 4: ID_BLOCK); its step is read with the ids, so any step gives unique ids.
_LOCK = """
SELECT count(pg_advisory_xact_lock(7461628, k))
FROM (SELECT DISTINCT hashtext(s) AS k FROM unnest(%s::text[]) AS s ORDER BY 1) AS keys
"""
_REGISTER = """
INSERT INTO audit_streams (stream_id, tenant, service_name)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])
ON CONFLICT (stream_id) DO NOTHING
"""
_HEADS = """
SELECT now(), step,
       array(SELECT nextval('audit_events_id_seq') FROM generate_series(1, (%s + step - 1) / step)),
       (SELECT array_agg(ARRAY[s.stream_id, s.tenant, coalesce(h.last_sequence, 0)::text,
                               coalesce(h.last_hash, ''), coalesce(h.record_count, 0)::text,
                               coalesce(h.findings, 0)::text])
        FROM audit_streams s
        LEFT JOIN LATERAL (
            SELECT last_sequence, last_hash, record_count, findings FROM audit_stream_heads h
            WHERE h.stream_id = s.stream_id ORDER BY h.id DESC LIMIT 1
        ) h ON true
        WHERE s.stream_id = ANY(%s::text[]))
FROM (SELECT seqincrement AS step FROM pg_sequence WHERE seqrelid = 'audit_events_id_seq'::regclass) s
"""
# Each stream's new head (it moves forward, never back: late records fill gaps below it) and its counts
# so far, appended to the history.
_ADVANCE = """
INSERT INTO audit_stream_heads (stream_id, last_sequence, last_hash, record_count, findings)
SELECT * FROM unnest(%s::text[], %s::int8[], %s::text[], %s::int8[], %s::int8[])
"""


class Ingestor:
    """Turns decoded requests into committed rows; one instance per store process, thread-safe."""

    def __init__(
        self, non_audit: str = "reject", native: bool = True, bounds: TimeBounds | None = None
    ) -> None:
        self.non_audit = non_audit
        self.bounds = bounds  # record times outside them are stored at the receive time (None: any time)
        # the C COPY encoder when built (and not turned off), else psycopg's
        self.native = native and _native is not None
        self.live: LiveBus | None = None  # set by a serving store: commits announced to other processes
        self._months: set[tuple[int, int]] = set()
        self._lock = threading.Lock()

    def ingest(
        self,
        conn: psycopg.Connection[Any],
        records: Sequence[RecordTuple],
        scope_tenant: str | None = None,
        refuse: frozenset[str] = frozenset(),
    ) -> IngestResult:
        """Store every acceptable record of one request atomically and report what happened; records
        named in ``refuse`` are refused (event names that only the store itself writes)."""
        result = IngestResult()
        by_stream: dict[str, list[Prepared]] = defaultdict(list)
        resources: dict[int, Any] = {}
        window = self.bounds.window() if self.bounds is not None else None
        low, high = (window.low, window.high) if window is not None else (0, 0)
        held: dict[int, int] = {}  # records stored at the receive time: index -> their own time's stamp
        for i, rec in enumerate(records):
            name = rec[5]  # event_name
            if name != "secret.access":
                if not is_audit_event(name):
                    if self.non_audit == "drop":
                        result.dropped_non_audit += 1
                    else:
                        result.reject(i, f"event_name {name!r} is not an audit record")
                    continue
                if name in refuse:
                    result.reject(i, f"event_name {name!r} is written only by the audit store itself")
                    continue
            p = prepare(i, rec, scope_tenant, resources)
            if isinstance(p, str):
                result.reject(i, p)
            else:
                row = p[P_ROW]
                if window is not None and not low <= row[ROW_TIME] <= high:
                    held[i] = row[ROW_TIME]
                    row[ROW_TIME] = window.now
                by_stream[row[ROW_STREAM]].append(p)
        if not by_stream:
            return result
        days = {p[P_ROW][ROW_TIME] // _DAY_US for ps in by_stream.values() for p in ps}
        months = {(t.year, t.month) for t in (time_of_stamp(d * _DAY_US) for d in days)}
        with self._lock:
            missing = months - self._months
        if missing:
            with conn.transaction():
                ensure_partitions(conn, missing)
            if conn.autocommit:  # committed for good only outside a caller's transaction
                with self._lock:
                    self._months |= missing
        if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
            # our own transaction, begun and committed in the round trips that carry the first and
            # last statements (psycopg's transaction() would take one more round trip for each)
            try:
                self._write(conn, by_stream, result, own=True, held=held, window=window)
            except BaseException:
                if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                raise
        else:  # a caller's transaction (our part is a savepoint in it), or a non-autocommit connection
            with conn.transaction():
                self._write(conn, by_stream, result, own=False, held=held, window=window)
        return result

    def _write(
        self,
        conn: psycopg.Connection[Any],
        by_stream: dict[str, list[Prepared]],
        result: IngestResult,
        own: bool,
        held: dict[int, int],
        window: Window | None,
    ) -> None:
        streams = sorted(by_stream)
        first = [by_stream[s][0] for s in streams]
        # One round trip registers new streams, locks every stream of the request (in stream order, so
        # concurrent requests cannot deadlock), reads their heads, and draws row ids for every record
        # that may be kept (a duplicate's id is simply never used).
        with conn.pipeline() if own else contextlib.nullcontext():
            if own:
                conn.execute("BEGIN")
            names = _array(streams)
            conn.execute(_LOCK, (names,))
            conn.execute(_REGISTER, (names, _array([p[P_ROW][ROW_TENANT] for p in first]),
                                     _array([p[P_ROW][_ROW_SERVICE] for p in first])))
            drawn = conn.execute(
                _HEADS, (sum(len(ps) for ps in by_stream.values()), names), binary=True
            ).fetchone()
        assert drawn is not None
        state = {r[0]: (r[1], int(r[2]), r[3], int(r[4]), int(r[5])) for r in drawn[3]}
        walks: list[Walk] = []
        for s in streams:
            tenant, head_seq, head_hash, _, _ = state[s]
            kept = []
            for p in sorted(by_stream[s], key=_BY_SEQUENCE):
                if p[P_ROW][ROW_TENANT] != tenant:
                    result.reject(p[P_INDEX], "audit.stream.id belongs to another tenant")
                else:
                    kept.append(p)
            if kept:
                walks.append(Walk(conn, s, tenant, head_seq, head_hash, kept, result))
        if not walks:
            if own:
                conn.execute("COMMIT")  # the streams registered above
            return
        result.received_at = drawn[0]
        step = drawn[1]
        ids = itertools.chain.from_iterable(range(base, base + step) for base in drawn[2])
        rows: list[list[Any]] = []
        kept_held: list[tuple[str, str | None, int, int]] = []
        # Hashing and row building happen while the server already digests the rows sent so far.
        with conn.cursor() as cur:
            # psycopg's default bytea dumper (it also unwraps DB-API Binary objects) runs in Python
            cur.adapters.register_dumper(None, BytesBinaryDumper)
            with cur.copy(_COPY) as copy:
                if self.native:
                    # the whole binary stream is ours: header, rows a chunk at a time, trailer
                    write, encode = copy.write, _native.encode_rows
                    write(_SIGNATURE)
                    sent = 0
                    for _ in _kept_rows(walks, ids, rows, held, kept_held):
                        if len(rows) - sent == _CHUNK:
                            write(encode(rows[sent:], _CODES))
                            sent = len(rows)
                    write(encode(rows[sent:], _CODES) + _TRAILER)
                else:
                    copy.set_types(_TYPES)
                    write_row = copy.write_row
                    for row in _kept_rows(walks, ids, rows, held, kept_held):
                        write_row(row)
        if kept_held and self.bounds is not None and window is not None:
            for stream, tenant, lo, hi, detail, stored in self.bounds.runs(kept_held, window.now):
                result.findings.append(Finding(HELD_KIND, stream, lo, detail, expected=stored, tenant=tenant,
                                               range_first=lo, range_last=hi))
                result.warnings.append(f"stream {stream}, {detail}")
        per_stream: dict[str, int] = defaultdict(int)
        for f in result.findings:
            if f.kind != "gap_filled":  # a fill is good news, not a problem
                per_stream[f.stream_id] += 1
        updates = [
            (w.stream, w.head_seq, w.head_hash, state[w.stream][3] + w.stored,
             state[w.stream][4] + per_stream[w.stream])
            for w in walks
            if w.stored or w.head_seq != w.start_seq
        ]
        live = self.live
        with conn.pipeline() if own else contextlib.nullcontext():
            if result.findings:
                _insert_findings(conn, result.findings)
            if live is not None and live.wanted and rows:
                # delivered with the commit, to the other store processes' live streams
                stamps = [r[ROW_TIME] for r in rows]
                bounds = [time_of_stamp(min(stamps)), time_of_stamp(max(stamps))]
                for note in announcements(live.origin, [r[ROW_ID] for r in rows], bounds):
                    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, note))
            if updates:
                conn.execute(_ADVANCE, [_array(column) for column in zip(*updates, strict=True)])
            if own:
                conn.execute("COMMIT")
        result.accepted = len(rows)
        result.rows = rows


def _array(values: Sequence[str | int | None]) -> str:
    """A PostgreSQL array literal of text or integers (the statements cast it): psycopg dumps a str in C,
    where a list goes through its Python array dumper, 0.2 ms a request."""
    return "{" + ",".join("NULL" if v is None else str(v) if isinstance(v, int)
                          else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


def _kept_rows(
    walks: list[Walk],
    ids: Iterator[int],
    rows: list[list[Any]],
    held: dict[int, int],
    kept_held: list[tuple[str, str | None, int, int]],
) -> Iterator[list[Any]]:
    """Each stored record's row, given its id and kept in ``rows``, as the walks judge them; the held
    records stored (see _bounds) are noted in ``kept_held``."""
    append = rows.append
    for walk in walks:
        for p in walk.run():
            row = p[P_ROW]
            row[ROW_ID] = next(ids)
            append(row)
            if held and p[P_INDEX] in held:
                kept_held.append((walk.stream, walk.tenant, p[P_SEQUENCE], held[p[P_INDEX]]))
            yield row


def _insert_findings(conn: psycopg.Connection[Any], findings: list[Finding]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO audit_findings "
            "(tenant, stream_id, kind, sequence, detail, expected, actual, range_first, range_last) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(f.tenant, f.stream_id, f.kind, f.sequence, f.detail, f.expected, f.actual, f.range_first,
              f.range_last) for f in findings],
        )
