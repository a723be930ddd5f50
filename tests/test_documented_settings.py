"""Every value of every setting in docs/configuration.md is run end to end, or names the test that runs it.

The table below is read from the docs: a setting or an allowed value added there without a case here
fails ``test_every_documented_value_has_a_test``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from otlp_receiver import otlp_grpc_receiver, otlp_receiver
from secret_audit.hashing import hash_name

ROOT = Path(__file__).parent.parent
HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
DOC = ROOT / "docs" / "configuration.md"
P = "OTEL_PYTHON_SECRET_AUDIT_"
DEAD = "http://127.0.0.1:9/v1/logs"
HMAC = "a-sixteen-byte-key-for-tests"


def documented() -> dict[str, list[str]]:
    """Variable -> its enumerated values (booleans as true/false), or ["*"] for a free value."""
    out: dict[str, list[str]] = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) < 4 or not cells[0].startswith(f"`{P}"):
            continue
        name, allowed = cells[0].strip("`"), cells[2]
        words = re.findall(r"`([a-z_/]+)`", allowed.split("per source")[0])
        if allowed.startswith("boolean"):
            out[name] = ["true", "false"]
        elif allowed.startswith("`") and words:
            out[name] = words + (["per-source"] if "per source" in allowed else [])
        else:
            out[name] = ["*", *words]
    return out


@dataclass
class Run:
    """What one instrumented run of tests/apps/settings_app.py produced."""

    returncode: int
    stdout: str
    stderr: str
    records: list[dict[str, Any]]
    spans: list[dict[str, Any]]
    headers: list[dict[str, str]]
    requests: list[bytes]
    prefix: str
    value: str
    stats: dict[str, Any] | None = field(default=None)

    def actions(self) -> list[tuple[str, str]]:
        return [(r["attributes"]["audit.action"], r["attributes"]["secret.name"]) for r in self.records]


def launch(redis_url: str, tmp_path: Path, *, grpc: bool = False, endpoint: str | None = None,
           args: tuple[str, ...] = (), **env: str) -> Run:
    prefix, value = secrets.token_hex(4), "canary-" + secrets.token_hex(12)
    receiver = otlp_grpc_receiver if grpc else otlp_receiver
    with otlp_receiver() as spans_rx, receiver() as rx:
        full = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTEST_"))}
        full.update(
            OTEL_SERVICE_NAME="settings", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none",
            OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="http/protobuf",
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=spans_rx.url + "/v1/traces", OTEL_BSP_SCHEDULE_DELAY="50",
            REDIS_URL=redis_url, XDG_STATE_HOME=str(tmp_path / "state"),
            # the official Redis instrumentation is installed for the tests: its spans would be parents
            OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="redis",
        )
        full[P + "EXPORTER_OTLP_ENDPOINT"] = endpoint or (rx.url if grpc else rx.url + "/v1/logs")
        full.update(env)
        proc = subprocess.run(
            [str(BIN / "opentelemetry-instrument"), sys.executable, str(HERE / "apps" / "settings_app.py"),
             prefix, value, *args], env=full, capture_output=True, text=True, timeout=120, check=False)
        run = Run(proc.returncode, proc.stdout, proc.stderr, rx.audit_records(), list(spans_rx.spans),
                  list(rx.headers), list(rx.raw), prefix, value)
    for line in proc.stdout.splitlines():
        if line.startswith("stats "):
            run.stats = json.loads(line[6:])
    # never a value, whatever the setting
    for text in (run.stdout, run.stderr, *(r.decode("latin-1") for r in run.requests)):
        assert value not in text
    return run


def default_trail(run: Run) -> None:
    p = run.prefix
    assert run.returncode == 0, run.stderr
    assert run.actions() == [("SET", f"secret:{p}"), ("GET", f"secret:{p}"), ("GET", f"secret:{p}:missing"),
                             ("GET", f"SECRET:{p}"), ("GET", f"secret:{p}")]


def names(run: Run) -> set[str]:
    return {r["attributes"]["secret.name"] for r in run.records}


def attr(run: Run, key: str) -> set[Any]:
    return {r["attributes"].get(key) for r in run.records}


def audit_spans(run: Run) -> list[dict[str, Any]]:
    return [s for s in run.spans if s["name"].startswith("secret.")]


def console_records(run: Run) -> list[dict[str, Any]]:
    decoder, text, out = json.JSONDecoder(), run.stdout, []
    text = "\n".join(line for line in text.splitlines() if not line.startswith("stats "))
    while text.strip():
        record, end = decoder.raw_decode(text.lstrip())
        out.append(record)
        text = text.lstrip()[end:]
    return out


def lost(run: Run) -> int:
    """Records the stderr loss lines count (loss reports of loss reports excluded)."""
    return sum(int(n) for n, first in re.findall(r"lost (\d+) audit records? \(sequence (\d+)\.\.", run.stderr)
               if int(first) <= 5)


def spooled_under(path: Path) -> int:
    import sqlite3

    total = 0
    for db in path.rglob("audit-spool.sqlite3"):
        with sqlite3.connect(db) as conn:
            total += conn.execute("SELECT COALESCE(SUM(records), 0) FROM batches").fetchone()[0]
    return total


Check = Callable[[Run, Path], None]

# (variable, value) -> (launch arguments, check). Values are those the docs list.
CASES: dict[tuple[str, str], tuple[dict[str, Any], Check]] = {
    (P + "ENABLED", "true"): ({P + "ENABLED": "true"}, lambda r, t: default_trail(r)),
    (P + "ENABLED", "false"): ({P + "ENABLED": "false"}, lambda r, t: (
        r.returncode == 0 or pytest.fail(r.stderr), r.records == [] or pytest.fail("audited"),
        r.stats is None or pytest.fail("a pipeline"),
        r.stderr.count("disabled by OTEL_PYTHON_SECRET_AUDIT_ENABLED") == 1 or pytest.fail(r.stderr))),
    (P + "REDIS_KEY_PATTERNS", "*"): ({P + "REDIS_KEY_PATTERNS": "plain:*"}, lambda r, t: (
        r.actions() == [("SET", f"plain:{r.prefix}")] or pytest.fail(str(r.actions())))),
    (P + "REDIS_KEY_PATTERNS_CASE_SENSITIVE", "true"): (
        {P + "REDIS_KEY_PATTERNS_CASE_SENSITIVE": "true"},
        lambda r, t: f"SECRET:{r.prefix}" not in names(r) and len(r.records) == 4 or pytest.fail(str(names(r)))),
    (P + "REDIS_KEY_PATTERNS_CASE_SENSITIVE", "false"): (
        {P + "REDIS_KEY_PATTERNS_CASE_SENSITIVE": "false"}, lambda r, t: default_trail(r)),
    (P + "HASH_NAMES", "true"): ({P + "HASH_NAMES": "true", P + "HMAC_KEY": HMAC}, lambda r, t: (
        names(r) == {hash_name(n, HMAC) for n in (f"secret:{r.prefix}", f"secret:{r.prefix}:missing",
                                                   f"SECRET:{r.prefix}")} or pytest.fail(str(names(r))))),
    (P + "HASH_NAMES", "false"): ({P + "HASH_NAMES": "false", P + "HMAC_KEY": HMAC}, lambda r, t: default_trail(r)),
    (P + "HMAC_KEY", "*"): ({P + "HASH_NAMES": "true", P + "HMAC_KEY": HMAC}, lambda r, t: (
        hash_name(f"secret:{r.prefix}", HMAC) in names(r) or pytest.fail(str(names(r))))),
    (P + "PRINCIPAL", "*"): ({P + "PRINCIPAL": "svc-payments"}, lambda r, t: (
        attr(r, "audit.principal") == {"svc-payments"} or pytest.fail(str(attr(r, "audit.principal"))))),
    (P + "DEFAULT_ACCESS_PATH", "internal"): ({P + "DEFAULT_ACCESS_PATH": "internal"}, lambda r, t: (
        attr(r, "audit.access_path") == {"internal"} or pytest.fail(str(attr(r, "audit.access_path"))))),
    (P + "DEFAULT_ACCESS_PATH", "external"): ({P + "DEFAULT_ACCESS_PATH": "external"}, lambda r, t: (
        attr(r, "audit.access_path") == {"external"} or pytest.fail(str(attr(r, "audit.access_path"))))),
    (P + "SPANS", "in_trace"): ({P + "SPANS": "in_trace"}, lambda r, t: (
        len(audit_spans(r)) == 1 or pytest.fail(str(audit_spans(r))))),
    (P + "SPANS", "all"): ({P + "SPANS": "all"}, lambda r, t: (
        len(audit_spans(r)) == 5 or pytest.fail(str(audit_spans(r))))),
    (P + "SPANS", "errors"): ({P + "SPANS": "errors"}, lambda r, t: (
        audit_spans(r) == [] and len(r.records) == 5 or pytest.fail(str(audit_spans(r))))),
    (P + "SPANS", "off"): ({P + "SPANS": "off"}, lambda r, t: (
        audit_spans(r) == [] and len(r.records) == 5 or pytest.fail(str(audit_spans(r))))),
    (P + "ECHO", "true"): ({P + "ECHO": "true"}, lambda r, t: (
        r.stderr.count("[AUDIT] ") == 5 or pytest.fail(r.stderr))),
    (P + "ECHO", "false"): ({P + "ECHO": "false"}, lambda r, t: (
        "[AUDIT]" not in r.stderr or pytest.fail(r.stderr))),
    (P + "EXPORTER", "otlp"): ({P + "EXPORTER": "otlp"}, lambda r, t: default_trail(r)),
    (P + "EXPORTER", "console"): ({P + "EXPORTER": "console"}, lambda r, t: (
        r.records == [] and len(console_records(r)) == 5 or pytest.fail(r.stdout))),
    (P + "EXPORTER", "none"): ({P + "EXPORTER": "none", P + "SPANS": "all"}, lambda r, t: (
        r.records == [] and len(audit_spans(r)) == 5 or pytest.fail(str(r.records)))),
    (P + "ENCODER", "fast"): ({P + "ENCODER": "fast"}, lambda r, t: default_trail(r)),
    (P + "ENCODER", "sdk"): ({P + "ENCODER": "sdk"}, lambda r, t: default_trail(r)),
    (P + "AGENT", "off"): ({P + "AGENT": "off"}, lambda r, t: (
        default_trail(r), r.stats is not None and "agent" not in r.stats or pytest.fail(str(r.stats)))),
    (P + "AGENT", "process"): ({P + "AGENT": "process", P + "SPANS": "all"}, lambda r, t: (
        default_trail(r), r.stats is not None and r.stats["agent"]["mode"] == "process" or pytest.fail(str(r.stats)),
        len(audit_spans(r)) == 5 or pytest.fail(str(audit_spans(r))),
        {s["span_id"] for s in audit_spans(r)} == {x["span_id"] for x in r.records} or pytest.fail(str(r.records)))),
    (P + "SPANS_VIA", "app"): ({P + "AGENT": "process", P + "SPANS_VIA": "app", P + "SPANS": "all"}, lambda r, t: (
        default_trail(r), len(audit_spans(r)) == 5 or pytest.fail(str(audit_spans(r))))),
    (P + "SPANS_VIA", "agent"): ({P + "AGENT": "process", P + "SPANS_VIA": "agent", P + "SPANS": "all"}, lambda r, t: (
        default_trail(r), len(audit_spans(r)) == 5 or pytest.fail(str(audit_spans(r))),
        {(s["trace_id"], s["span_id"]) for s in audit_spans(r)} == {(x["trace_id"], x["span_id"]) for x in r.records}
        or pytest.fail(str(r.records)))),
    (P + "SPANS_VIA", "auto"): ({P + "AGENT": "process", P + "SPANS_VIA": "auto", P + "SPANS": "all"}, lambda r, t: (
        default_trail(r), len(audit_spans(r)) == 5 or pytest.fail(str(audit_spans(r))),
        {(s["trace_id"], s["span_id"]) for s in audit_spans(r)} == {(x["trace_id"], x["span_id"]) for x in r.records}
        or pytest.fail(str(r.records)))),
    (P + "EXPORTER_OTLP_ENDPOINT", "*"): ({}, lambda r, t: default_trail(r)),
    (P + "EXPORTER_OTLP_PROTOCOL", "grpc"): ({P + "EXPORTER_OTLP_PROTOCOL": "grpc", "grpc": True},
                                             lambda r, t: default_trail(r)),
    (P + "EXPORTER_OTLP_PROTOCOL", "http/protobuf"): ({P + "EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
                                                      lambda r, t: default_trail(r)),
    (P + "EXPORTER_OTLP_HEADERS", "*"): ({P + "EXPORTER_OTLP_HEADERS": "x-audit-tenant=blue%20team"},
                                         lambda r, t: (
        {h.get("x-audit-tenant") for h in r.headers} == {"blue team"} or pytest.fail(str(r.headers)))),
    (P + "QUEUE_SIZE", "*"): ({P + "QUEUE_SIZE": "64", P + "BATCH_SIZE": "64"}, lambda r, t: default_trail(r)),
    (P + "QUEUE_FULL_TIMEOUT_MS", "*"): ({P + "QUEUE_FULL_TIMEOUT_MS": "0"}, lambda r, t: default_trail(r)),
    (P + "BATCH_SIZE", "*"): ({P + "BATCH_SIZE": "1"}, lambda r, t: (
        default_trail(r), len(r.requests) >= 5 or pytest.fail(f"{len(r.requests)} requests"))),
    (P + "SCHEDULE_DELAY_MS", "*"): ({P + "SCHEDULE_DELAY_MS": "60000"}, lambda r, t: default_trail(r)),
    (P + "EXPORT_RETRY_TIMEOUT_MS", "*"): (
        {P + "EXPORT_RETRY_TIMEOUT_MS": "0", P + "SPOOL_DIR": "off", "endpoint": DEAD}, lambda r, t: (
            lost(r) == 5 or pytest.fail(r.stderr))),
    (P + "SPOOL_DIR", "*"): ({P + "SPOOL_DIR": "{tmp}/chosen", "endpoint": DEAD}, lambda r, t: (
        spooled_under(t / "chosen") == 5 or pytest.fail(r.stderr))),
    (P + "SPOOL_DIR", "off"): ({P + "SPOOL_DIR": "off", P + "EXPORT_RETRY_TIMEOUT_MS": "0", "endpoint": DEAD},
                               lambda r, t: (spooled_under(t) == 0 and lost(r) == 5 or pytest.fail(r.stderr))),
    (P + "SPOOL_MAX_BYTES", "*"): ({P + "SPOOL_MAX_BYTES": str(1 << 20), "endpoint": DEAD}, lambda r, t: (
        spooled_under(t / "state") == 5 or pytest.fail(r.stderr))),
    (P + "FAILURE_MODE", "open"): ({P + "FAILURE_MODE": "open", P + "SPOOL_DIR": "off",
                                    P + "EXPORT_RETRY_TIMEOUT_MS": "0", "endpoint": DEAD},
                                   lambda r, t: r.returncode == 0 or pytest.fail(r.stderr)),
    (P + "FAILURE_MODE", "closed"): ({P + "FAILURE_MODE": "closed", P + "SPOOL_DIR": "off",
                                      P + "EXPORT_RETRY_TIMEOUT_MS": "0", "endpoint": DEAD}, lambda r, t: (
        r.returncode != 0 and "AuditUnavailableError" in r.stderr or pytest.fail(r.stderr))),
    (P + "FAILURE_MODE", "per-source"): ({P + "FAILURE_MODE": "open,redis=closed", P + "SPOOL_DIR": "off",
                                          P + "EXPORT_RETRY_TIMEOUT_MS": "0", "endpoint": DEAD}, lambda r, t: (
        r.returncode != 0 and "AuditUnavailableError" in r.stderr or pytest.fail(r.stderr))),
    (P + "FAIL_CLOSED_TIMEOUT_MS", "*"): ({P + "FAILURE_MODE": "closed", P + "FAIL_CLOSED_TIMEOUT_MS": "3000"},
                                          lambda r, t: default_trail(r)),
    (P + "REDIS_UNKNOWN_COMMANDS", "audit"): ({P + "REDIS_UNKNOWN_COMMANDS": "audit", "args": ["--unknown"]},
                                              lambda r, t: (
        r.actions()[-1] == ("VAULTMOD.READ", f"secret:{r.prefix}") and attr(r, "audit.operation") >= {"unknown"}
        or pytest.fail(str(r.actions())))),
    (P + "REDIS_UNKNOWN_COMMANDS", "ignore"): ({P + "REDIS_UNKNOWN_COMMANDS": "ignore", "args": ["--unknown"]},
                                               lambda r, t: default_trail(r)),
    (P + "SHUTDOWN_TIMEOUT_MS", "*"): ({P + "SHUTDOWN_TIMEOUT_MS": "600000", "endpoint": DEAD}, lambda r, t: (
        r.returncode == 0 and spooled_under(t / "state") == 5 or pytest.fail(r.stderr))),
}

# Settings whose effect needs more than one run of the app: the tests that run them end to end.
ELSEWHERE: dict[str, list[str]] = {
    P + "HMAC_KEY_FILE": ["tests/test_hmac_names.py"],
    P + "HANDLE_SIGTERM": ["tests/test_lifecycle.py", "tests/test_agent.py"],
    **{P + "STORE_" + name: ["tests/store/test_store_settings.py"] for name in (
        "DATA_DIR", "HOST", "PORT", "MAX_BODY_BYTES", "NON_AUDIT", "RETENTION_DAYS", "ARCHIVE_DIR",
        "POOL_SIZE", "INGEST_CONCURRENCY", "NATIVE", "WORKERS", "APP_ROLE", "URL", "TOKEN")},
    P + "SIGNING_KEY_FILE": ["tests/test_checkpoint.py"],  # and the demo, under the launcher
    P + "CHECKPOINT_RECORDS": ["tests/test_checkpoint.py"],
    P + "CHECKPOINT_INTERVAL_MS": ["tests/test_checkpoint.py"],
    P + "STORE_METRICS": ["tests/store/test_store_metrics.py"],
    **{P + "STORE_ALERT_" + name: ["tests/store/test_store_alerts.py"] for name in (
        "WEBHOOK_URL", "WEBHOOK_SECRET", "WEBHOOK_SECRET_FILE", "FILE", "KINDS", "BURST_THRESHOLD",
        "BURST_WINDOW_S", "RETRIES", "TIMEOUT_MS", "QUEUE_SIZE")},
    P + "STORE_MAX_CLOCK_SKEW_SECONDS": ["tests/store/test_store_ingest.py"],
    P + "STORE_MAX_RECORD_AGE_DAYS": ["tests/store/test_store_ingest.py"],
}


def test_every_documented_value_has_a_test():
    missing = []
    for name, values in documented().items():
        for value in values:
            if (name, value) not in CASES and name not in ELSEWHERE:
                missing.append(f"{name}={value}")
    assert not missing, f"documented in docs/configuration.md without a test: {missing}"
    for name, files in ELSEWHERE.items():
        for file in files:
            text = (ROOT / file).read_text()
            short = name.removeprefix(P)
            assert name in text or short in text or f'"{short.removeprefix("STORE_")}"' in text, (
                f"{file} does not set {name}")
    stale = {k for k in CASES if k[0] not in documented()}
    assert not stale, f"cases for settings the docs do not list: {stale}"


@pytest.mark.parametrize("case", sorted(CASES), ids=lambda c: f"{c[0].removeprefix(P)}={c[1]}")
def test_documented_value_end_to_end(case, redis_url, tmp_path):
    env, check = CASES[case]
    env = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for k, v in env.items()}
    grpc = bool(env.pop("grpc", False))
    args = tuple(env.pop("args", ()))
    endpoint = env.pop("endpoint", None)
    run = launch(redis_url, tmp_path, grpc=grpc, endpoint=endpoint, args=args, **env)
    check(run, tmp_path)
