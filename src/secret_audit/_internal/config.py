"""Settings read once from ``OTEL_PYTHON_SECRET_AUDIT_*``, so a bad value fails at start-up."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from secret_audit._internal.destination import (
    PROTOCOLS,
    check_endpoint,
    protocol_of,
    resolve_endpoint,
    spool_dir_of,
)
from secret_audit._internal.parsers import (
    SOURCES,
    choice,
    failure_modes,
    patterns,
    signing_key,
    text,
)
from secret_audit.environ import PREFIX, ConfigurationError, int_range, parse_bool, read, without_empty
from secret_audit.hashing import hmac_key_from_env

__all__ = [
    "PREFIX",
    "SETTINGS",
    "SOURCES",
    "ConfigurationError",
    "Setting",
    "Settings",
    "SPAN_MODES",
    "load_settings",
    "resolve_endpoint",
]

SPAN_MODES = ("all", "in_trace", "errors", "off")
EXPORTERS = ("otlp", "console", "none")
ENCODERS = ("fast", "sdk")
ACCESS_PATHS = ("internal", "external")
AGENT_MODES = ("off", "process")
SPANS_VIA = ("auto", "app", "agent")

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
    """Every setting in one immutable object so the hot path reads attributes, not the environment.

    No field has a default: ``load_settings`` fills each from ``SETTINGS``, the one place defaults live.
    """

    enabled: bool
    redis_key_patterns: tuple[str, ...]
    redis_key_patterns_case_sensitive: bool
    redis_unknown_commands: str
    hash_names: bool
    hmac_key: bytes | None = field(repr=False)
    principal: str | None
    default_access_path: str
    spans: str
    encoder: str
    echo: bool
    exporter: str
    otlp_endpoint: str | None
    otlp_protocol: str
    otlp_headers: str | None = field(repr=False)
    queue_size: int
    queue_full_timeout_ms: int
    batch_size: int
    schedule_delay_ms: int
    export_retry_timeout_ms: int
    shutdown_timeout_ms: int
    spool_dir: str | None
    # True when spool_dir is the per-user default rather than the user's own choice.
    spool_default: bool
    spool_max_bytes: int
    failure_mode: str
    failure_modes: tuple[tuple[str, str], ...]
    fail_closed_timeout_ms: int
    handle_sigterm: bool
    signing_key_file: str | None
    checkpoint_records: int
    checkpoint_interval_ms: int
    agent: str
    spans_via: str

    def mode_for(self, source: str) -> str:
        """The failure mode for one source: its own entry, else the default."""
        for name, mode in self.failure_modes:
            if name == source:
                return mode
        return self.failure_mode


class Setting(NamedTuple):
    """One ``OTEL_PYTHON_SECRET_AUDIT_*`` variable: the docs and the tests read the list the code reads.

    A NamedTuple, not a frozen dataclass: generating a dataclass's methods costs every start-up about
    a millisecond, and a row of this table needs none of them."""

    suffix: str  # the name after the prefix
    field: str | None  # the Settings attribute it sets; None when a rule below reads it with others
    parse: Callable[[str, str], Any] | None
    default: Any
    kind: str  # the parser's kind, for the tests' bad values: bool, choice, int, text, ...
    doc: str  # what it is for, in one line; docs/configuration.md says it in full


def _int(low: int, high: int) -> Callable[[str, str], int]:
    return int_range(low, high)


_S = Setting
# Every setting, in the order of docs/configuration.md; a test checks the two against each other.
SETTINGS: tuple[Setting, ...] = (
    _S("ENABLED", "enabled", parse_bool, True, "bool", "every secret-audit instrumentor on or off"),
    _S("REDIS_KEY_PATTERNS", "redis_key_patterns", patterns, DEFAULT_REDIS_KEY_PATTERNS, "patterns",
       "which Redis keys are secrets"),
    _S("REDIS_KEY_PATTERNS_CASE_SENSITIVE", "redis_key_patterns_case_sensitive", parse_bool, False, "bool",
       "match the key patterns case-sensitively"),
    _S("REDIS_UNKNOWN_COMMANDS", "redis_unknown_commands", choice(("audit", "ignore")), "audit", "choice",
       "audit commands outside the table on their first argument"),
    _S("HASH_NAMES", "hash_names", parse_bool, False, "bool", "record hmac-sha256:<hex> instead of names"),
    _S("HMAC_KEY", None, None, None, "key", "the HMAC key (hashing.hmac_key_from_env)"),
    _S("HMAC_KEY_FILE", None, None, None, "key", "the HMAC key, from a file"),
    _S("PRINCIPAL", "principal", text, None, "text", "the service identity recorded as audit.principal"),
    _S("DEFAULT_ACCESS_PATH", "default_access_path", choice(ACCESS_PATHS), "internal", "choice",
       "audit.access_path when nothing else says"),
    _S("SPANS", "spans", choice(SPAN_MODES), "in_trace", "choice", "when audit spans are made"),
    _S("ECHO", "echo", parse_bool, False, "bool", "also write [AUDIT] lines"),
    _S("EXPORTER", "exporter", choice(EXPORTERS), "otlp", "choice", "where audit records go"),
    _S("ENCODER", "encoder", choice(ENCODERS), "fast", "choice", "our OTLP encoder or the SDK's"),
    _S("EXPORTER_OTLP_ENDPOINT", "otlp_endpoint", text, None, "text", "the audit records' own endpoint"),
    _S("EXPORTER_OTLP_PROTOCOL", None, choice(PROTOCOLS), None, "choice",
       "their protocol (destination.protocol_of)"),
    _S("EXPORTER_OTLP_HEADERS", "otlp_headers", text, None, "text", "extra headers for audit exports"),
    _S("QUEUE_SIZE", "queue_size", _int(64, 10_000_000), 65536, "int", "bound of the in-process queue"),
    _S("QUEUE_FULL_TIMEOUT_MS", "queue_full_timeout_ms", _int(0, 600_000), 2000, "int",
       "how long a caller waits for room"),
    _S("BATCH_SIZE", "batch_size", _int(1, 100_000), 512, "int", "records per export request"),
    _S("SCHEDULE_DELAY_MS", "schedule_delay_ms", _int(1, 60_000), 200, "int",
       "the longest a partial batch waits"),
    _S("EXPORT_RETRY_TIMEOUT_MS", "export_retry_timeout_ms", _int(0, 86_400_000), 60000, "int",
       "how long one batch is retried"),
    _S("SPOOL_DIR", None, None, None, "directory", "the spool's folder, or off (destination.spool_dir_of)"),
    _S("SPOOL_MAX_BYTES", "spool_max_bytes", _int(1 << 20, 1 << 40), 256 * 1024 * 1024, "int",
       "bound of the spool"),
    _S("FAILURE_MODE", None, failure_modes, None, "failure_modes", "open or closed, per source"),
    _S("FAIL_CLOSED_TIMEOUT_MS", "fail_closed_timeout_ms", _int(1, 600_000), 5000, "int",
       "how long a fail-closed call waits for its record"),
    _S("HANDLE_SIGTERM", "handle_sigterm", parse_bool, True, "bool", "flush or spool on SIGTERM"),
    _S("SIGNING_KEY_FILE", "signing_key_file", signing_key, None, "signing_key",
       "sign checkpoints with this Ed25519 key"),
    _S("CHECKPOINT_RECORDS", "checkpoint_records", _int(1, 10_000_000), 10000, "int",
       "a checkpoint after at most this many records"),
    _S("CHECKPOINT_INTERVAL_MS", "checkpoint_interval_ms", _int(10, 3_600_000), 1000, "int",
       "a checkpoint at least this often"),
    _S("AGENT", "agent", choice(AGENT_MODES), "process", "choice",
       "build and send records in this process, or in an audit agent process"),
    _S("SPANS_VIA", "spans_via", choice(SPANS_VIA), "auto", "choice",
       "with the agent: audit spans by the agent where the sampler allows, in the app, or by the agent"),
    _S("SHUTDOWN_TIMEOUT_MS", "shutdown_timeout_ms", _int(0, 600_000), 10000, "int",
       "how long exit waits for export"),
)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate every setting, raising ConfigurationError on the first bad one."""
    env = without_empty(os.environ if env is None else env)
    values: dict[str, Any] = {s.field: read(env, s.suffix, s.parse, s.default)
                              for s in SETTINGS if s.field is not None and s.parse is not None}
    # the rules that read several variables together
    if values["batch_size"] > values["queue_size"]:
        raise ConfigurationError(PREFIX + "BATCH_SIZE", str(values["batch_size"]),
                                 f"at most the queue size ({values['queue_size']})")
    no_modes: tuple[tuple[str, str], ...] = ()
    modes = read(env, "FAILURE_MODE", failure_modes, ("open", no_modes))
    values["failure_mode"], values["failure_modes"] = modes
    values["hmac_key"] = hmac_key_from_env(env, values["hash_names"])
    protocol, chosen_by = protocol_of(env)
    values["otlp_protocol"] = protocol
    if values["exporter"] == "otlp":
        check_endpoint(protocol, chosen_by, values["otlp_endpoint"], env)
    values["spool_dir"], values["spool_default"] = spool_dir_of(
        env, values["exporter"], values["encoder"], protocol, values["otlp_endpoint"]
    )
    return Settings(**values)
