"""Settings: every bad value fails fast and says what is allowed; key patterns select the secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from secret_audit import ConfigurationError
from secret_audit._internal import config
from secret_audit._internal.config import PREFIX, load_settings
from secret_audit._internal.matcher import KeyMatcher

BIN = Path(sys.executable).parent

# Bad values per parser kind; each must be refused with a message naming variable, value and rule.
BAD_BY_KIND = {
    "bool": ["maybe", "2", "tru", "enabled"],
    "choice": ["sometimes", "ALL-OF-THEM", "-"],
    "int": ["abc", "1.5", "-1", "99999999999999"],
    "text": [],  # any text goes; an empty one reads as unset (test_an_empty_variable_reads_as_unset)
    "patterns": [" , ", ","],
    "failure_modes": ["sideways", "redis=", "=open", " , ", "gcp=closed"],
    "directory": [__file__],  # a file, not a folder
    "signing_key": ["/nonexistent/sa/audit.key"],
    "key": [],  # the HMAC key's own tests: test_cross_field_and_key_errors
}
REDACTED = {"HMAC_KEY"}


def variables() -> list[tuple[str, str]]:
    """(suffix, kind) for every variable load_settings reads: its table."""
    found = [(s.suffix, s.kind) for s in config.SETTINGS]
    assert len(found) >= 25, found
    return found


CASES = [(suffix, bad) for suffix, kind in variables() for bad in BAD_BY_KIND.get(kind, ["<none>"])]


def test_the_table_is_the_docs_table():
    """docs/configuration.md lists the producer's settings in the table's order, with its defaults."""
    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    rows = [line.split(" | ") for line in doc.splitlines()
            if line.startswith(f"| `{PREFIX}") and not line.startswith(f"| `{PREFIX}STORE_")]
    assert [r[0].strip("|` ") for r in rows] == [PREFIX + s.suffix for s in config.SETTINGS]
    for row, setting in zip(rows, config.SETTINGS, strict=True):
        if isinstance(setting.default, (bool, int)) and setting.field:
            shown = str(setting.default).lower() if isinstance(setting.default, bool) else str(setting.default)
            assert row[1].startswith(f"`{shown}`"), (setting.suffix, row[1])
        elif isinstance(setting.default, str):
            assert row[1] == f"`{setting.default}`", (setting.suffix, row[1])


@pytest.mark.parametrize(("suffix", "bad"), CASES)
def test_every_bad_value_is_refused_with_name_value_and_rule(suffix, bad):
    assert bad != "<none>", f"add bad values for the parser kind of {PREFIX + suffix} to BAD_BY_KIND"
    name = PREFIX + suffix
    env = {name: bad}
    with pytest.raises(ConfigurationError) as info:
        load_settings(env)
    err = info.value
    message = str(err)
    assert err.variable == name
    assert message.startswith(f"{name}=")
    assert repr(bad) in message
    assert ": expected " in message
    assert err.allowed
    assert err.allowed in message


@pytest.mark.parametrize(
    ("env", "variable", "fragment"),
    [
        ({"HASH_NAMES": "true"}, "HASH_NAMES", "HMAC_KEY"),
        ({"HMAC_KEY": "short"}, "HMAC_KEY", "at least 16 bytes"),
        ({"HMAC_KEY_FILE": "/nonexistent/sa/hmac.key"}, "HMAC_KEY_FILE", "a readable file"),
        ({"HMAC_KEY": "x" * 32, "HMAC_KEY_FILE": "/tmp/k"}, "HMAC_KEY_FILE", "choose one"),
        ({"QUEUE_SIZE": "100", "BATCH_SIZE": "200"}, "BATCH_SIZE", "at most the queue size (100)"),
        ({"QUEUE_SIZE": "63"}, "QUEUE_SIZE", "an integer from 64 to"),
    ],
)
def test_cross_field_and_key_errors(env, variable, fragment):
    with pytest.raises(ConfigurationError) as info:
        load_settings({PREFIX + k: v for k, v in env.items()})
    assert info.value.variable == PREFIX + variable
    assert fragment in str(info.value)


def test_hmac_key_value_is_never_echoed_in_the_error():
    key = "tooshortkey"
    with pytest.raises(ConfigurationError) as info:
        load_settings({PREFIX + "HMAC_KEY": key})
    assert key not in str(info.value)
    assert "<redacted>" in str(info.value)


def test_short_hmac_key_file_is_refused(tmp_path):
    path = tmp_path / "k"
    path.write_text("short\n")
    with pytest.raises(ConfigurationError, match="at least 16 bytes"):
        load_settings({PREFIX + "HMAC_KEY_FILE": str(path)})


def test_bad_standard_otlp_protocol_is_refused():
    with pytest.raises(ConfigurationError) as info:
        load_settings({"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"})
    assert info.value.variable == "OTEL_EXPORTER_OTLP_PROTOCOL"
    assert "grpc" in str(info.value)


def test_good_values_parse():
    s = load_settings(
        {
            PREFIX + "ENABLED": " Yes ",
            PREFIX + "SPANS": "ALL",
            PREFIX + "REDIS_KEY_PATTERNS": " app:cred:* , vault/* ,",
            PREFIX + "QUEUE_SIZE": "128",
            PREFIX + "BATCH_SIZE": "128",
        }
    )
    assert s.enabled is True
    assert s.spans == "all"
    assert s.redis_key_patterns == ("app:cred:*", "vault/*")
    assert (s.queue_size, s.batch_size) == (128, 128)


def launch(*argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTEST_"))}
    env.update(OTEL_TRACES_EXPORTER="none", OTEL_LOGS_EXPORTER="none", OTEL_METRICS_EXPORTER="none")
    env.update(extra)
    return subprocess.run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, *argv],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [("SPANS", "sometimes"), ("QUEUE_SIZE", "lots"), ("HASH_NAMES", "true")],
)
def test_bad_value_under_the_launcher_stops_the_process(variable, value):
    proc = launch("-c", "print('app ran unaudited')", **{PREFIX + variable: value})
    assert proc.returncode != 0
    assert "app ran unaudited" not in proc.stdout
    assert f"{PREFIX}{variable}={value!r} is not valid: expected " in proc.stderr


def test_good_settings_under_the_launcher_run_the_app():
    proc = launch("-c", "print('app ran')", **{PREFIX + "SPANS": "all", PREFIX + "EXPORTER": "none"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "app ran\n"


# ---- key patterns ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "case_sensitive", "key", "hit"),
    [
        (config.DEFAULT_REDIS_KEY_PATTERNS, False, "session:abc", False),
        (config.DEFAULT_REDIS_KEY_PATTERNS, False, "user:1:password", True),
        (config.DEFAULT_REDIS_KEY_PATTERNS, False, "USER:1:PASSWORD", True),
        (config.DEFAULT_REDIS_KEY_PATTERNS, False, b"svc:api_key", True),
        (config.DEFAULT_REDIS_KEY_PATTERNS, False, "oauth:TOKEN:x", True),
        (config.DEFAULT_REDIS_KEY_PATTERNS, True, "USER:1:PASSWORD", False),
        (("app:cred:*",), False, "app:cred:db", True),
        (("app:cred:*",), False, "APP:CRED:db", True),
        (("app:cred:*",), True, "APP:CRED:db", False),
        (("app:cred:*",), False, "x:app:cred:db", False),  # anchored, not a substring match
        (("vault/?",), False, "vault/a", True),
        (("vault/?",), False, "vault/ab", False),
        (("k[0-9]",), False, "k7", True),
        (("k[0-9]",), False, "kx", False),
        (("*",), False, "anything:at:all", True),
        (("*",), True, b"\xff\xfe", True),
        (("*secret*",), False, b"\xffsecret\xfe", True),  # non-UTF-8 bytes keys still match
    ],
)
def test_key_matcher(patterns, case_sensitive, key, hit):
    matcher = KeyMatcher(patterns, case_sensitive=case_sensitive)
    assert matcher(key) is hit
    assert matcher(key) is hit  # cached answer agrees


def test_key_matcher_never_raises_on_odd_keys():
    matcher = KeyMatcher(("*secret*",))
    assert matcher(["unhashable"]) is False
    assert matcher(12345) is False
    assert matcher(memoryview(b"app:secret:1")) is True  # redis-py accepts these as keys
    assert matcher(bytearray(b"app:secret:1")) is True
    assert matcher(memoryview(b"app:plain:1")) is False


class TestCustomPatternsEndToEnd:
    @pytest.fixture
    def audit_env(self):
        return {
            "OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS": "20",
            "OTEL_PYTHON_SECRET_AUDIT_REDIS_KEY_PATTERNS": "app:cred:*,vault/*",
            "OTEL_PYTHON_SECRET_AUDIT_REDIS_KEY_PATTERNS_CASE_SENSITIVE": "true",
        }

    def test_only_the_configured_patterns_are_audited(self, audit, redis_url, key):
        r = redis.Redis.from_url(redis_url)
        suffix = key.split(":", 1)[1]
        try:
            r.set(f"app:cred:{suffix}", "v")
            r.set(f"APP:CRED:{suffix}", "v")  # case-sensitive: not audited
            r.set(f"vault/{suffix}", "v")
            r.set(key, "v")  # the default patterns are replaced, not extended
            r.delete(f"app:cred:{suffix}", f"APP:CRED:{suffix}", f"vault/{suffix}", key)
        finally:
            r.close()
        recs = [(x["audit.action"], x["secret.name"]) for x in audit.attrs()]
        assert recs == [
            ("SET", f"app:cred:{suffix}"),
            ("SET", f"vault/{suffix}"),
            ("DEL", f"app:cred:{suffix}"),
            ("DEL", f"vault/{suffix}"),
        ]


class TestMatchEverything:
    @pytest.fixture
    def audit_env(self):
        return {
            "OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS": "20",
            "OTEL_PYTHON_SECRET_AUDIT_REDIS_KEY_PATTERNS": "*",
        }

    def test_star_audits_every_key(self, audit, redis_url, key):
        r = redis.Redis.from_url(redis_url)
        try:
            r.set("plain:" + key, "v")
            r.get("plain:" + key)
            r.ping()  # no key: nothing to audit
            r.get(12345)  # redis-py sends numbers as their text
            r.get(1.5)
        finally:
            r.close()
        recs = audit.attrs()
        assert [(x["audit.action"], x["secret.name"]) for x in recs] == [
            ("SET", "plain:" + key),
            ("GET", "plain:" + key),
            ("GET", "12345"),
            ("GET", "1.5"),
        ]
        assert all(isinstance(x["secret.name"], str) for x in recs)


def test_memoryview_and_bytearray_keys_are_audited_by_value(audit, redis_url, key):
    r = redis.Redis.from_url(redis_url)
    buf = bytearray(key.encode())
    try:
        r.set(memoryview(buf), "v")
        assert r.get(bytes(buf)) == b"v"
        buf[:6] = b"XXXXXX"  # the caller reuses its buffer: the record keeps the name it had
        audit.flush()
    finally:
        r.close()
    assert [(x["audit.action"], x["secret.name"]) for x in audit.attrs()] == [("SET", key), ("GET", key)]


@pytest.mark.parametrize(
    ("suffix", "raw", "expected", "good"),
    [
        ("PORT", "70000", "an integer from 0 to 65535", " 4319 "),
        ("PORT", "eighty", "an integer from 0 to 65535", "0"),
        ("POOL_SIZE", "0", "an integer from 1 to 256", "16"),
        ("MAX_BODY_BYTES", "10", "an integer from 1024 to", "2048"),
        ("RETENTION_DAYS", "0", "an integer from 1 to 36500", "30"),
        ("WORKERS", "0", "an integer from 1 to 64", "2"),
        ("INGEST_CONCURRENCY", "-1", "an integer from 0 to 256", "0"),
        ("MAX_CLOCK_SKEW_SECONDS", "-5", "an integer from 0 to 86400", "60"),
        ("MAX_RECORD_AGE_DAYS", "90", "an integer from 1 to 31", "7"),
    ],
)
def test_store_integer_settings_name_the_bad_variable(suffix, raw, expected, good):
    from secret_audit.store.config import load_store_config

    name = "OTEL_PYTHON_SECRET_AUDIT_STORE_" + suffix
    with pytest.raises(ConfigurationError) as info:
        load_store_config({name: raw})
    assert name in str(info.value)
    assert expected in str(info.value)
    config = load_store_config({name: good})
    field = {"PORT": "port", "POOL_SIZE": "pool_size", "MAX_BODY_BYTES": "max_body_bytes",
             "WORKERS": "workers", "INGEST_CONCURRENCY": "ingest_concurrency",
             "MAX_CLOCK_SKEW_SECONDS": "max_clock_skew_s", "MAX_RECORD_AGE_DAYS": "max_record_age_days",
             }.get(suffix, "retention_days")
    assert getattr(config, field) == int(good)


def test_an_empty_variable_reads_as_unset():
    # OpenTelemetry's rule: ENABLED= or HANDLE_SIGTERM= in a container spec must not turn auditing
    # or the SIGTERM flush off quietly, and FAILURE_MODE= must not stop start-up
    default = load_settings({})
    for s in config.SETTINGS:
        for empty in ("", "  "):
            got = load_settings({PREFIX + s.suffix: empty})
            assert got == default, (s.suffix, empty)
    assert load_settings({PREFIX + "ENABLED": ""}).enabled is True
    assert load_settings({PREFIX + "HANDLE_SIGTERM": " "}).handle_sigterm is True


def test_an_empty_store_variable_reads_as_unset(monkeypatch):
    # the same rule for the store: HOST= in a container spec bound the store to every interface
    # instead of 127.0.0.1, NATIVE= turned the C path off, and PORT=, WORKERS=, ALERT_KINDS= ... stopped
    # start-up. APP_ROLE is the one exception, documented: empty stays as the connecting user.
    from secret_audit.store.config import STORE, load_store_config

    default = load_store_config({})
    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    suffixes = {row.split("`")[1].removeprefix(STORE) for row in doc.splitlines()
                if row.startswith("| `" + STORE)}
    assert {"HOST", "PORT", "NATIVE", "ALERT_KINDS", "ALERT_WEBHOOK_URL", "APP_ROLE"} <= suffixes
    for suffix in sorted(suffixes - {"APP_ROLE", "URL", "TOKEN"}):  # URL, TOKEN: the query client's
        for empty in ("", "  "):
            assert load_store_config({STORE + suffix: empty}) == default, (suffix, empty)
    assert load_store_config({STORE + "HOST": ""}).host == "127.0.0.1"
    assert load_store_config({STORE + "APP_ROLE": ""}).app_role == ""
    # and the query client's: a blank STORE_URL is the default store, not an unusable URL
    import argparse

    from secret_audit.store._client import _store_url

    monkeypatch.setenv(STORE + "URL", "  ")
    assert _store_url(argparse.Namespace(url=None)) == "http://127.0.0.1:4318"
