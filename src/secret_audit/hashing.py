"""Keyed hashing of secret names, so hashed audit trails stay searchable by whoever holds the key."""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["HASH_PREFIX", "hash_name"]

HASH_PREFIX = "hmac-sha256:"


def hash_name(name: str | bytes, key: str | bytes | None = None) -> str:
    """Return the ``hmac-sha256:<hex>`` form the audit trail shows for ``name`` when names are hashed.

    With ``key`` omitted, the key comes from ``OTEL_PYTHON_SECRET_AUDIT_HMAC_KEY`` or
    ``OTEL_PYTHON_SECRET_AUDIT_HMAC_KEY_FILE``, like Vault's ``sys/audit-hash``.
    """
    if key is None:
        from secret_audit._internal.config import load_settings

        loaded = load_settings().hmac_key
        if loaded is None:
            raise ValueError(
                "no HMAC key: pass key= or set OTEL_PYTHON_SECRET_AUDIT_HMAC_KEY "
                "or OTEL_PYTHON_SECRET_AUDIT_HMAC_KEY_FILE"
            )
        key = loaded
    raw_key = key.encode() if isinstance(key, str) else key
    raw_name = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
    return HASH_PREFIX + hmac.new(raw_key, raw_name, hashlib.sha256).hexdigest()
