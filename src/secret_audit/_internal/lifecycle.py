"""Starting the process's pipeline (an audit agent, or in-process) and its lifecycle hooks.

``start`` makes the process pipeline the settings ask for. With the audit agent it is the agent's
twin, and the agent itself starts at this process tree's first hand-off, not here (an app that
audits nothing starts none and waits for none at exit): at the first audited access, ``stats()``, or
the first fork, so that a pre-fork server's workers share the agent their master started. It starts
here when the first accesses must not wait for it (fail-closed) or a leftover spool waits to be
replayed. Where it cannot start, the in-process pipeline takes over, announced once on stderr. The
in-process pipeline's hooks are installed here, by whoever starts it (bootstrap), never by its
constructor: at interpreter exit and on SIGTERM it flushes (or spools) what is queued; in a forked
child it starts a fresh stream. Installing them here keeps a pipeline made for a test or a
benchmark free of process-wide side effects. With the agent, exit waits likewise until the agent
has made what was handed off durable (the agent drains the ring after the app is gone in any
case), and says what it still holds.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any

from secret_audit._internal.config import Settings
from secret_audit._internal.current import peek_pipeline
from secret_audit._internal.spooldir import leftover_spool  # not spool: sqlite3 costs every start-up

if TYPE_CHECKING:
    from secret_audit._internal.pipeline import AuditPipeline

__all__ = ["AgentPipeline", "in_process", "install", "start"]


def start(settings: Settings) -> Any:
    """The process pipeline the settings ask for: an agent's twin, or in-process."""
    if settings.agent == "process":
        from secret_audit._internal.agent_client import AgentHandoff

        handoff = AgentHandoff(settings)
        # Now, not at the first hand-off, where a fail-closed call must not wait for an interpreter to
        # start, or a leftover spool waits to be replayed.
        if handoff.closed_mode or leftover_spool(settings.spool_dir):
            handoff.register()  # the agent's socket is bound first: this process never waits for it
            if handoff.fallback is not None:  # it could not start or be reached: announced by the hand-off
                return handoff.fallback
        pipeline = AgentPipeline(settings, handoff)
        # At exit, wait (SHUTDOWN_TIMEOUT_MS) until the agent made what was handed off durable,
        # as the in-process pipeline does, and say what it still holds if not.
        atexit.register(_at_exit, weakref.ref(pipeline))
        return pipeline
    return in_process(settings)


def in_process(settings: Settings) -> AuditPipeline:
    """A pipeline in this process, with its lifecycle hooks (exit, SIGTERM, fork) installed."""
    from secret_audit._internal.pipeline import AuditPipeline

    pipeline = AuditPipeline(settings)
    install(pipeline)
    return pipeline


class AgentPipeline:
    """The process pipeline when an agent serves it: what ``flush``, ``stats`` and bootstrap ask of it."""

    def __init__(self, settings: Settings, handoff: Any) -> None:
        self.settings, self.handoff = settings, handoff
        self.submit = handoff.submit

    @property
    def closed(self) -> bool:
        return bool(self.handoff.closed)

    @property
    def stream_id(self) -> str | None:
        fallback = self.handoff.fallback
        stream: str | None = fallback.stream_id if fallback is not None else self.handoff.stream_id
        return stream

    def accepting(self) -> bool:
        return bool(self.handoff.accepting())

    def wired_as(self, settings: Settings, exporter: Any, provider: Any) -> bool:
        return False  # explicit wiring always runs in-process

    def flush(self, timeout: float = 10.0) -> bool:
        return bool(self.handoff.flush(timeout))

    def shutdown(self, timeout: float | None = None) -> None:
        """Settle what was handed off and let the agent go (replaced by re-wiring); the fallback flushes."""
        if self.closed:  # once only, as in-process: an explicit shutdown, then the exit hook
            return
        fallback = self.handoff.fallback
        if fallback is not None:
            fallback.shutdown(timeout)
        limit = self.settings.shutdown_timeout_ms / 1000 if timeout is None else timeout
        self.handoff.close(limit)

    def counts(self) -> dict[str, Any]:
        """The in-process pipeline's keys: the hand-off's counters here, the stream's from the agent."""
        return self._counts(spool=False)

    def _counts(self, *, spool: bool) -> dict[str, Any]:
        fallback = self.handoff.fallback
        handed = self.handoff.stats()  # first: it waits a moment for a just-started agent to name the stream
        out: dict[str, Any] = {"stream_id": self.stream_id, "sequence": 0, "exported": 0, "lost_export": 0,
                               "internal_errors": 0, "spooled": 0, "replayed": 0, "records": [],
                               "checkpoints_signed": 0}
        if fallback is not None:
            out.update(fallback.stats() if spool else fallback.counts())
        else:
            from secret_audit._internal import ring as hdr
            from secret_audit._internal.agent_wire import EXPORTED, SPOOLED

            ring = self.handoff.ring
            if ring is not None:  # as of the agent's last settled batch; its own answer below is current
                for key, word in (("exported", EXPORTED), ("spooled", SPOOLED), ("sequence", hdr.SEQUENCE),
                                  ("lost_export", hdr.LOST_EXPORT), ("internal_errors", hdr.INTERNAL_ERRORS),
                                  ("checkpoints_signed", hdr.CHECKPOINTS)):
                    out[key] = ring.word(word)
                out.update(self.handoff.ledger(spool=spool) or {})
        out.update({k: v for k, v in handed.items() if fallback is None or k == "agent"})
        return out

    def export_durations(self) -> Any:
        """The export requests' durations the agent measured, taken by ``counts()`` so far, to be recorded
        into the app's histogram (by the metrics' collection only: see ``export_timings``)."""
        return self.handoff.timings.drain()

    def stats(self) -> dict[str, Any]:
        if self.handoff.ring is None and not self.closed:
            self.handoff.register()  # they name the agent and the stream: started now if not yet
        out = self._counts(spool=True)  # and what waits in the stream's spool, as in-process
        out.setdefault("spool", None)
        return out


def install(pipeline: AuditPipeline) -> None:
    """Hook ``pipeline`` to fork, exit and (when the settings allow) SIGTERM; replay a leftover spool now."""
    ref = weakref.ref(pipeline)
    os.register_at_fork(after_in_child=lambda: _after_fork(ref))
    atexit.register(_at_exit, ref)
    util = sys.modules.get("multiprocessing.util")
    if util is not None and util.process.parent_process() is not None:
        util.Finalize(None, _at_exit, args=(ref,), exitpriority=-100)  # started in a multiprocessing child
    if pipeline.settings.handle_sigterm:
        _install_sigterm()
    if leftover_spool(pipeline.settings.spool_dir):
        # Records an earlier process spooled are replayed now, not at this one's first access.
        pipeline.handoff.start()


def _install_sigterm() -> None:
    """Flush (or spool) queued records on SIGTERM, then die by SIGTERM as the app would have.

    Only when the application left SIGTERM at its default: its own handler usually ends in
    ``sys.exit``, which runs our atexit flush anyway.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main interpreter, or no signals here
        return


def _on_sigterm(signum: int, frame: object) -> None:
    pipeline = peek_pipeline()
    if pipeline is not None:
        pipeline.shutdown()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _after_fork(ref: weakref.ref[AuditPipeline]) -> None:
    pipeline = ref()
    if pipeline is not None:
        pipeline.forked()
        _flush_at_multiprocessing_exit(pipeline, ref)


def _flush_at_multiprocessing_exit(pipeline: AuditPipeline, ref: weakref.ref[AuditPipeline]) -> None:
    """A multiprocessing child ends in ``os._exit`` after its finalizers, not atexit: flush as one of them."""
    util = sys.modules.get("multiprocessing.util")
    if util is None:  # not forked by multiprocessing (it imports util before it forks)
        return
    # Its child bootstrap clears the finalizers inherited or registered so far, then runs the after-fork
    # hooks: register the flush from one of those, as the last finalizer to run.
    def finalize(_: AuditPipeline) -> None:
        util.Finalize(None, _at_exit, args=(ref,), exitpriority=-100)

    util.register_after_fork(pipeline, finalize)


def _at_exit(ref: weakref.ref[AuditPipeline] | weakref.ref[AgentPipeline]) -> None:
    pipeline = ref()
    if pipeline is not None:
        pipeline.shutdown()
