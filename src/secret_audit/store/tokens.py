"""Bearer tokens for the store: random secrets shown once, kept only as SHA-256 digests."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import psycopg

__all__ = ["ROLES", "Principal", "authenticate", "create_token", "list_tokens", "revoke_token"]

ROLES = ("ingest", "auditor", "admin")
_PREFIX = "sat_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's public id, name, role and optional tenant scope (never its secret)."""

    token_id: str
    name: str
    role: str
    tenant: str | None

    @property
    def label(self) -> str:
        """How the caller is named in the store's own audit events."""
        return f"token:{self.token_id}:{self.name}"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(
    conn: psycopg.Connection[Any], name: str, role: str, tenant: str | None = None
) -> tuple[str, Principal]:
    """Create a token; the raw form is returned once and never stored."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if not name.strip():
        raise ValueError("a token needs a non-empty name")
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    with conn.transaction():
        conn.execute(
            "INSERT INTO audit_tokens (token_id, name, role, tenant, secret_sha256) "
            "VALUES (%s, %s, %s, %s, %s)",
            (token_id, name.strip(), role, tenant or None, _digest(secret)),
        )
    return f"{_PREFIX}{token_id}_{secret}", Principal(token_id, name.strip(), role, tenant or None)


def list_tokens(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every token's public fields, newest first; digests are not returned."""
    rows = conn.execute(
        "SELECT token_id, name, role, tenant, created_at, revoked_at FROM audit_tokens "
        "ORDER BY created_at DESC"
    ).fetchall()
    keys = ("token_id", "name", "role", "tenant", "created_at", "revoked_at")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def revoke_token(conn: psycopg.Connection[Any], token_id: str) -> bool:
    """Revoke a token by its public id; True when a live token was revoked."""
    with conn.transaction():
        cur = conn.execute(
            "UPDATE audit_tokens SET revoked_at = now() WHERE token_id = %s AND revoked_at IS NULL",
            (token_id,),
        )
        return cur.rowcount == 1


def parse(raw: str) -> tuple[str, str] | None:
    """Split a presented token into its public id and secret, or None when it is malformed."""
    if not raw.startswith(_PREFIX):
        return None
    token_id, sep, secret = raw[len(_PREFIX) :].partition("_")
    if not sep or len(token_id) != 12 or not secret or len(raw) > 200:
        return None
    return token_id, secret


def authenticate(conn: psycopg.Connection[Any], raw: str) -> Principal | None:
    """Return the live token's principal when the presented secret matches its stored digest."""
    parts = parse(raw)
    if parts is None:
        return None
    token_id, secret = parts
    row = conn.execute(
        "SELECT name, role, tenant, secret_sha256 FROM audit_tokens "
        "WHERE token_id = %s AND revoked_at IS NULL",
        (token_id,),
    ).fetchone()
    if row is None or not hmac.compare_digest(str(row[3]), _digest(secret)):
        return None
    return Principal(token_id, str(row[0]), str(row[1]), row[2])
