"""Canary: random secret values through every command family never reach spans, records or logs."""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis

from canary_ops import async_exercise, sync_exercise
from otlp_receiver import otlp_receiver
from test_launcher_e2e import launch

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent


@pytest.fixture
def audit_env():
    return {
        "OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS": "20",
        "OTEL_PYTHON_SECRET_AUDIT_SPANS": "all",
        "OTEL_PYTHON_SECRET_AUDIT_ECHO": "true",
    }


def new_canary() -> str:
    # letters and digits only, so that no sanitiser can cut it at punctuation and miss a leak
    return "cnry" + secrets.token_hex(12)


def everything_exported(audit) -> str:
    """Every byte the in-memory exporters hold, serialised the way an exporter would see it."""
    audit.flush()
    parts = [span.to_json() for span in audit.span_exporter.get_finished_spans()]
    for item in audit.log_exporter.get_finished_logs():
        rec = item.log_record
        try:
            parts.append(item.to_json())
        except AttributeError:  # an API LogRecord: serialise what an exporter would send
            parts.append(repr({k: getattr(rec, k, None) for k in dir(rec) if not k.startswith("_")}))
        parts.append(repr(dict(rec.attributes or {})))
        parts.append(repr(rec.body))
    return "\n".join(parts)


def assert_no_canary(text: str, canary: str) -> None:
    variants = {canary, canary.upper(), canary.encode().hex(), canary[4:]}
    for v in variants:
        assert v not in text, f"canary variant {v!r} leaked:\n" + _context(text, v)


def _context(text: str, needle: str) -> str:
    i = text.find(needle)
    return text[max(0, i - 300) : i + 100]


# The loggers of the library we instrument, which we do not control: redis-py 8.2 logs the text of
# server errors, values included, at DEBUG under "redis" (README, Limits). Every other logger is
# checked: ours, the SDK's, the root logger, and any logger whose name only looks like redis-py's.
THEIRS = ("redis",)


def ours(record: logging.LogRecord) -> bool:
    return not any(record.name == name or record.name.startswith(name + ".") for name in THEIRS)


def assert_nothing_leaked(audit, caplog, capfd, canary: str) -> None:
    """Our spans and records, every log record but redis-py's, and all that reached stdout or stderr."""
    assert_no_canary(everything_exported(audit), canary)
    assert_no_canary("\n".join(caplog.handler.format(rec) for rec in caplog.records if ours(rec)), canary)
    out, err = capfd.readouterr()
    assert_no_canary(out + err, canary)


def run_sync_tour(audit, redis_url: str, key: str, canary: str) -> list[dict]:
    r = redis.Redis.from_url(redis_url)
    try:
        errors = sync_exercise(r, key, canary)
    finally:
        r.close()
    records = audit.attrs()
    # the tour really happened: many audited accesses, many of them failing server-side
    assert errors >= 14
    assert len(records) >= 60
    assert sum(1 for x in records if x["audit.outcome"] == "error") >= 14
    return records


def test_sync_canary_never_leaks(audit, redis_url, key, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    canary = new_canary()
    records = run_sync_tour(audit, redis_url, key, canary)
    assert_nothing_leaked(audit, caplog, capfd, canary)
    echo = [rec.getMessage() for rec in caplog.records if rec.name.startswith("secret_audit")]
    assert sum(1 for line in echo if line.startswith("[AUDIT] ")) == len(records)
    assert_no_canary("\n".join(echo), canary)
    # the same records as OCSF events (docs/ocsf.md): still no value, and every one valid OCSF
    from ocsf_schema import problems, record_of_log
    from secret_audit import ocsf

    mapped = [ocsf.event(record_of_log(item)) for item in audit.log_exporter.get_finished_logs()]
    assert len(mapped) == len(records)
    assert_no_canary("\n".join(map(repr, mapped)), canary)
    assert [p for e in mapped for p in problems(e)] == []


def test_signed_checkpoints_carry_hashes_only(redis_url, key, tmp_path, caplog):
    """Checkpoints sign the chain: ints, a flag, hex hashes, the key id and the signature; no name, no value."""
    from conftest import instrumented
    from secret_audit.redis import RedisSecretAuditInstrumentor
    from secret_audit.signing import generate_key

    generate_key(tmp_path / "audit.key")
    env = {"OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS": "20", "OTEL_PYTHON_SECRET_AUDIT_ECHO": "true",
           "OTEL_PYTHON_SECRET_AUDIT_SIGNING_KEY_FILE": str(tmp_path / "audit.key"),
           "OTEL_PYTHON_SECRET_AUDIT_CHECKPOINT_RECORDS": "7",
           "OTEL_PYTHON_SECRET_AUDIT_CHECKPOINT_INTERVAL_MS": "10"}
    caplog.set_level(logging.DEBUG, logger="secret_audit")
    canary = new_canary()
    with instrumented(env, RedisSecretAuditInstrumentor()) as audit:
        r = redis.Redis.from_url(redis_url)
        try:
            sync_exercise(r, key, canary)
        finally:
            r.close()
        names = {a["secret.name"] for a in audit.attrs()}
    # after shutdown, so the final checkpoint is in too
    logs = [item.log_record for item in audit.log_exporter.get_finished_logs()]
    checkpoints = [rec for rec in logs if rec.event_name == "audit.checkpoint"]
    text = "\n".join(repr((rec.body, dict(rec.attributes))) for rec in logs)
    assert len(checkpoints) >= 2
    assert_no_canary(text, canary)
    assert_no_canary(caplog.text, canary)
    shapes = {
        "audit.checkpoint.head_hash": r"[0-9a-f]{64}", "audit.checkpoint.prev": r"[0-9a-f]{64}",
        "audit.chain.prev": r"[0-9a-f]{64}", "audit.chain.hash": r"[0-9a-f]{64}",
        "audit.checkpoint.signature": r"[0-9a-f]{128}", "audit.checkpoint.key_id": r"[0-9a-f]{16}",
        "audit.stream.id": r"[0-9a-f-]{36}", "audit.event.id": r"[0-9a-f-]{36}:\d+", "audit.outcome": "success",
    }
    for rec in checkpoints:
        attrs = dict(rec.attributes)
        for k, v in attrs.items():
            if isinstance(v, (bool, int)):
                continue
            assert re.fullmatch(shapes[k], v), (k, v)
        assert not any(name in rec.body for name in names)


async def test_async_canary_never_leaks(audit, redis_url, key, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    canary = new_canary()
    r = aredis.Redis.from_url(redis_url)
    try:
        errors = await async_exercise(r, key, canary)
    finally:
        await r.aclose()
    records = audit.attrs()
    assert errors >= 14
    assert len(records) >= 50
    assert_nothing_leaked(audit, caplog, capfd, canary)
    assert sum(1 for rec in caplog.records if rec.getMessage().startswith("[AUDIT] ")) == len(records)


@pytest.mark.parametrize("logger", ["secret_audit", "secret_audit.audit", "secret_audit.store", "",
                                    "opentelemetry.sdk._logs", "redisx"])
def test_the_leak_check_catches_a_value_logged_by_anything_but_redis_py(audit, redis_url, key, caplog,
                                                                         capfd, monkeypatch, logger):
    """The canary keeps its teeth: a value logged at DEBUG while the tour runs fails the check."""
    from secret_audit._internal.redis_source import RedisSource

    caplog.set_level(logging.DEBUG)
    canary = new_canary()
    describe = RedisSource.describe_error

    def careless(self, error):  # a debug line as a well-meaning change could add it
        logging.getLogger(logger).debug("redis command failed: %s", error)
        return describe(self, error)

    monkeypatch.setattr(RedisSource, "describe_error", careless)
    run_sync_tour(audit, redis_url, key, canary)
    with pytest.raises(AssertionError, match="leaked") as caught:
        assert_nothing_leaked(audit, caplog, capfd, canary)
    assert f"DEBUG    {logger or 'root'}:" in str(caught.value)


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_the_leak_check_catches_a_value_printed(audit, redis_url, key, caplog, capfd, monkeypatch, stream):
    from secret_audit._internal.redis_source import RedisSource

    canary = new_canary()
    describe = RedisSource.describe_error

    def careless(self, error):
        print(f"redis command failed: {error}", file=getattr(sys, stream))
        return describe(self, error)

    monkeypatch.setattr(RedisSource, "describe_error", careless)
    run_sync_tour(audit, redis_url, key, canary)
    with pytest.raises(AssertionError, match="leaked"):
        assert_nothing_leaked(audit, caplog, capfd, canary)


@pytest.mark.parametrize("code", ["WRONGPASS", "NOAUTH", "LOADING"])  # the replies README's Limits names
def test_redis_py_logs_server_errors_at_debug_and_a_logger_level_keeps_them_off(audit, redis_url, key, caplog,
                                                                                code):
    """README, Limits: redis-py 8.2 logs the text of server errors under "redis"; its level turns it off."""
    caplog.set_level(logging.DEBUG)
    canary = new_canary()
    r = redis.Redis.from_url(redis_url)
    theirs = logging.getLogger("redis")
    try:
        with pytest.raises(redis.exceptions.ConnectionError):  # what redis-py makes of these replies
            r.eval("return redis.error_reply(ARGV[1])", 1, key, f"{code} {canary}")
        leaked = {rec.name for rec in caplog.records if canary in rec.getMessage()}
        if tuple(int(p) for p in version("redis").split(".")[:2]) >= (8, 2):
            assert leaked == {"redis.client", "redis.connection"}
        else:
            assert leaked == set()
        caplog.clear()
        theirs.setLevel(logging.INFO)  # what README's Limits section says to do
        with pytest.raises(redis.exceptions.ConnectionError):  # what redis-py makes of these replies
            r.eval("return redis.error_reply(ARGV[1])", 1, key, f"{code} {canary}")
        audit.flush()
        assert any(rec.name == "secret_audit.audit" for rec in caplog.records)  # ours still log
        assert_no_canary(caplog.text, canary)
    finally:
        theirs.setLevel(logging.NOTSET)
        r.close()


def test_error_messages_keep_only_known_codes_and_phrases(audit, redis_url, key):
    """Server errors that quote caller data are reduced to a known code and phrase, or nothing."""
    canary = new_canary()
    r = redis.Redis.from_url(redis_url)
    script = "return redis.error_reply(ARGV[1])"
    replies = [
        canary.upper() + " leading token looks like a code",
        "NOSCRIPT " + canary,
        "WRONGPASS " + canary,
        "ERR " + canary,
        "WRONGTYPE Operation against a key holding the wrong kind of value " + canary,
    ]
    try:
        for reply in replies:
            with pytest.raises(redis.exceptions.RedisError):
                r.eval(script, 1, key, reply)
    finally:
        r.close()
    got = [(x["audit.outcome"], x.get("audit.error")) for x in audit.attrs()]
    assert got == [
        ("error", None),
        ("error", "NOSCRIPT"),
        ("denied", "WRONGPASS"),
        ("error", "ERR"),
        ("error", "WRONGTYPE Operation against a key holding the wrong kind of value"),
    ]


def test_launcher_canary_never_reaches_the_wire_or_stderr(redis_url):
    """Under opentelemetry-instrument: the raw OTLP bytes and the [AUDIT] lines carry no value."""
    key = "secret:canary:" + secrets.token_hex(4)
    canary = new_canary()
    with otlp_receiver() as rx:
        proc = launch(
            rx.url, redis_url, str(HERE / "apps" / "sa_canary_app.py"), key, canary,
            timeout=120,
            OTEL_SERVICE_NAME="canary",
            OTEL_PYTHON_SECRET_AUDIT_ECHO="true",
            # the official redis instrumentation records exception messages verbatim (its
            # choice, not ours): keep it out so the raw bytes are only what we produce
            OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="redis",
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "done"
        records = rx.audit_records()
        raw = b"".join(rx.raw)
    assert len(records) >= 100
    assert {r["attributes"]["secret.source"] for r in records} == {"redis"}
    assert sum(1 for r in records if r["attributes"]["audit.outcome"] == "error") >= 20
    for v in (canary, canary.upper(), canary[4:]):
        assert v.encode() not in raw
        assert v not in json.dumps(records)
    audit_lines = [line for line in proc.stderr.splitlines() if "[AUDIT] " in line]
    assert len(audit_lines) == len(records)
    assert_no_canary(proc.stderr, canary)


def test_key_names_cannot_forge_audit_lines(audit, redis_url, caplog):
    caplog.set_level(logging.INFO, logger="secret_audit.audit")
    forged = "secret:x\n[AUDIT] Secret accessed: secret:admin from redis (0.01ms)"
    r = redis.Redis.from_url(redis_url)
    try:
        r.get(forged)
    finally:
        r.close()
    [record] = audit.records()
    assert record.attributes["secret.name"] == forged  # the attribute keeps the exact name
    assert "\n" not in record.body
    lines = [line for rec in caplog.records for line in rec.getMessage().splitlines()]
    assert sum(1 for line in lines if line.startswith("[AUDIT] ")) == 1
