"""otel-secret-audit: an auditable, trace-correlated record of every access to a secret."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from secret_audit.exceptions import AuditUnavailableError, ConfigurationError
from secret_audit.hashing import hash_name
from secret_audit.version import __version__

if TYPE_CHECKING:
    from secret_audit.context import AuditContext, audit_context, current_audit_context

__all__ = [
    "AuditContext",
    "AuditUnavailableError",
    "ConfigurationError",
    "__version__",
    "audit_context",
    "current_audit_context",
    "flush",
    "hash_name",
    "stats",
]

# Imported at first use: the audit agent (``python -m secret_audit._internal.agent``) runs this module too,
# and needs neither the OpenTelemetry context API nor the in-process pipeline's graph.
_CONTEXT_NAMES = frozenset({"AuditContext", "audit_context", "current_audit_context"})


def __getattr__(name: str) -> Any:
    if name in _CONTEXT_NAMES:
        from secret_audit import context

        return getattr(context, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def flush(timeout: float = 10.0) -> bool:
    """Export every audit record queued so far; True when all were handed to the exporter in time."""
    from secret_audit._internal.current import peek_pipeline

    pipeline = peek_pipeline()
    return True if pipeline is None else pipeline.flush(timeout)


def stats() -> dict[str, object]:
    """Counters of the audit pipeline (queued, exported, dropped, lost), for health endpoints."""
    from secret_audit._internal.current import peek_pipeline

    pipeline = peek_pipeline()
    return {} if pipeline is None else pipeline.stats()
