"""Alerts on what the store committed: integrity findings, losses, refusals, bursts and first-seen pairs.

Ingest only hands each committed request to a bounded queue; a thread of its own reads the rows,
keeps the burst windows and asks the database whether a principal→secret pair is new, and the
webhook sender delivers. An alert names identifiers only (the records carry no value either).
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import socket
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from typing import Any

import orjson
import psycopg

from secret_audit import contract
from secret_audit.store._ingest import Finding, IngestResult
from secret_audit.store._rows import COLUMNS, time_of_stamp
from secret_audit.store._webhooks import Sender
from secret_audit.store.config import AlertSettings

__all__ = ["Alerts"]

_log = logging.getLogger("secret_audit.store")

_AT = {name: i for i, name in enumerate(("id", *COLUMNS))}
_TAMPER = frozenset({"hash_mismatch", "chain_break", "gap", "duplicate_conflict"})
_FAILED = frozenset({"denied", "not_found"})
_SEVERITY = {
    "integrity": "critical", "loss": "high", "refusal": "high", "burst": "high", "first_seen": "medium",
    "agent_died": "high",
}
_KEYS = 10_000  # burst windows kept (least recently used go first)
_PAIRS = 100_000  # principal→secret pairs remembered as seen, before the database is asked again
_LISTED = 20  # ids, names and findings listed in one alert at most
_SEEN = """
SELECT EXISTS (SELECT 1 FROM audit_events
    WHERE hashtextextended({who}, 0) = hashtextextended(%s, 0) AND {who} = %s {no_user}
      AND hashtextextended(secret_name, 0) = hashtextextended(%s, 0) AND secret_name = %s
      AND event_name = 'secret.access' AND outcome = 'success' AND operation = 'read'
      AND tenant IS NOT DISTINCT FROM %s AND (time, id) < (%s, %s))
"""

Connect = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]


class _Row:
    """The columns of one committed row that the rules read, by name."""

    __slots__ = ("row",)

    def __init__(self, row: list[Any]) -> None:
        self.row = row

    def __getitem__(self, name: str) -> Any:
        return self.row[_AT[name]]

    @property
    def who(self) -> str | None:
        """The accessor: the end user when known, else the service principal."""
        who: str | None = self.row[_AT["enduser_id"]] or self.row[_AT["principal"]]
        return who

    @property
    def seconds(self) -> float:
        """The record's time as Unix seconds (the row holds timestamptz's microseconds since 2000)."""
        return time_of_stamp(self.row[_AT["time"]]).timestamp()

    def attributes(self) -> dict[str, Any]:
        raw = self.row[_AT["attributes"]]
        return dict(orjson.loads(raw[1:])) if raw else {}  # jsonb's binary form: a version byte, then text


class _Window:
    """The failed accesses of one principal or address within the burst window."""

    __slots__ = ("events", "quiet_until")

    def __init__(self) -> None:
        self.events: deque[tuple[float, str, str | None, str]] = deque()
        self.quiet_until = 0.0


class Alerts:
    """One per store process: ``offer`` is all ingest pays; the rest runs on the alert thread."""

    def __init__(self, settings: AlertSettings, connect: Connect | None = None) -> None:
        self.settings = settings
        self.enabled = bool(settings.webhooks and settings.kinds)
        self._connect = connect
        self._kinds = frozenset(settings.kinds)
        self._origin = {"service.name": "secret-audit-store", "host.name": socket.gethostname(),
                        "service.instance.id": str(uuid.uuid4())}
        self._windows: OrderedDict[tuple[str, str | None, str], _Window] = OrderedDict()
        self._pairs: OrderedDict[tuple[str | None, str, bool, str], None] = OrderedDict()
        self.unchecked = 0
        self._inbox: queue.Queue[IngestResult | None] = queue.Queue(settings.queue_size)
        self.sender: Sender | None = None
        self._thread: threading.Thread | None = None
        if self.enabled:
            self.sender = Sender(settings)
            self._thread = threading.Thread(target=self._run, name="secret-audit-alerts", daemon=True)
            self._thread.start()

    # ---- the ingest path ------------------------------------------------------------------------

    def offer(self, result: IngestResult) -> None:
        """Hand a committed request to the alert thread; a full queue is counted, never waited on."""
        if not self.enabled or not (result.rows or result.findings):
            return
        try:
            self._inbox.put_nowait(result)
        except queue.Full:
            self.unchecked += len(result.rows)
            _log.error("secret-audit store: %d records not checked for alerts: the alert queue is full "
                       "(OTEL_PYTHON_SECRET_AUDIT_STORE_ALERT_QUEUE_SIZE)", len(result.rows))

    def verified(self, report: Any, tenant: str | None) -> None:
        """An on-demand verification that found breaks (a head mismatch among them) is an alert too."""
        if not self.enabled or report.ok or "integrity" not in self._kinds:
            return
        kinds: dict[str, int] = {}
        for b in report.breaks:
            kinds[b.kind] = kinds.get(b.kind, 0) + 1
        self._send("integrity", f"verify found {report.total_breaks} breaks ({', '.join(sorted(kinds))})",
                   tenant, {"source": "verify", "breaks": report.total_breaks, "kinds": kinds,
                            "first": [b.as_dict() for b in report.breaks[:_LISTED]]})

    def stats(self) -> dict[str, Any]:
        """Counts for /stats: alerts sent, failed and dropped by kind, records never checked."""
        out: dict[str, Any] = {"enabled": self.enabled, "webhooks": len(self.settings.webhooks),
                               "unchecked_records": self.unchecked, "pending": self._inbox.qsize()}
        if self.sender is not None:
            out.update(self.sender.stats())
        return out

    def close(self, timeout: float = 5.0) -> None:
        """Check what is queued and deliver its alerts within ``timeout``, then stop."""
        if self._thread is None:
            return
        with suppress(queue.Full):
            self._inbox.put(None, timeout=timeout)
        self._thread.join(timeout)
        if self.sender is not None:
            self.sender.close(timeout)

    # ---- the alert thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            result = self._inbox.get()
            if result is None:
                return
            try:
                self._check(result)
            except Exception:  # a rule's bug must not stop the others
                _log.exception("secret-audit store: checking %d records for alerts failed", len(result.rows))

    def _check(self, result: IngestResult) -> None:
        kinds = self._kinds
        if "integrity" in kinds:
            self._integrity(result.findings)
        for raw in result.rows:
            row = _Row(raw)
            event = row["event_name"]
            if event == "audit.dropped" and "loss" in kinds:
                self._reported(row, "loss")
            elif event == "audit.refused" and "refusal" in kinds:
                self._reported(row, "refusal")
            elif event == contract.EVENT_CONTINUED and "agent_died" in kinds:
                self._continued(row)
            if row["outcome"] in _FAILED and "burst" in kinds:
                for by, who in (("principal", row.who), ("client.address", row["client_address"])):
                    if who:
                        self._burst(row, by, who)
            if (event == "secret.access" and row["outcome"] == "success" and row["operation"] == "read"
                    and "first_seen" in kinds and row.who):
                self._first_seen(row)

    def _integrity(self, findings: list[Finding]) -> None:
        by_stream: dict[str, list[Finding]] = {}
        for f in findings:
            if f.kind in _TAMPER:
                by_stream.setdefault(f.stream_id, []).append(f)
        for stream, found in by_stream.items():
            kinds = sorted({f.kind for f in found})
            listed = [{"kind": f.kind, "sequence": f.sequence, "detail": f.detail,
                       "range_first": f.range_first, "range_last": f.range_last} for f in found[:_LISTED]]
            summary = f"stream {stream}: {len(found)} integrity findings on ingest ({', '.join(kinds)})"
            self._send("integrity", summary, found[0].tenant,
                       {"source": "ingest", "stream_id": stream, "findings": listed})

    def _reported(self, row: _Row, kind: str) -> None:
        """A loss (audit.dropped) or refusal (audit.refused) the producer reported in its stream."""
        attrs = row.attributes()
        prefix = "audit.dropped." if kind == "loss" else "audit.refused."
        details = {k: v for k, v in attrs.items() if k.startswith(prefix)}
        details.update(stream_id=row["stream_id"], sequence=row["sequence"], service_name=row["service_name"],
                       principal=row["principal"], event_id=row["event_id"])
        count, reason = attrs.get(prefix + "count"), attrs.get(prefix + "reason")
        what = "audit records lost" if kind == "loss" else "secret calls refused (fail-closed)"
        self._send(kind, f"{row['service_name']}: {count} {what}, {reason}", row["tenant"], details)

    def _continued(self, row: _Row) -> None:
        """A producer's audit agent died: its app now builds records in-process, in a stream that says
        where the agent's ended (``audit.stream.continued``); kill -9 of that app can now lose records."""
        attrs = row.attributes()
        before, last = attrs.get(contract.PREDECESSOR_ID), attrs.get(contract.PREDECESSOR_SEQUENCE)
        details = {contract.PREDECESSOR_ID: before, contract.PREDECESSOR_SEQUENCE: last,
                   "stream_id": row["stream_id"], "service_name": row["service_name"],
                   "service_instance_id": row["service_instance_id"], "event_id": row["event_id"]}
        self._send("agent_died", f"{row['service_name']}: its audit agent died; stream {row['stream_id']} "
                   f"continues stream {before} after its sequence {last}", row["tenant"], details)

    def _burst(self, row: _Row, by: str, who: str) -> None:
        key = (by, row["tenant"], who)
        windows = self._windows
        window = windows.get(key)
        if window is None:
            window = windows[key] = _Window()
            if len(windows) > _KEYS:
                windows.popitem(last=False)
        else:
            windows.move_to_end(key)
        now = row.seconds
        events = window.events
        events.append((now, row["event_id"], row["secret_name"], row["outcome"]))
        span = self.settings.burst_window_s
        while events and events[0][0] < now - span:
            events.popleft()
        if len(events) < self.settings.burst_threshold or now < window.quiet_until:
            return
        window.quiet_until = now + span  # one alert per burst window and key
        outcomes: dict[str, int] = {}
        for e in events:
            outcomes[e[3]] = outcomes.get(e[3], 0) + 1
        names = sorted({e[2] for e in events if e[2]})
        self._send("burst", f"{len(events)} denied or not-found accesses by {by} {who} within {span} s",
                   row["tenant"], {"by": by, by: who, "count": len(events), "window_s": span,
                                   "threshold": self.settings.burst_threshold, "outcomes": outcomes,
                                   "secrets": names[:_LISTED], "distinct_secrets": len(names),
                                   "event_ids": [e[1] for e in events][-_LISTED:],
                                   "first_time": _iso(events[0][0]), "last_time": _iso(now)})

    def _first_seen(self, row: _Row) -> None:
        user = row["enduser_id"]
        who = row.who
        assert who is not None
        key = (row["tenant"], who, user is not None, row["secret_name"])
        pairs = self._pairs
        if key in pairs:
            pairs.move_to_end(key)
            return
        pairs[key] = None
        if len(pairs) > _PAIRS:
            pairs.popitem(last=False)
        if self._seen_before(key, row):
            return
        by = "enduser.id" if user is not None else "audit.principal"
        self._send("first_seen", f"{who} read {row['secret_name']} for the first time", row["tenant"],
                   {"by": by, by: who, "secret.name": row["secret_name"],
                    "secret.source": row["secret_source"], "client.address": row["client_address"],
                    "event_id": row["event_id"], "time": _iso(row.seconds)})

    def _seen_before(self, key: tuple[str | None, str, bool, str], row: _Row) -> bool:
        if self._connect is None:
            return False
        tenant, who, is_user, secret = key
        sql = _SEEN.format(who="enduser_id" if is_user else "principal",
                           no_user="" if is_user else "AND enduser_id IS NULL")
        with self._connect() as conn:
            found = conn.execute(sql, (who, who, secret, secret, tenant, time_of_stamp(row["time"]),
                                       row["id"])).fetchone()
        return bool(found and found[0])

    def _send(self, kind: str, summary: str, tenant: str | None, details: dict[str, Any]) -> None:
        assert self.sender is not None
        message_id = str(uuid.uuid4())
        alert = {"type": "secret_audit.alert", "id": message_id, "kind": kind, "severity": _SEVERITY[kind],
                 "time": _iso(dt.datetime.now(dt.timezone.utc).timestamp()), "summary": summary,
                 "tenant": tenant, "details": details, "origin": self._origin}
        self.sender.send(kind, message_id, orjson.dumps(alert))


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat().replace("+00:00", "Z")

