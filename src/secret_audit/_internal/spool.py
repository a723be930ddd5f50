"""A durable, bounded, append-only spool of encoded export requests, kept while the endpoint is down.

SQLite gives atomic appends, fsync'd commits (``synchronous=FULL``) and safe concurrent use by
several processes sharing one directory (forked workers), without a file format of our own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sqlite3
import time
import weakref
from pathlib import Path
from typing import Any, NamedTuple

from secret_audit._internal.spooldir import EMPTY_FILE, SPOOL_FILE

__all__ = ["Spool", "SpooledBatch"]

_log = logging.getLogger("secret_audit")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    records INTEGER NOT NULL,
    body BLOB NOT NULL,
    created_ns INTEGER NOT NULL
)
"""


class SpooledBatch(NamedTuple):
    """One export request waiting in the spool, oldest first."""

    id: int
    stream: str
    first_seq: int
    last_seq: int
    records: int
    body: bytes
    # Loss reports (``audit.dropped`` records) inside ``body``, as JSON: {"<sequence>": what they
    # report}, so a refused request's reports can be made again rather than lost with it.
    reports: str | None = None


class Spool:
    """Append-only while the exporter is failing; drained in order once it answers again."""

    FILENAME = SPOOL_FILE

    def __init__(self, directory: str, max_bytes: int, *, create: bool = True) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.path = self.directory / self.FILENAME
        self._claim_path = self.directory / (self.FILENAME + ".replay")  # locked by the replaying process
        self._empty_path = self.directory / EMPTY_FILE
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"no audit spool in {self.directory} (no {self.FILENAME} there)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=False, timeout=5.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(_SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(batches)")}
        if "reports" not in columns:  # a spool written by version 0.1.0
            with contextlib.suppress(sqlite3.OperationalError):  # another process added it first
                self._conn.execute("ALTER TABLE batches ADD COLUMN reports TEXT")
        self._pid = os.getpid()
        # The last request this process replayed. Forgetting it needs a write (a DELETE goes
        # through the WAL too), which a full disk refuses: then the replay moves on anyway, and
        # the rows are deleted later, or replayed again by a later process (the store deduplicates).
        self._done = 0
        self._claim: int | None = None  # the replay claim's file descriptor, while held
        _SPOOLS.add(self)
        self._note_if_empty()

    def _bytes(self) -> int:
        row = self._conn.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM batches").fetchone()
        return int(row[0])

    def stats(self) -> dict[str, int]:
        """Batches, records and bytes waiting, for health checks and reports."""
        row = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(records), 0), COALESCE(SUM(LENGTH(body)), 0) FROM batches "
            "WHERE id > ?",
            (self._done,),
        ).fetchone()
        return {"batches": int(row[0]), "records": int(row[1]), "bytes": int(row[2])}

    def append(
        self,
        stream: str,
        first_seq: int,
        last_seq: int,
        records: int,
        body: bytes,
        reports: str | None = None,
    ) -> bool:
        """Durably append one request; False when the bound would be exceeded or the disk refuses."""
        try:
            if self._bytes() + len(body) > self.max_bytes:
                return False
            self._unmark()  # before the row lands, should this process die right after it
            self._conn.execute(
                "INSERT INTO batches (stream, first_seq, last_seq, records, body, created_ns, reports) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (stream, first_seq, last_seq, records, body, time.time_ns(), reports),
            )
            self._unmark()  # and after: another process may have marked it empty in between
            return True
        except sqlite3.Error as exc:
            _log.error("secret-audit: cannot write the audit spool %s: %s", self.path, exc)
            return False

    def pending(self) -> bool:
        """True when anything waits to be replayed."""
        try:
            row = self._conn.execute("SELECT 1 FROM batches WHERE id > ? LIMIT 1", (self._done,)).fetchone()
            return row is not None
        except sqlite3.Error:
            return False

    def oldest(self, max_bytes: int = 0) -> list[SpooledBatch]:
        """The next requests to replay, in the order they were spooled: as many as fit in
        ``max_bytes`` together, and always at least one if any waits. Nothing while another process
        holds the replay claim: this takes it, and the caller gives it back with ``release``."""
        if not self.claim():
            return []
        rows = self._conn.execute(
            "SELECT id, stream, first_seq, last_seq, records, body, reports FROM batches "
            "WHERE id > ? ORDER BY id LIMIT 256",
            (self._done,),
        )
        out: list[SpooledBatch] = []
        size = 0
        for row in rows:
            body = bytes(row[5])
            if out and size + len(body) > max_bytes:
                break
            size += len(body)
            ids = (int(row[0]), str(row[1]), int(row[2]), int(row[3]), int(row[4]))
            out.append(SpooledBatch(*ids, body, row[6]))
        return out

    def remove(self, batch_id: int) -> None:
        """Forget a request the endpoint acknowledged (and any earlier one a full disk kept)."""
        self._done = max(self._done, batch_id)
        try:
            self._conn.execute("DELETE FROM batches WHERE id <= ?", (self._done,))
        except sqlite3.Error as exc:
            _log.warning("secret-audit: cannot delete replayed requests from the audit spool %s: %s",
                         self.path, exc)
        self._note_if_empty()

    def _note_if_empty(self) -> None:
        """Mark the spool empty, so later processes skip replaying it at start (``leftover_spool``).

        Processes share the spool: a writer removes the mark after its row lands (and before), and
        this looks again after making it, so whichever comes last, a row leaves the spool unmarked.
        The mark is only a hint: a spool marked wrongly empty is still replayed, at a first record.
        """
        try:
            if self._conn.execute("SELECT 1 FROM batches LIMIT 1").fetchone() is not None:
                return
            self._empty_path.touch()
            if self._conn.execute("SELECT 1 FROM batches LIMIT 1").fetchone() is not None:
                self._empty_path.unlink(missing_ok=True)
        except (OSError, sqlite3.Error):
            return

    def _unmark(self) -> None:
        """Take the empty mark away: a row is about to wait, or just did."""
        with contextlib.suppress(OSError):
            self._empty_path.unlink(missing_ok=True)

    def claim(self) -> bool:
        """Take the spool's replay claim, or return False while another process (or Spool) holds it.

        Only the holder sends spooled requests, and it deletes what the endpoint acknowledged before
        letting go, so processes sharing the spool (forked workers, `secret-audit spool replay`) never
        send one twice, and each stream still goes out in order. The claim is a kernel lock on a file
        beside the spool (flock), not a lease: it lasts exactly as long as its holder, and is freed
        when the holder dies, however it dies, where a lease could run out under a slow request.
        """
        if self._claim is not None:
            return True
        try:
            fd = os.open(self._claim_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:  # replaying without the claim beats never replaying
            _log.warning("secret-audit: cannot take the audit spool's replay claim %s (%s); replaying "
                         "without it, so a process sharing the spool may send a request again",
                         self._claim_path, exc)
            return True
        if not _lock(fd):
            os.close(fd)
            return False
        self._claim = fd
        return True

    def release(self) -> None:
        """Give the replay claim back, if held."""
        fd, self._claim = self._claim, None
        if fd is not None:
            _unlock(fd)
            os.close(fd)

    def claimed_elsewhere(self) -> bool:
        """True while another process (or Spool) holds the replay claim, without creating anything."""
        if self._claim is not None:
            return False
        try:
            fd = os.open(self._claim_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False  # nobody has ever taken the claim on this spool
        try:
            free = _lock(fd)
            if free:
                _unlock(fd)
            return not free
        finally:
            os.close(fd)

    def summary(self) -> dict[str, Any]:
        """What waits, for `secret-audit spool status`: totals, the oldest entry and each stream."""
        total = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(records), 0), COALESCE(SUM(LENGTH(body)), 0), MIN(created_ns) "
            "FROM batches WHERE id > ?", (self._done,)
        ).fetchone()
        streams = [
            {"stream": r[0], "batches": int(r[1]), "records": int(r[2]), "first_sequence": int(r[3]),
             "last_sequence": int(r[4]), "oldest": _iso(r[5])}
            for r in self._conn.execute(
                "SELECT stream, COUNT(*), SUM(records), MIN(first_seq), MAX(last_seq), MIN(created_ns) "
                "FROM batches WHERE id > ? GROUP BY stream ORDER BY MIN(id)", (self._done,)
            )
        ]
        return {"path": str(self.path), "batches": int(total[0]), "records": int(total[1]),
                "bytes": int(total[2]), "oldest": _iso(total[3]), "streams": streams}

    def close(self) -> None:
        self.release()
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()


def _iso(created_ns: int | None) -> str | None:
    if created_ns is None:
        return None
    return dt.datetime.fromtimestamp(created_ns / 1e9, dt.timezone.utc).isoformat()


def _lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no claim between processes
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _unlock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


_SPOOLS: weakref.WeakSet[Spool] = weakref.WeakSet()


def _forget_claims_in_child() -> None:
    """A child forked while its parent held a claim shares the lock; closing (never unlocking) its copy
    leaves the claim to the parent alone, so the claim still ends with the parent."""
    for spool in list(_SPOOLS):
        fd, spool._claim = spool._claim, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_claims_in_child)
