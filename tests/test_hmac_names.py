"""HASH_NAMES: records, spans and bodies carry hmac-sha256:<hex>, never the raw key name."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from secret_audit import hash_name
from secret_audit.cli import main as cli_main

BIN = Path(sys.executable).parent
HMAC_KEY = "k-" + "0123456789abcdef" * 2


def exported_text(audit) -> str:
    audit.flush()
    parts = [s.to_json() for s in audit.span_exporter.get_finished_spans()]
    for item in audit.log_exporter.get_finished_logs():
        rec = item.log_record
        parts.append(repr(dict(rec.attributes or {})))
        parts.append(repr(rec.body))
    return "\n".join(parts)


def check_hashed(audit, r, key, hmac_key: bytes):
    tracer = audit.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("request"):
        r.set(key, "v")
        r.get(key)
        r.mget([key, key + ":missing"])
        r.delete(key)
    recs = audit.attrs()
    assert len(recs) == 5
    want = hash_name(key, hmac_key)
    assert want.startswith("hmac-sha256:")
    assert len(want) == len("hmac-sha256:") + 64
    names = [x["secret.name"] for x in recs]
    assert names == [want, want, want, hash_name(key + ":missing", hmac_key), want]
    for record in audit.records():
        assert want in record.body or hash_name(key + ":missing", hmac_key) in record.body
    spans = [s for s in audit.spans() if s.name != "request"]
    assert spans
    text = exported_text(audit)
    assert key not in text
    assert key.split(":", 1)[1] not in text  # not even the random part of the name
    assert want in text


class TestHmacKeyFromEnv:
    @pytest.fixture
    def audit_env(self):
        return {
            "OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS": "20",
            "OTEL_PYTHON_SECRET_AUDIT_HASH_NAMES": "true",
            "OTEL_PYTHON_SECRET_AUDIT_HMAC_KEY": HMAC_KEY,
        }

    def test_names_are_hashed(self, audit, redis_url, key):
        r = redis.Redis.from_url(redis_url)
        try:
            check_hashed(audit, r, key, HMAC_KEY.encode())
        finally:
            r.close()

    def test_bytes_key_names_hash_like_str(self, audit, redis_url, key):
        r = redis.Redis.from_url(redis_url)
        try:
            r.get(key.encode())
        finally:
            r.close()
        assert audit.attrs()[0]["secret.name"] == hash_name(key, HMAC_KEY)


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hmac") / "hmac.key"
    path.write_text("file-key-" + secrets.token_hex(16) + "\n")  # trailing newline is stripped
    return path


class TestHmacKeyFromFile:
    @pytest.fixture
    def audit_env(self, key_file):
        return {
            "OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS": "20",
            "OTEL_PYTHON_SECRET_AUDIT_HASH_NAMES": "true",
            "OTEL_PYTHON_SECRET_AUDIT_HMAC_KEY_FILE": str(key_file),
        }

    def test_names_are_hashed_with_the_file_key(self, audit, redis_url, key, key_file):
        r = redis.Redis.from_url(redis_url)
        try:
            check_hashed(audit, r, key, key_file.read_text().strip().encode())
        finally:
            r.close()


def test_cli_hash_name_prints_the_same_hash(key, key_file, monkeypatch, capsys):
    monkeypatch.delenv("OTEL_PYTHON_SECRET_AUDIT_HMAC_KEY_FILE", raising=False)
    monkeypatch.setenv("OTEL_PYTHON_SECRET_AUDIT_HMAC_KEY", HMAC_KEY)
    assert cli_main(["hash-name", key, key + ":b"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{key}\t{hash_name(key, HMAC_KEY)}", f"{key}:b\t{hash_name(key + ':b', HMAC_KEY)}"]


def test_cli_hash_name_subprocess_with_key_file(key, key_file):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_PYTHON_SECRET_AUDIT_")}
    env["OTEL_PYTHON_SECRET_AUDIT_HMAC_KEY_FILE"] = str(key_file)
    proc = subprocess.run(
        [str(BIN / "secret-audit"), "hash-name", key], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{key}\t{hash_name(key, key_file.read_text().strip())}\n"


def test_cli_hash_name_without_a_key_fails_clearly(key):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_PYTHON_SECRET_AUDIT_")}
    proc = subprocess.run(
        [str(BIN / "secret-audit"), "hash-name", key], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert proc.returncode == 2
    assert "OTEL_PYTHON_SECRET_AUDIT_HMAC_KEY" in proc.stderr
    assert proc.stdout == ""


def test_cli_hash_name_reads_an_empty_key_variable_as_unset(key, key_file):
    """As the producer does (docs/configuration.md): ``HMAC_KEY=`` beside ``HMAC_KEY_FILE`` is the file's
    key, not "choose one", or the auditor cannot look up the names the app hashed with that file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_PYTHON_SECRET_AUDIT_")}
    env.update(OTEL_PYTHON_SECRET_AUDIT_HMAC_KEY="", OTEL_PYTHON_SECRET_AUDIT_HMAC_KEY_FILE=str(key_file))
    proc = subprocess.run(
        [str(BIN / "secret-audit"), "hash-name", key], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{key}\t{hash_name(key, key_file.read_text().strip())}\n"
