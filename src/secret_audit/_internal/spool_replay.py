"""Draining a spool to its endpoint from outside the app: oldest first, exactly once, beside live apps.

Only the holder of the spool's replay claim sends, and it deletes what the endpoint acknowledged
before it lets the claim go, so an app's worker and this replay, sharing one spool, never send a
request twice. The claim is given back between requests, so an app can take its turn; whoever
holds it always starts from the oldest request still there, so each stream still arrives in order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from secret_audit._internal.senders import Sender, SendResult
from secret_audit._internal.spool import Spool, SpooledBatch

__all__ = ["Replayed", "replay"]

REQUEST_BYTES = 4 * 1024 * 1024  # as much as the app's own replay puts in one request
_PATIENCE = 60.0  # seconds to wait for another replayer that holds the claim and makes no progress


@dataclass
class Replayed:
    """What a replay did: the records it sent, how many others sent meanwhile, and why it stopped."""

    sent: int = 0
    requests: int = 0
    by_others: int = 0
    stopped: str = "done"  # done, retry (not taken), refused, busy (another replayer never let go)
    failed: SpooledBatch | None = None  # the request that was not taken, kept in the spool


def replay(spool: Spool, sender: Sender, progress: Callable[[Replayed, int], None] | None = None,
           *, patience: float = _PATIENCE) -> Replayed:
    """Send everything in ``spool`` to ``sender`` until it is empty or a request is not taken."""
    done = Replayed()
    waiting = spool.stats()["records"]
    last_change = time.monotonic()
    try:
        while True:
            if not spool.claim():  # another process is replaying: let it, and watch the spool shrink
                left = spool.stats()["records"]
                if left == 0:
                    return done
                if left < waiting:
                    done.by_others += waiting - left
                    waiting, last_change = left, time.monotonic()
                if time.monotonic() - last_change > patience:
                    done.stopped = "busy"
                    return done
                time.sleep(0.05)
                continue
            batches = spool.oldest(REQUEST_BYTES)
            if not batches:
                return done
            result = sender.send(b"".join(b.body for b in batches))  # protobuf messages concatenate
            if result == SendResult.REFUSED and len(batches) > 1:
                batches, result = _one_by_one(spool, sender, batches, done, progress)
                if result == SendResult.OK:
                    spool.release()
                    continue
            if result != SendResult.OK:
                done.stopped, done.failed = result, batches[0]
                return done
            spool.remove(batches[-1].id)
            _count(done, batches, progress, spool)
            waiting = spool.stats()["records"]
            last_change = time.monotonic()
            spool.release()  # between requests, an app sharing the spool may take its turn
    finally:
        spool.release()


def _one_by_one(spool: Spool, sender: Sender, batches: list[SpooledBatch], done: Replayed,
                progress: Callable[[Replayed, int], None] | None) -> tuple[list[SpooledBatch], str]:
    """A refused combined request: send its parts alone, up to the first one not taken."""
    for index, batch in enumerate(batches):
        result = sender.send(batch.body)
        if result != SendResult.OK:
            return batches[index:], result
        spool.remove(batch.id)
        _count(done, [batch], progress, spool)
    return [], SendResult.OK


def _count(done: Replayed, batches: list[SpooledBatch], progress: Callable[[Replayed, int], None] | None,
           spool: Spool) -> None:
    done.sent += sum(b.records for b in batches)
    done.requests += 1
    if progress is not None:
        progress(done, spool.stats()["records"])
