"""The errors this package raises on purpose, importable without pulling in the instrumentors."""

from __future__ import annotations

from secret_audit._internal.config import ConfigurationError

__all__ = ["AuditUnavailableError", "ConfigurationError"]


class AuditUnavailableError(RuntimeError):
    """Raised in fail-closed mode instead of returning a secret whose access could not be audited.

    It never carries the secret, and the value the call produced is discarded.
    """
