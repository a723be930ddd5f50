"""Settings read once from ``OTEL_PYTHON_SECRET_AUDIT_*``, so a bad value fails at start-up."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from secret_audit.environ import PREFIX, ConfigurationError
from secret_audit.environ import int_range as _int_range
from secret_audit.environ import parse_bool as _bool
from secret_audit.environ import read as _read
from secret_audit.hashing import hmac_key_from_env

__all__ = [
    "PREFIX",
    "ConfigurationError",
    "Settings",
    "SPAN_MODES",
    "load_settings",
]

SPAN_MODES = ("all", "in_trace", "errors", "off")
EXPORTERS = ("otlp", "console", "none")
ENCODERS = ("fast", "sdk")
FAILURE_MODES = ("open", "closed")
PROTOCOLS = ("grpc", "http/protobuf")
# The sources a per-source setting may name: anything else is a typo that would silently apply
# the default to the source the user meant.
SOURCES = ("redis", "gcp_secret_manager")
ACCESS_PATHS = ("internal", "external")

DEFAULT_REDIS_KEY_PATTERNS = (
    "*secret*",
    "*credential*",
    "*password*",
    "*passwd*",
    "*token*",
    "*api_key*",
    "*apikey*",
    "*private_key*",
)


@dataclass(frozen=True)
class Settings:
    """Every setting in one immutable object so the hot path reads attributes, not the environment."""

    enabled: bool = True
    redis_key_patterns: tuple[str, ...] = DEFAULT_REDIS_KEY_PATTERNS
    redis_key_patterns_case_sensitive: bool = False
    redis_unknown_commands: str = "audit"
    hash_names: bool = False
    hmac_key: bytes | None = field(default=None, repr=False)
    principal: str | None = None
    default_access_path: str = "internal"
    spans: str = "in_trace"
    encoder: str = "fast"
    echo: bool = False
    exporter: str = "otlp"
    otlp_endpoint: str | None = None
    otlp_protocol: str = "http/protobuf"
    otlp_headers: str | None = field(default=None, repr=False)
    queue_size: int = 65536
    queue_full_timeout_ms: int = 2000
    batch_size: int = 512
    schedule_delay_ms: int = 200
    export_retry_timeout_ms: int = 60000
    shutdown_timeout_ms: int = 10000
    spool_dir: str | None = None
    # True when spool_dir is the per-user default rather than the user's own choice.
    spool_default: bool = False
    spool_max_bytes: int = 256 * 1024 * 1024
    failure_mode: str = "open"
    failure_modes: tuple[tuple[str, str], ...] = ()
    fail_closed_timeout_ms: int = 5000
    handle_sigterm: bool = True
    signing_key_file: str | None = None
    checkpoint_records: int = 10000
    checkpoint_interval_ms: int = 1000

    def mode_for(self, source: str) -> str:
        """The failure mode for one source: its own entry, else the default."""
        for name, mode in self.failure_modes:
            if name == source:
                return mode
        return self.failure_mode


def _choice(choices: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        low = raw.strip().lower()
        if low not in choices:
            raise ConfigurationError(name, raw, "one of " + ", ".join(choices))
        return low

    return parse


def _patterns(name: str, raw: str) -> tuple[str, ...]:
    items = tuple(p.strip() for p in raw.split(",") if p.strip())
    if not items:
        raise ConfigurationError(name, raw, "a comma-separated list of one or more glob patterns")
    return items


def _text(name: str, raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ConfigurationError(name, raw, "a non-empty string")
    return value


def _failure_modes(name: str, raw: str) -> tuple[str, tuple[tuple[str, str], ...]]:
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


def _spool_dir(
    env: Mapping[str, str], exporter: str, encoder: str, protocol: str, endpoint: str | None
) -> tuple[str | None, bool]:
    """The spool folder (None: no spool) and whether it is the per-user default."""
    name = PREFIX + "SPOOL_DIR"
    raw = env.get(name)
    if raw is not None and raw.strip().lower() == "off":
        return None, False
    usable = exporter == "otlp" and encoder == "fast"
    if raw is not None:
        directory = _directory(name, raw)
        if not usable:
            raise ConfigurationError(
                name, raw, f"'off' unless {PREFIX}EXPORTER=otlp and {PREFIX}ENCODER=fast (the spool keeps "
                "our encoded OTLP requests)"
            )
        return directory, False
    if not usable:
        return None, False
    from secret_audit._internal.spooldir import default_spool_dir

    target, _ = resolve_endpoint(protocol, endpoint, env)
    headers = "\n".join(
        env.get(n, "") for n in ("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS",
                                 PREFIX + "EXPORTER_OTLP_HEADERS")
    )
    return default_spool_dir(protocol, target, headers, env), True


def _directory(name: str, raw: str) -> str:
    path = Path(raw.strip())
    if not raw.strip():
        raise ConfigurationError(name, raw, "a directory path")
    if path.exists() and not path.is_dir():
        raise ConfigurationError(name, raw, "a directory (this path is a file)")
    return str(path)


def _signing_key(name: str, raw: str) -> str:
    """A path to an Ed25519 private key (PEM), loaded once here so that a bad one stops start-up."""
    from secret_audit.signing import KeyFileError, load_signer

    try:
        load_signer(raw.strip())
    except KeyFileError as exc:
        raise ConfigurationError(name, raw, f"an Ed25519 private key in PEM (the file {exc.reason}); "
                                 "make one with `secret-audit keygen PATH`") from None
    return raw.strip()


def _protocol(env: Mapping[str, str]) -> tuple[str, str]:
    """The audit exporter's protocol and the variable that chose it.

    Our own endpoint setting names one place, the audit store or a collector's OTLP/HTTP port:
    it keeps ``http/protobuf`` unless our own protocol setting says otherwise. The generic
    ``OTEL_EXPORTER_OTLP_PROTOCOL`` (which a distro sets to grpc) is for the generic endpoint.
    """
    names = [PREFIX + "EXPORTER_OTLP_PROTOCOL"]
    if not env.get(PREFIX + "EXPORTER_OTLP_ENDPOINT"):
        names += ["OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
    for name in names:
        raw = env.get(name)
        if raw is not None and (raw.strip() or name.startswith(PREFIX)):
            return _choice(PROTOCOLS)(name, raw), name
    return "http/protobuf", "the default"


def resolve_endpoint(protocol: str, override: str | None, env: Mapping[str, str]) -> tuple[str, str]:
    """The audit exporter's endpoint as the SDK's log exporter would resolve it, and its variable."""
    if override:
        return override, PREFIX + "EXPORTER_OTLP_ENDPOINT"
    logs = env.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")
    if logs:
        return logs, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if protocol == "grpc":
        return base or "http://localhost:4317", "OTEL_EXPORTER_OTLP_ENDPOINT"
    return (base or "http://localhost:4318").rstrip("/") + "/v1/logs", "OTEL_EXPORTER_OTLP_ENDPOINT"


def _check_endpoint(protocol: str, chosen_by: str, override: str | None, env: Mapping[str, str]) -> None:
    """Refuse a protocol the endpoint cannot speak, rather than lose every record at run time."""
    from urllib.parse import urlsplit

    endpoint, variable = resolve_endpoint(protocol, override, env)
    path = urlsplit(endpoint if "://" in endpoint else "//" + endpoint).path
    if protocol == "grpc" and path not in ("", "/"):
        raise ConfigurationError(
            variable, endpoint,
            f"an endpoint without a path for gRPC (the protocol is grpc, from {chosen_by}); "
            f"{path!r} is an OTLP/HTTP path: set {PREFIX}EXPORTER_OTLP_PROTOCOL=http/protobuf",
        )
    if protocol == "http/protobuf" and path in ("", "/"):
        raise ConfigurationError(
            variable, endpoint, "a full OTLP/HTTP logs URL with its path, e.g. http://host:4318/v1/logs"
        )


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate every setting, raising ConfigurationError on the first bad one."""
    env = os.environ if env is None else env
    hash_names = _read(env, "HASH_NAMES", _bool, False)
    queue_size = _read(env, "QUEUE_SIZE", _int_range(64, 10_000_000), 65536)
    batch_size = _read(env, "BATCH_SIZE", _int_range(1, 100_000), 512)
    if batch_size > queue_size:
        raise ConfigurationError(
            PREFIX + "BATCH_SIZE", str(batch_size), f"at most the queue size ({queue_size})"
        )
    no_modes: tuple[tuple[str, str], ...] = ()
    failure_mode, failure_modes = _read(env, "FAILURE_MODE", _failure_modes, ("open", no_modes))
    protocol, chosen_by = _protocol(env)
    exporter = _read(env, "EXPORTER", _choice(EXPORTERS), "otlp")
    endpoint = _read(env, "EXPORTER_OTLP_ENDPOINT", _text, None)
    if exporter == "otlp":
        _check_endpoint(protocol, chosen_by, endpoint, env)
    encoder = _read(env, "ENCODER", _choice(ENCODERS), "fast")
    spool_dir, spool_default = _spool_dir(env, exporter, encoder, protocol, endpoint)
    return Settings(
        enabled=_read(env, "ENABLED", _bool, True),
        redis_key_patterns=_read(env, "REDIS_KEY_PATTERNS", _patterns, DEFAULT_REDIS_KEY_PATTERNS),
        redis_key_patterns_case_sensitive=_read(
            env, "REDIS_KEY_PATTERNS_CASE_SENSITIVE", _bool, False
        ),
        redis_unknown_commands=_read(env, "REDIS_UNKNOWN_COMMANDS", _choice(("audit", "ignore")), "audit"),
        hash_names=hash_names,
        hmac_key=hmac_key_from_env(env, hash_names),
        principal=_read(env, "PRINCIPAL", _text, None),
        default_access_path=_read(env, "DEFAULT_ACCESS_PATH", _choice(ACCESS_PATHS), "internal"),
        spans=_read(env, "SPANS", _choice(SPAN_MODES), "in_trace"),
        encoder=encoder,
        echo=_read(env, "ECHO", _bool, False),
        exporter=exporter,
        otlp_endpoint=endpoint,
        otlp_protocol=protocol,
        otlp_headers=_read(env, "EXPORTER_OTLP_HEADERS", _text, None),
        queue_size=queue_size,
        queue_full_timeout_ms=_read(env, "QUEUE_FULL_TIMEOUT_MS", _int_range(0, 600_000), 2000),
        batch_size=batch_size,
        schedule_delay_ms=_read(env, "SCHEDULE_DELAY_MS", _int_range(1, 60_000), 200),
        export_retry_timeout_ms=_read(
            env, "EXPORT_RETRY_TIMEOUT_MS", _int_range(0, 86_400_000), 60000
        ),
        shutdown_timeout_ms=_read(env, "SHUTDOWN_TIMEOUT_MS", _int_range(0, 600_000), 10000),
        spool_dir=spool_dir,
        spool_default=spool_default,
        spool_max_bytes=_read(env, "SPOOL_MAX_BYTES", _int_range(1 << 20, 1 << 40), 256 * 1024 * 1024),
        failure_mode=failure_mode,
        failure_modes=failure_modes,
        fail_closed_timeout_ms=_read(env, "FAIL_CLOSED_TIMEOUT_MS", _int_range(1, 600_000), 5000),
        handle_sigterm=_read(env, "HANDLE_SIGTERM", _bool, True),
        signing_key_file=_read(env, "SIGNING_KEY_FILE", _signing_key, None),
        checkpoint_records=_read(env, "CHECKPOINT_RECORDS", _int_range(1, 10_000_000), 10000),
        checkpoint_interval_ms=_read(env, "CHECKPOINT_INTERVAL_MS", _int_range(10, 3_600_000), 1000),
    )
