"""Store settings read once from the environment, so a bad value fails at start-up with its name."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from secret_audit.environ import PREFIX, ConfigurationError, without_empty
from secret_audit.environ import int_range as _int_range
from secret_audit.environ import parse_bool as _bool
from secret_audit.environ import read as _read

__all__ = [
    "ALERT_KINDS",
    "METRICS_EXPORTERS",
    "NON_AUDIT_MODES",
    "AlertSettings",
    "StoreConfig",
    "Webhook",
    "default_data_dir",
    "load_store_config",
]

NON_AUDIT_MODES = ("reject", "drop")
METRICS_EXPORTERS = ("otlp", "prometheus")
ALERT_KINDS = ("integrity", "loss", "burst", "refusal", "first_seen", "agent_died")
STORE = PREFIX + "STORE_"


def default_data_dir() -> Path:
    """Where the embedded PostgreSQL keeps its data when no DATABASE_URL is given."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "secret-audit" / "pgdata"


@dataclass(frozen=True)
class Webhook:
    """One alert receiver: its URL, the HMAC key its deliveries are signed with, the kinds it gets."""

    url: str
    secret: bytes = field(repr=False)
    kinds: tuple[str, ...] = ALERT_KINDS


@dataclass(frozen=True)
class AlertSettings:
    """Where alerts go and when they fire (docs/monitoring.md)."""

    webhooks: tuple[Webhook, ...] = ()
    kinds: tuple[str, ...] = ALERT_KINDS
    burst_threshold: int = 5
    burst_window_s: int = 60
    retries: int = 5
    timeout_ms: int = 5000
    queue_size: int = 1000


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
    metrics: tuple[str, ...] = ()  # "otlp", "prometheus"
    alerts: AlertSettings = field(default_factory=AlertSettings)


def _int(env: Mapping[str, str], suffix: str, default: int, low: int, high: int) -> int:
    return _read(env, "STORE_" + suffix, _int_range(low, high), default)


def _words(name: str, raw: str, allowed: tuple[str, ...], empty: str = "none") -> tuple[str, ...]:
    words = tuple(w.strip().lower() for w in raw.split(",") if w.strip())
    if words == (empty,):
        return ()
    if not words or any(w not in allowed for w in words):
        raise ConfigurationError(name, raw, f"{empty}, or a comma-separated list of " + ", ".join(allowed))
    return words


def _signing_key(name: str, raw: str) -> bytes:
    """``whsec_<base64>`` (Standard Webhooks) or any other text of at least 16 bytes, used as is."""
    key = raw.strip()
    if key.startswith("whsec_"):
        try:
            data = base64.b64decode(key[6:], validate=True)
        except ValueError:
            raise ConfigurationError(name, "<redacted>", "whsec_ followed by base64") from None
    else:
        data = key.encode()
    if len(data) < 16:
        raise ConfigurationError(name, "<redacted>", "a key of at least 16 bytes")
    return data


def _read_file(name: str, path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigurationError(name, path, f"a readable file ({why})") from None


def _webhooks(env: Mapping[str, str]) -> tuple[Webhook, ...]:
    """The webhook of ``ALERT_WEBHOOK_URL`` and its key, then those of ``ALERT_FILE``."""
    hooks = []
    url = env.get(STORE + "ALERT_WEBHOOK_URL")
    key, key_file = env.get(STORE + "ALERT_WEBHOOK_SECRET"), env.get(STORE + "ALERT_WEBHOOK_SECRET_FILE")
    if url is not None:
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError(STORE + "ALERT_WEBHOOK_URL", url, "an http:// or https:// URL")
        if (key is None) == (key_file is None):
            raise ConfigurationError(STORE + "ALERT_WEBHOOK_URL", url, "set with exactly one of "
                                     f"{STORE}ALERT_WEBHOOK_SECRET or {STORE}ALERT_WEBHOOK_SECRET_FILE")
        if key_file is not None:
            key = _read_file(STORE + "ALERT_WEBHOOK_SECRET_FILE", key_file)
        assert key is not None
        hooks.append(Webhook(url, _signing_key(STORE + "ALERT_WEBHOOK_SECRET", key)))
    path = env.get(STORE + "ALERT_FILE")
    if path is not None:
        name = STORE + "ALERT_FILE"
        allowed = 'a JSON file {"webhooks": [{"url": "https://…", "secret_file": "…", "kinds": […]}]}'
        try:
            doc = json.loads(_read_file(name, path))
            for item in doc["webhooks"]:
                secret = item.get("secret") or _read_file(name, str(item["secret_file"]))
                kinds = _words(name, ",".join(item.get("kinds", ALERT_KINDS)), ALERT_KINDS)
                if not str(item["url"]).startswith(("http://", "https://")) or not kinds:
                    raise ValueError(item["url"])
                hooks.append(Webhook(str(item["url"]), _signing_key(name, str(secret)), kinds))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigurationError(name, path, allowed) from None
    return tuple(hooks)


def _alerts(env: Mapping[str, str]) -> AlertSettings:
    kinds = env.get(STORE + "ALERT_KINDS")
    return AlertSettings(
        webhooks=_webhooks(env),
        kinds=ALERT_KINDS if kinds is None else _words(STORE + "ALERT_KINDS", kinds, ALERT_KINDS),
        burst_threshold=_int(env, "ALERT_BURST_THRESHOLD", 5, 1, 1_000_000),
        burst_window_s=_int(env, "ALERT_BURST_WINDOW_S", 60, 1, 86_400),
        retries=_int(env, "ALERT_RETRIES", 5, 0, 20),
        timeout_ms=_int(env, "ALERT_TIMEOUT_MS", 5000, 100, 120_000),
        queue_size=_int(env, "ALERT_QUEUE_SIZE", 1000, 1, 1_000_000),
    )


def _metrics(env: Mapping[str, str], workers: int) -> tuple[str, ...]:
    name = STORE + "METRICS"
    raw = env.get(name)
    exporters = () if raw is None else _words(name, raw, METRICS_EXPORTERS)
    if "prometheus" in exporters and workers > 1:
        raise ConfigurationError(name, str(raw), "otlp with several workers (a scrape reaches one of them)")
    if "otlp" in exporters and not (env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
                                    or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        # the exporter's default, localhost:4318, is the store's own port: it would post to itself
        raise ConfigurationError(name, str(raw), "otlp only with OTEL_EXPORTER_OTLP_METRICS_ENDPOINT "
                                 "or OTEL_EXPORTER_OTLP_ENDPOINT set")
    return exporters


def load_store_config(env: Mapping[str, str] | None = None) -> StoreConfig:
    """Parse ``DATABASE_URL`` and ``OTEL_PYTHON_SECRET_AUDIT_STORE_*``; raises ConfigurationError."""
    raw = os.environ if env is None else env
    env = without_empty(raw)  # an empty variable reads as unset (HOST= must not bind every interface)
    non_audit = env.get(STORE + "NON_AUDIT", "reject").strip().lower()
    if non_audit not in NON_AUDIT_MODES:
        raise ConfigurationError(STORE + "NON_AUDIT", non_audit, "one of " + ", ".join(NON_AUDIT_MODES))
    role = raw.get(STORE + "APP_ROLE", "secret_audit_app").strip()  # the one exception: empty means none
    if role and not role.replace("_", "").isalnum():
        raise ConfigurationError(STORE + "APP_ROLE", role, "letters, digits and underscores, or empty")
    data_dir = env.get(STORE + "DATA_DIR")
    archive = env.get(STORE + "ARCHIVE_DIR")
    workers = _int(env, "WORKERS", 1, 1, 64)
    return StoreConfig(
        database_url=env.get("DATABASE_URL") or None,
        data_dir=Path(data_dir).expanduser() if data_dir else default_data_dir(),
        host=env.get(STORE + "HOST", "127.0.0.1"),
        port=_int(env, "PORT", 4318, 0, 65535),
        max_body_bytes=_int(env, "MAX_BODY_BYTES", 16 * 1024 * 1024, 1024, 1 << 31),
        non_audit=non_audit,
        retention_days=_int(env, "RETENTION_DAYS", 365, 1, 36500),
        pool_size=_int(env, "POOL_SIZE", 8, 1, 256),
        workers=workers,
        ingest_concurrency=_int(env, "INGEST_CONCURRENCY", 4, 0, 256),
        app_role=role,
        archive_dir=Path(archive).expanduser() if archive else Path("audit-archive"),
        native=_read(env, "STORE_NATIVE", _bool, True),
        max_clock_skew_s=_int(env, "MAX_CLOCK_SKEW_SECONDS", 300, 0, 86400),
        max_record_age_days=_int(env, "MAX_RECORD_AGE_DAYS", 31, 1, 31),
        metrics=_metrics(env, workers),
        alerts=_alerts(env),
    )
