"""Live streams across store processes: commits announced by NOTIFY while another process watches."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import psycopg

from secret_audit.store._hub import Hub

__all__ = ["CHANNEL", "LIVE_NAME", "Announcement", "LiveBus", "announcements"]

_log = logging.getLogger("secret_audit.store")

CHANNEL = "secret_audit_events"  # "these rows were committed": origin, time bounds, id ranges
_PRESENCE = "secret_audit_live"  # "my live subscribers changed": everyone recounts
LIVE_NAME = "secret-audit-live"  # application_name of a bus whose process has live subscribers
_IDLE_NAME = "secret-audit-bus"
_RANGES_PER_NOTE = 100  # NOTIFY payloads must stay under 8000 bytes: 100 ranges take at most ~4.2 kB
_RECOUNT_S = 2.0


class Announcement:
    """One NOTIFY payload read back: which process committed which rows, and their time bounds."""

    __slots__ = ("first", "ids", "last", "origin")

    def __init__(self, payload: str) -> None:
        doc = orjson.loads(payload)
        self.origin: str = doc["o"]
        self.first = dt.datetime.fromisoformat(doc["t"][0])
        self.last = dt.datetime.fromisoformat(doc["t"][1])
        self.ids: list[int] = [i for a, b in doc["i"] for i in range(a, b + 1)]


def announcements(origin: str, ids: list[int], times: list[dt.datetime]) -> list[str]:
    """The NOTIFY payloads naming a commit's rows: time bounds (for the partition and primary key)
    and id ranges, split so that each fits."""
    ranges: list[list[int]] = []
    for i in sorted(ids):
        if ranges and ranges[-1][1] == i - 1:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    bounds = [min(times).isoformat(), max(times).isoformat()]
    return [
        orjson.dumps({"o": origin, "t": bounds, "i": ranges[k:k + _RANGES_PER_NOTE]}).decode()
        for k in range(0, len(ranges), _RANGES_PER_NOTE)
    ]


class LiveBus:
    """One listening connection per store process, on its own thread.

    It tells the other processes when this one has live subscribers (its application_name, then a
    NOTIFY), keeps ``wanted`` true while some other process has any, and turns the other processes'
    announcements into events for this process's subscribers. A NOTIFY holds a global lock through
    its transaction's commit, so commits are announced only while someone elsewhere is watching.
    """

    def __init__(self, url: str, hub: Hub, fetch: Callable[[Announcement], list[dict[str, Any]]]) -> None:
        self.origin = uuid.uuid4().hex
        self.wanted = False
        self._url = url
        self._hub = hub
        self._fetch = fetch
        self._stop = threading.Event()
        self._changed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="secret-audit-live", daemon=True)

    def start(self) -> None:
        """Start listening; the hub reports its subscriber changes here from now on."""
        self._hub.on_presence = self._changed.set
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and close the connection."""
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, application_name=_IDLE_NAME) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    conn.execute(f"LISTEN {_PRESENCE}")
                    self._serve(conn)
            except Exception:  # the database restarts or the network drops: listen again shortly
                self.wanted = True  # until we know better, announce rather than miss events
                _log.warning("secret-audit store: live-stream listener lost its connection", exc_info=True)
                self._stop.wait(1)

    def _serve(self, conn: psycopg.Connection[Any]) -> None:
        self._changed.set()
        recount_at = 0.0
        while not self._stop.is_set():
            if self._changed.is_set():
                self._changed.clear()
                name = LIVE_NAME if self._hub.active else _IDLE_NAME
                conn.execute("SELECT set_config('application_name', %s, false)", (name,))
                conn.execute("SELECT pg_notify(%s, %s)", (_PRESENCE, self.origin))
            if time.monotonic() >= recount_at:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                    "AND datname = current_database() AND pid <> pg_backend_pid()",
                    (LIVE_NAME,),
                ).fetchone()
                self.wanted = bool(row and row[0])
                recount_at = time.monotonic() + _RECOUNT_S
            for note in _notes(conn):
                if note.channel == _PRESENCE:
                    recount_at = 0.0
                elif note.payload:
                    self._deliver(note.payload)

    def _deliver(self, payload: str) -> None:
        try:
            note = Announcement(payload)
        except (ValueError, KeyError, TypeError, IndexError):
            _log.warning("secret-audit store: ignored a malformed live-stream announcement")
            return
        if note.origin == self.origin or not self._hub.active:
            return
        try:
            events = self._fetch(note)
        except psycopg.Error:  # the pool's database is briefly away: keep listening for the next ones
            _log.warning("secret-audit store: could not read announced rows for live streams", exc_info=True)
            return
        if events:
            self._hub.publish(lambda: events)


def _notes(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Notify]:
    # a short wait, so presence changes and the stop flag are seen within a quarter second
    yield from conn.notifies(timeout=0.25)
