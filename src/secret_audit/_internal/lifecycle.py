"""The pipeline's lifecycle hooks, installed by whoever starts it (bootstrap), never by its constructor.

At interpreter exit and on SIGTERM the pipeline flushes (or spools) what is queued; in a forked
child it starts a fresh stream. Installing them here keeps a pipeline made for a test or a
benchmark free of process-wide side effects.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import weakref

from secret_audit._internal.pipeline import AuditPipeline, peek_pipeline

__all__ = ["install"]


def install(pipeline: AuditPipeline) -> None:
    """Hook ``pipeline`` to fork, exit and (when the settings allow) SIGTERM; replay a leftover spool now."""
    ref = weakref.ref(pipeline)
    os.register_at_fork(after_in_child=lambda: _after_fork(ref))
    atexit.register(_at_exit, ref)
    if pipeline.settings.handle_sigterm:
        _install_sigterm()
    directory = pipeline.settings.spool_dir
    if directory:
        from secret_audit._internal.spool import Spool

        if os.path.exists(os.path.join(directory, Spool.FILENAME)):
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


def _at_exit(ref: weakref.ref[AuditPipeline]) -> None:
    pipeline = ref()
    if pipeline is not None:
        pipeline.shutdown()
