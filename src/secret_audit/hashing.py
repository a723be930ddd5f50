"""Keyed hashing of secret names, so hashed audit trails stay searchable by whoever holds the key."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from secret_audit.environ import PREFIX, ConfigurationError, without_empty

__all__ = ["HASH_PREFIX", "hash_name", "hmac_key_from_env"]

HASH_PREFIX = "hmac-sha256:"


def hash_name(name: str | bytes, key: str | bytes | None = None) -> str:
    """Return the ``hmac-sha256:<hex>`` form the audit trail shows for ``name`` when names are hashed.

    With ``key`` omitted, the key comes from ``OTEL_PYTHON_SECRET_AUDIT_HMAC_KEY`` or
    ``OTEL_PYTHON_SECRET_AUDIT_HMAC_KEY_FILE``, like Vault's ``sys/audit-hash``.
    """
    if key is None:
        loaded = hmac_key_from_env(without_empty(os.environ), False)  # as the producer reads them
        if loaded is None:
            raise ValueError(
                "no HMAC key: pass key= or set OTEL_PYTHON_SECRET_AUDIT_HMAC_KEY "
                "or OTEL_PYTHON_SECRET_AUDIT_HMAC_KEY_FILE"
            )
        key = loaded
    raw_key = key.encode() if isinstance(key, str) else key
    raw_name = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
    return HASH_PREFIX + hmac.new(raw_key, raw_name, hashlib.sha256).hexdigest()


def hmac_key_from_env(env: Mapping[str, str], wanted: bool) -> bytes | None:
    """The HMAC key from ``..._HMAC_KEY`` or ``..._HMAC_KEY_FILE``; ``wanted`` makes its absence an error."""
    key_name = PREFIX + "HMAC_KEY"
    file_name = PREFIX + "HMAC_KEY_FILE"
    raw = env.get(key_name)
    path = env.get(file_name)
    if raw is not None and path is not None:
        raise ConfigurationError(file_name, path, f"unset while {key_name} is set (choose one)")
    if raw is not None:
        if len(raw.encode()) < 16:
            raise ConfigurationError(key_name, "<redacted>", "a key of at least 16 bytes")
        return raw.encode()
    if path is not None:
        try:
            data = Path(path).read_bytes().strip()
        except OSError as exc:
            raise ConfigurationError(
                file_name, path, f"a readable file ({exc.strerror or type(exc).__name__})"
            ) from None
        if len(data) < 16:
            raise ConfigurationError(file_name, path, "a file holding a key of at least 16 bytes")
        return data
    if wanted:
        raise ConfigurationError(
            PREFIX + "HASH_NAMES", "true", f"false, unless {key_name} or {file_name} is set"
        )
    return None
