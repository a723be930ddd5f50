"""Delivery: each sealed batch to its back end, retried with one backoff, spooled while the endpoint is down.

It owns the back end (our OTLP encoder and sender, an SDK exporter, or nothing), the courier
thread that keeps one request on the wire and the next sealed batch behind it while the worker
builds a third (requests still leave one at a time, in order: after a failed one the courier sends
nothing more until the worker has retried or spooled it and those behind it), the spool, its
replay (oldest first, under the spool's replay claim) and the probe that tells a degraded pipeline
the endpoint is back. It never calls back: each step returns verdicts (``DELIVERED``, ``SPOOLED``,
``REPLAYED``, ``REFUSED``, ``LOST``) for the worker to act on and the ledger to count.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

from secret_audit._internal.config import PREFIX
from secret_audit._internal.courier import UNSENT, Courier, send
from secret_audit._internal.senders import SendResult
from secret_audit._internal.sinks import Sink

if TYPE_CHECKING:
    from secret_audit._internal.spool import Spool, SpooledBatch

__all__ = [
    "DELIVERED", "LOST", "REFUSED", "REPLAYED", "SPOOLED",
    "Backoff", "Delivery", "Sealed", "Verdict", "records_text",
]

_log = logging.getLogger("secret_audit")

DELIVERED, SPOOLED, REPLAYED, REFUSED, LOST = "delivered", "spooled", "replayed", "refused", "lost"
_DURABLE = frozenset({DELIVERED, SPOOLED, REPLAYED})
# Spooled requests replayed together in one request, up to this size (the store takes 16 MiB).
_REPLAY_BYTES = 4 * 1024 * 1024
# Sealed batches handed to the courier at once: the one on the wire and the next, which it sends as soon as
# the first is answered (the worker's turn between two requests was a third of the agent's time on the wire).
_WINDOW = 2


def records_text(count: int) -> str:
    return f"{count} audit record{'' if count == 1 else 's'}"


class Sealed(NamedTuple):
    """A batch ready to leave: its payload, the stream range it holds, and who waits on it."""

    payload: Any  # OTLP bytes, or whatever the back end sealed
    stream: str
    first: int
    last: int
    records: int
    kinds: dict[Any, int]  # records per kind, for the metrics
    tickets: list[Any]  # fail-closed callers waiting for this batch
    reports: dict[Any, Any]  # the loss reports it carries, by sequence: made again if it is lost


class Verdict(NamedTuple):
    """What became of a batch; ``problem`` says why, when it did not arrive; ``from_spool`` for a batch
    an earlier send had spooled (its tickets are long complete)."""

    kind: str
    batch: Sealed
    problem: str | None = None
    from_spool: bool = False

    @property
    def durable(self) -> bool:
        return self.kind in _DURABLE


class Backoff:
    """The one backoff of delivery: delays doubling from ``first`` up to ``cap``, and when to try next."""

    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap = first, cap
        self.delay = first
        self.next_at = 0.0

    def reset(self) -> None:
        self.delay = self.first

    def later(self) -> None:
        """Try again after the current delay."""
        self.next_at = time.monotonic() + self.delay

    def failed(self) -> None:
        """Try again after the current delay, and wait twice as long after the next failure."""
        self.later()
        self.delay = min(self.delay * 2, self.cap)

    def due(self) -> bool:
        return time.monotonic() >= self.next_at


class Delivery:
    """One per stream; ``open`` gives it its back end (and spool) at the first record."""

    def __init__(self, retry_timeout: float, stop: threading.Event) -> None:
        self.backend: Sink | None = None
        self._retry_timeout = retry_timeout
        self._stop = stop
        self.spool: Spool | None = None
        self.spool_failed = False
        # Set at exit while the endpoint is failing: what is left goes to the spool, not the wire.
        self.spool_only = False
        # The last batch found the endpoint unavailable (a refusal is not an outage: nothing spooled for it).
        self.unavailable = False
        self._replay = Backoff(0.2, 5.0)
        self._probe = Backoff(0.2, 1.0)
        self._courier: Courier | None = None
        self._inflight: deque[Sealed] = deque()  # handed to the courier, oldest first
        self._verdicts: list[Verdict] = []  # replay's, collected until the worker asks

    def open(self, backend: Sink, spool_dir: str | None, max_bytes: int, default_spool: bool) -> bool:
        """Take the back end and open the spool; False when a spool was wanted and cannot be opened."""
        self.backend = backend
        if spool_dir is None or self.spool_failed:
            return True
        if not backend.spoolable:
            if not default_spool:  # the default spool does not apply to custom exporters
                _log.warning("secret-audit: the spool needs the fast OTLP exporter; not spooling")
            self.spool_failed = True
            return True
        try:
            from secret_audit._internal.spool import Spool

            self.spool = Spool(spool_dir, max_bytes)
        except Exception as exc:
            self.spool_failed = True
            _log.error("secret-audit: cannot open the audit spool in %s: %s", spool_dir, exc)
            return False
        return True

    @property
    def spool_dir(self) -> str | None:
        """Where records wait during an outage, or None with the spool off; loss advice names it."""
        return None if self.spool is None else str(self.spool.directory)

    @property
    def problem(self) -> str | None:
        """What the endpoint's last failure looked like, for loss reports."""
        return getattr(self.backend, "problem", None)

    def in_flight(self) -> int:
        return sum(batch.records for batch in self._inflight)

    def deliver(self, batch: Sealed) -> list[Verdict]:
        """Send (or spool) one batch: nothing yet while it is on the courier (``settle`` then tells).

        With ``_WINDOW`` batches on the courier already, the oldest is waited for first, so verdicts
        always come oldest first.
        """
        out: list[Verdict] = []
        while len(self._inflight) >= _WINDOW:
            out.append(self._settle_oldest())
        spool = self.spool
        if not self.spool_only and (spool is None or not spool.pending()):
            # Sent on the courier thread: the next batches are built while this one is on the wire.
            courier = self._courier or self._new_courier()
            if courier is not None:
                courier.start(batch.payload)
                self._inflight.append(batch)
                return [*out, *self.verdicts()]
        out += self.settle()  # what is on the courier goes (or is spooled) before this batch
        if spool is not None and (self.spool_only or spool.pending()):
            verdict = self._spool_or_retry(batch)
        else:
            verdict = self._retry(batch)
        return [*out, *self.verdicts(), verdict]

    def settle(self) -> list[Verdict]:
        """Wait for the batches in flight, oldest first; retry or spool those the endpoint did not take."""
        out: list[Verdict] = []
        while self._inflight:
            out.append(self._settle_oldest())
        return [*out, *self.verdicts()]

    def _settle_oldest(self) -> Verdict:
        """Wait for the oldest batch on the courier; retry or spool it if the endpoint did not take it."""
        batch = self._inflight.popleft()
        assert self._courier is not None
        result = self._courier.wait()
        if not self._inflight:  # every result taken: the courier may send again after a failure
            self._courier.resume()
        if result == SendResult.OK:
            return Verdict(DELIVERED, batch)
        if result == SendResult.REFUSED:
            return Verdict(REFUSED, batch, self.problem)
        if self.spool is not None:
            if result != UNSENT:
                self._replay.later()
            return self._spool_or_retry(batch)
        return self._retry(batch, None if result == UNSENT else result)

    def verdicts(self) -> list[Verdict]:
        """Verdicts on spooled batches replayed since the last call."""
        out, self._verdicts = self._verdicts, []
        return out

    def replay_due(self) -> bool:
        return self.spool is not None and self._replay.due()

    def replay(self) -> None:
        """Send spooled requests oldest first, several per request; stop at the first failure."""
        spool, backend = self.spool, self.backend
        if spool is None or backend is None or self.spool_only:
            return
        try:
            while True:
                batches = spool.oldest(_REPLAY_BYTES)
                if not batches:
                    self._replay.reset()
                    return
                # Serialised protobuf messages concatenate into one: their resource_logs add up.
                result = send(backend, b"".join(b.body for b in batches))
                if result == SendResult.REFUSED and len(batches) > 1:
                    result = self._replay_one_by_one(spool, backend, batches)
                    if result == SendResult.OK:
                        continue
                if result == SendResult.RETRY:
                    self._replay.failed()
                    return
                spool.remove(batches[-1].id)
                for batch in batches:
                    self._replayed(batch, result)
        except Exception:
            _log.exception("secret-audit: replaying the audit spool failed")
            self._replay.later()
        finally:
            spool.release()  # oldest() took the spool's replay claim

    def probe_soon(self) -> None:
        """A batch failed: ask the endpoint again in 0.2 s, backing off to once a second."""
        self._probe.reset()
        self._probe.failed()

    def probe(self) -> bool:
        """While degraded, fail-closed calls are refused before they run, so no batch would ever
        tell us the endpoint is back: ask it with an empty request, at least once a second."""
        backend = self.backend
        if backend is None or backend.pending() or not self._probe.due():
            return False
        if self._send_after_spool(backend, backend.empty) == SendResult.OK:
            return True
        self._probe.failed()
        return False

    def announce_spooled(self) -> None:
        """At exit, tell operators what waits on disk and how it leaves."""
        spool = self.spool
        if spool is None:
            return
        waiting = spool.stats()
        if not waiting["records"]:
            return
        problem = self.problem
        _log.warning(
            "secret-audit: %s wait in the spool %s%s; they are sent when a process with these settings "
            "starts again, or now, with the app's %sEXPORTER_OTLP_* settings set: "
            "secret-audit spool replay %s",
            records_text(waiting["records"]), spool.directory, f" ({problem})" if problem else "",
            PREFIX, spool.directory,
        )

    def close(self) -> None:
        """Stop the courier, say what waits in the spool and close it, then close the back end."""
        if self._courier is not None:
            self._courier.close()
        if self.spool is not None:
            self.announce_spooled()
            self.spool.close()
            self.spool = None  # stats() after shutdown reports no spool rather than failing
        if self.backend is not None:
            try:
                self.backend.close()
            except Exception:
                _log.debug("audit sink close failed", exc_info=True)

    # ---- inside ---------------------------------------------------------------------------------

    def _new_courier(self) -> Courier | None:
        """The sender thread, or None where no thread may start (at exit, from Python 3.12 on)."""
        assert self.backend is not None
        try:
            self._courier = Courier(self.backend)
        except RuntimeError:
            return None
        return self._courier

    def _spool_or_retry(self, batch: Sealed) -> Verdict:
        """While the endpoint is down (or older records wait), append to the spool instead."""
        spool = self.spool
        noted = json.dumps(batch.reports) if batch.reports else None
        if spool is None or not spool.append(batch.stream, batch.first, batch.last, batch.records,
                                             batch.payload, noted):
            # Spool full, unwritable or missing: the records stay in memory only if retried now.
            if self._stop.is_set():
                return Verdict(LOST, batch, self.problem)
            return self._retry(batch)
        if self._replay.due():
            self.replay()
        return Verdict(SPOOLED, batch)

    def _retry(self, batch: Sealed, first: str | None = None) -> Verdict:
        """Repeat the send with backoff until it succeeds, is refused, the retry timeout passes or
        delivery stops; ``first`` is the result of an attempt already made."""
        backend = self.backend
        assert backend is not None
        deadline = time.monotonic() + self._retry_timeout
        backoff = Backoff(0.2, 5.0)
        result = self._send_after_spool(backend, batch.payload) if first is None else first
        while True:
            if result == SendResult.OK:
                return Verdict(DELIVERED, batch)
            late = time.monotonic() + backoff.delay > deadline
            if result == SendResult.REFUSED or self._stop.is_set() or late:
                return Verdict(REFUSED if result == SendResult.REFUSED else LOST, batch, self.problem)
            self._stop.wait(backoff.delay)
            backoff.failed()
            result = self._send_after_spool(backend, batch.payload)

    def _send_after_spool(self, backend: Sink, payload: Any) -> str:
        """Send only once nothing older waits in the spool, so the endpoint sees the stream in order."""
        spool = self.spool
        if spool is not None and spool.pending():
            self.replay()
            if spool.pending():
                return SendResult.RETRY
        return send(backend, payload)

    def _replay_one_by_one(self, spool: Spool, backend: Sink, batches: list[SpooledBatch]) -> str:
        """A refused combined request: find which spooled requests the endpoint refuses."""
        for batch in batches:
            result = send(backend, batch.body)
            if result == SendResult.RETRY:
                return result
            spool.remove(batch.id)
            self._replayed(batch, result)
        return SendResult.OK

    def _replayed(self, spooled: SpooledBatch, result: str) -> None:
        reports: dict[Any, Any] = {}
        if spooled.reports and result != SendResult.OK:
            try:
                reports = dict(json.loads(spooled.reports))
            except (ValueError, TypeError):
                _log.error("secret-audit: unreadable loss reports in spooled batch %d", spooled.id)
        first, last = spooled.first_seq, spooled.last_seq
        batch = Sealed(None, spooled.stream, first, last, spooled.records, {}, [], reports)
        ok = result == SendResult.OK
        self._verdicts.append(Verdict(REPLAYED if ok else REFUSED, batch, None if ok else self.problem, True))
