"""otel-secret-audit: an auditable, trace-correlated record of every access to a secret."""

from __future__ import annotations

from secret_audit._internal.pipeline import peek_pipeline
from secret_audit.context import AuditContext, audit_context, current_audit_context
from secret_audit.exceptions import AuditUnavailableError, ConfigurationError
from secret_audit.hashing import hash_name
from secret_audit.version import __version__

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


def flush(timeout: float = 10.0) -> bool:
    """Export every audit record queued so far; True when all were handed to the exporter in time."""
    pipeline = peek_pipeline()
    return True if pipeline is None else pipeline.flush(timeout)


def stats() -> dict[str, object]:
    """Counters of the audit pipeline (queued, exported, dropped, lost), for health endpoints."""
    pipeline = peek_pipeline()
    return {} if pipeline is None else pipeline.stats()
