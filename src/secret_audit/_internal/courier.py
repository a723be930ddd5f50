"""The courier: the sender thread that keeps delivery's requests on the wire, one at a time and in order.

``Delivery`` hands it sealed batches (up to its window) and waits for their results oldest first;
the worker builds the next batch meanwhile. After a request that may be retried it sends nothing
more (``UNSENT``) until ``resume``, so no batch reaches the endpoint ahead of an older one.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from typing import Any

from secret_audit._internal.quiet import suppress_instrumentation
from secret_audit._internal.senders import SendResult
from secret_audit._internal.sinks import Sink

__all__ = ["UNSENT", "Courier", "send"]

_log = logging.getLogger("secret_audit")

UNSENT = "unsent"  # the result for a batch queued behind a failed request: not sent, in order


class Courier:
    """The sender thread: its requests one at a time, in order, while the worker builds the next batch.

    After a request that may be retried it sends nothing more (``UNSENT``) until ``resume``: the worker
    retries or spools that batch, then those behind it, so no batch reaches the endpoint ahead of an
    older one.
    """

    def __init__(self, backend: Sink) -> None:
        self._backend = backend
        self._jobs: queue.SimpleQueue[tuple[Any] | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._halted = False  # set by the courier after a failed send; cleared once all results are taken
        self._thread = threading.Thread(target=self._run, name="secret-audit-sender", daemon=True)
        self._thread.start()

    def start(self, payload: Any) -> None:
        self._jobs.put((payload,))

    def wait(self) -> str:
        return self._results.get()

    def resume(self) -> None:
        """Send again after a failure (called with no job left on the courier)."""
        self._halted = False

    def close(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        suppress_instrumentation()  # our own exports are never traced or audited by other instrumentations
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if self._halted:
                self._results.put(UNSENT)
                continue
            result = send(self._backend, job[0])
            job = None  # not held while waiting for the next: a request's bytes (about 100 kB) per stream
            if result not in (SendResult.OK, SendResult.REFUSED):
                self._halted = True
            self._results.put(result)


def send(backend: Sink, payload: Any) -> str:
    """One request, timed for the export histogram (or the back end's ``timings``, in an agent); an
    exporter's exception counts as a retry."""
    started = time.perf_counter()
    try:
        result = str(backend.send(payload))
    except Exception:
        _log.debug("audit send raised", exc_info=True)
        result = SendResult.RETRY
    seconds = time.perf_counter() - started
    timings = getattr(backend, "timings", None)  # a back end of a test or an embedder may not be a Sink
    if timings is not None:  # the agent's: the app records them into its histogram (export_timings)
        timings.add(seconds, result)
        return result
    # The export histograms exist once meters.observe registered them (an instrumented app): the audit agent
    # never does, and does not import the metrics API for nothing.
    meters = sys.modules.get("secret_audit._internal.meters")
    if meters is not None:
        meters.record_export(seconds, result)
    return result
