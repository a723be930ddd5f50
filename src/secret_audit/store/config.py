"""Store settings read once from the environment, so a bad value fails at start-up with its name."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from secret_audit.environ import PREFIX, ConfigurationError
from secret_audit.environ import int_range as _int_range
from secret_audit.environ import parse_bool as _bool
from secret_audit.environ import read as _read

__all__ = ["NON_AUDIT_MODES", "StoreConfig", "default_data_dir", "load_store_config"]

NON_AUDIT_MODES = ("reject", "drop")
STORE = PREFIX + "STORE_"


def default_data_dir() -> Path:
    """Where the embedded PostgreSQL keeps its data when no DATABASE_URL is given."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "secret-audit" / "pgdata"


@dataclass(frozen=True)
class StoreConfig:
    """Every store setting in one immutable object, shared by the server and the CLI."""

    database_url: str | None = field(default=None, repr=False)
    data_dir: Path = field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 4318
    max_body_bytes: int = 16 * 1024 * 1024
    non_audit: str = "reject"
    retention_days: int = 365
    pool_size: int = 8
    workers: int = 1
    ingest_concurrency: int = 4
    app_role: str = "secret_audit_app"
    archive_dir: Path = Path("audit-archive")
    native: bool = True  # the C extension's OTLP reader, checks, rows and COPY when built; false: Python
    max_clock_skew_s: int = 300  # records further ahead of the store's clock are held (see _bounds)
    max_record_age_days: int = 31  # records further behind it are held; at most 31: three months a request


def _int(env: Mapping[str, str], suffix: str, default: int, low: int, high: int) -> int:
    return _read(env, "STORE_" + suffix, _int_range(low, high), default)


def load_store_config(env: Mapping[str, str] | None = None) -> StoreConfig:
    """Parse ``DATABASE_URL`` and ``OTEL_PYTHON_SECRET_AUDIT_STORE_*``; raises ConfigurationError."""
    env = os.environ if env is None else env
    non_audit = env.get(STORE + "NON_AUDIT", "reject").strip().lower()
    if non_audit not in NON_AUDIT_MODES:
        raise ConfigurationError(STORE + "NON_AUDIT", non_audit, "one of " + ", ".join(NON_AUDIT_MODES))
    role = env.get(STORE + "APP_ROLE", "secret_audit_app").strip()
    if role and not role.replace("_", "").isalnum():
        raise ConfigurationError(STORE + "APP_ROLE", role, "letters, digits and underscores, or empty")
    data_dir = env.get(STORE + "DATA_DIR")
    archive = env.get(STORE + "ARCHIVE_DIR")
    return StoreConfig(
        database_url=env.get("DATABASE_URL") or None,
        data_dir=Path(data_dir).expanduser() if data_dir else default_data_dir(),
        host=env.get(STORE + "HOST", "127.0.0.1"),
        port=_int(env, "PORT", 4318, 0, 65535),
        max_body_bytes=_int(env, "MAX_BODY_BYTES", 16 * 1024 * 1024, 1024, 1 << 31),
        non_audit=non_audit,
        retention_days=_int(env, "RETENTION_DAYS", 365, 1, 36500),
        pool_size=_int(env, "POOL_SIZE", 8, 1, 256),
        workers=_int(env, "WORKERS", 1, 1, 64),
        ingest_concurrency=_int(env, "INGEST_CONCURRENCY", 4, 0, 256),
        app_role=role,
        archive_dir=Path(archive).expanduser() if archive else Path("audit-archive"),
        native=_read(env, "STORE_NATIVE", _bool, True),
        max_clock_skew_s=_int(env, "MAX_CLOCK_SKEW_SECONDS", 300, 0, 86400),
        max_record_age_days=_int(env, "MAX_RECORD_AGE_DAYS", 31, 1, 31),
    )
