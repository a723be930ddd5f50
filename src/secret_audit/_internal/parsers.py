"""Parsers for the producer's settings: each names the variable, the value and what is allowed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from secret_audit.environ import ConfigurationError

__all__ = [
    "FAILURE_MODES", "SOURCES", "choice", "directory", "failure_modes", "patterns", "signing_key", "text",
]

FAILURE_MODES = ("open", "closed")
# The sources a per-source setting may name: anything else is a typo that would silently apply
# the default to the source the user meant.
SOURCES = ("redis", "gcp_secret_manager")


def choice(choices: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        low = raw.strip().lower()
        if low not in choices:
            raise ConfigurationError(name, raw, "one of " + ", ".join(choices))
        return low

    return parse


def patterns(name: str, raw: str) -> tuple[str, ...]:
    items = tuple(p.strip() for p in raw.split(",") if p.strip())
    if not items:
        raise ConfigurationError(name, raw, "a comma-separated list of one or more glob patterns")
    return items


def text(name: str, raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ConfigurationError(name, raw, "a non-empty string")
    return value


def failure_modes(name: str, raw: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``open``, ``closed``, or per source: ``closed,redis=open`` / ``gcp_secret_manager=closed``."""
    default = "open"
    per_source: list[tuple[str, str]] = []
    allowed = "open or closed, optionally per source, e.g. 'redis=open,gcp_secret_manager=closed'"
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    if not parts:
        raise ConfigurationError(name, raw, allowed)
    for part in parts:
        source, sep, mode = part.partition("=")
        mode = (mode if sep else source).strip().lower()
        if mode not in FAILURE_MODES or (sep and not source.strip()):
            raise ConfigurationError(name, raw, allowed)
        if sep:
            if source.strip() not in SOURCES:
                known = ", ".join(SOURCES)
                raise ConfigurationError(name, raw, f"{allowed}; {source.strip()!r} is not one of {known}")
            per_source.append((source.strip(), mode))
        else:
            default = mode
    return default, tuple(per_source)


def directory(name: str, raw: str) -> str:
    path = Path(raw.strip())
    if not raw.strip():
        raise ConfigurationError(name, raw, "a directory path")
    if path.exists() and not path.is_dir():
        raise ConfigurationError(name, raw, "a directory (this path is a file)")
    return str(path)


def signing_key(name: str, raw: str) -> str:
    """A path to an Ed25519 private key (PEM), loaded once here so that a bad one stops start-up."""
    from secret_audit.signing import KeyFileError, load_signer

    try:
        load_signer(raw.strip())
    except KeyFileError as exc:
        raise ConfigurationError(name, raw, f"an Ed25519 private key in PEM (the file {exc.reason}); "
                                 "make one with `secret-audit keygen PATH`") from None
    return raw.strip()
