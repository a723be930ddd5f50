"""The process pipeline, kept apart from the pipelines themselves: finding it imports neither.

An app served by the audit agent never imports the in-process pipeline's modules unless the agent
cannot serve it; everything that only asks for the current pipeline (the hand-off of a re-wired
pipeline, ``flush``, ``stats``, the metrics' callbacks, SIGTERM) asks here.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["peek_pipeline", "set_pipeline"]

# The process pipeline: an AuditPipeline, or lifecycle.AgentPipeline when an audit agent serves it.
_PIPELINE: Any = None
_PIPELINE_LOCK = threading.Lock()


def peek_pipeline() -> Any:
    """Return the current pipeline without creating one."""
    return _PIPELINE


def set_pipeline(pipeline: Any) -> Any:
    """Replace the process pipeline (tests and embedding apps), returning the old one."""
    global _PIPELINE
    with _PIPELINE_LOCK:
        old, _PIPELINE = _PIPELINE, pipeline
    return old
