"""The errors this package raises on purpose, importable without pulling in the instrumentors."""

from __future__ import annotations

__all__ = ["AuditUnavailableError", "ConfigurationError"]


class ConfigurationError(ValueError):
    """Raised at start-up so that a mistyped setting can never silently weaken the audit."""

    def __init__(self, variable: str, value: str, allowed: str) -> None:
        self.variable = variable
        self.value = value
        self.allowed = allowed
        super().__init__(f"{variable}={value!r} is not valid: expected {allowed}")


class AuditUnavailableError(RuntimeError):
    """Raised in fail-closed mode instead of returning a secret whose access could not be audited.

    It never carries the secret, and the value the call produced is discarded.
    """
