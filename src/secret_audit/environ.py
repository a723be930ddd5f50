"""Parsers for ``OTEL_PYTHON_SECRET_AUDIT_*`` variables, shared by the producer's and the store's settings."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from secret_audit.exceptions import ConfigurationError

__all__ = ["PREFIX", "ConfigurationError", "int_range", "parse_bool", "read", "without_empty"]

PREFIX = "OTEL_PYTHON_SECRET_AUDIT_"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})

T = TypeVar("T")


def without_empty(env: Mapping[str, str]) -> dict[str, str]:
    """The variables that have a value: OpenTelemetry reads an empty variable as an unset one, so
    ``ENABLED=`` in a container spec must not quietly turn auditing off."""
    return {name: value for name, value in env.items() if value.strip()}


def parse_bool(name: str, raw: str) -> bool:
    """A boolean setting; anything but the usual spellings names the variable in the error."""
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigurationError(name, raw, "one of true, false, 1, 0, yes, no, on, off")


def int_range(low: int, high: int) -> Callable[[str, str], int]:
    """A parser for an integer setting between ``low`` and ``high``, both included."""

    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigurationError(name, raw, f"an integer from {low} to {high}") from None
        if not low <= value <= high:
            raise ConfigurationError(name, raw, f"an integer from {low} to {high}")
        return value

    return parse


def read(env: Mapping[str, str], suffix: str, parse: Callable[[str, str], T], default: T) -> T:
    """``PREFIX + suffix`` parsed, or ``default`` when unset."""
    name = PREFIX + suffix
    raw = env.get(name)
    if raw is None:
        return default
    return parse(name, raw)
