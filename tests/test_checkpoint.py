"""Signed checkpoints at the source: when they come, what they sign, and a bad key stopping start-up."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import instrumented
from secret_audit import ConfigurationError, contract
from secret_audit._internal.config import PREFIX, load_settings
from secret_audit.cli import main
from secret_audit.redis import RedisSecretAuditInstrumentor
from secret_audit.signing import generate_key, load_public_keys, verify
from test_config import launch

KEY_FILE = PREFIX + "SIGNING_KEY_FILE"


@pytest.fixture
def signing_key(tmp_path):
    path = tmp_path / "audit.key"
    generate_key(path)
    return path


def env_for(key, **extra: str) -> dict[str, str]:
    return {PREFIX + "SCHEDULE_DELAY_MS": "20", KEY_FILE: str(key), **{PREFIX + k: v for k, v in extra.items()}}


def stream_of(audit, flush: bool = True) -> list[tuple[str, dict, object]]:
    """Every record of the stream in sequence order: (event name, attributes, log record)."""
    if flush:
        audit.flush()
    recs = [r.log_record for r in audit.log_exporter.get_finished_logs()]
    recs.sort(key=lambda r: r.attributes["audit.sequence"])
    return [(r.event_name, dict(r.attributes), r) for r in recs]


def hash_of(rec) -> str:
    trace = f"{rec.trace_id:032x}" if rec.trace_id else ""
    span = f"{rec.span_id:016x}" if rec.span_id else ""
    return contract.chain_hash(contract.canonical_bytes(
        time_unix_nano=rec.timestamp, event_name=rec.event_name, severity_number=rec.severity_number.value,
        body=rec.body, trace_id=trace, span_id=span, attributes=dict(rec.attributes)))


def test_checkpoints_come_every_n_records_and_sign_the_head_before_them(signing_key, redis_url):
    helper = None
    with instrumented(env_for(signing_key, CHECKPOINT_RECORDS="3", CHECKPOINT_INTERVAL_MS="600000"),
                      RedisSecretAuditInstrumentor()) as audit:
        helper = audit
        client = redis.Redis.from_url(redis_url)
        for i in range(7):
            client.get(f"secret:cp-{i}")
            audit.flush()  # one record per drain: the cadence is exact
        client.close()
    records = stream_of(helper, flush=False)  # after retire: the final checkpoint is in
    assert [a["audit.sequence"] for _, a, _ in records] == list(range(1, len(records) + 1))
    names = [n for n, _, _ in records]
    assert names == ["secret.access"] * 3 + ["audit.checkpoint"] + ["secret.access"] * 3 + [
        "audit.checkpoint", "secret.access", "audit.checkpoint"]
    (public,) = load_public_keys(f"{signing_key}.pub").values()
    prev_checkpoint, covered = contract.GENESIS, 0
    for i, (name, attrs, rec) in enumerate(records):
        assert attrs["audit.chain.hash"] == hash_of(rec)  # chained like any record
        if name != "audit.checkpoint":
            continue
        seq = attrs["audit.sequence"]
        head = records[i - 1][1]
        assert attrs["audit.checkpoint.head_sequence"] == seq - 1
        assert attrs["audit.checkpoint.head_hash"] == head["audit.chain.hash"] == attrs["audit.chain.prev"]
        assert attrs["audit.checkpoint.records"] == seq - 1 - covered
        assert attrs["audit.checkpoint.prev"] == prev_checkpoint
        assert attrs["audit.checkpoint.key_id"] in load_public_keys(f"{signing_key}.pub")
        assert attrs["audit.checkpoint.final"] is (i == len(records) - 1)
        assert verify(public, contract.checkpoint_bytes_of(attrs, rec.timestamp), attrs["audit.checkpoint.signature"])
        assert rec.severity_number.value == 9
        assert rec.trace_id == 0
        assert re.fullmatch(r"(Final audit|Audit) checkpoint: records up to sequence \d+ signed by key [0-9a-f]{16}",
                            rec.body)
        prev_checkpoint, covered = attrs["audit.chain.hash"], seq - 1


def test_a_quiet_stream_gets_a_checkpoint_after_the_interval_and_none_while_idle(signing_key, redis_url):
    with instrumented(env_for(signing_key, CHECKPOINT_RECORDS="1000000", CHECKPOINT_INTERVAL_MS="100"),
                      RedisSecretAuditInstrumentor()) as audit:
        client = redis.Redis.from_url(redis_url)
        client.get("secret:quiet")
        deadline = time.monotonic() + 10
        while not audit.records("audit.checkpoint") and time.monotonic() < deadline:
            time.sleep(0.02)
        (first,) = audit.records("audit.checkpoint")
        assert first.attributes["audit.checkpoint.head_sequence"] == 1
        time.sleep(0.4)  # idle: nothing new to attest, so no new checkpoint
        assert len(audit.records("audit.checkpoint")) == 1
        client.close()


def test_without_a_key_there_are_no_checkpoints(audit, r, key):
    r.get(key)
    assert audit.records("audit.checkpoint") == []


def test_echo_lines_leave_checkpoints_out(signing_key, redis_url, caplog):
    caplog.set_level("INFO", logger="secret_audit.audit")
    with instrumented(env_for(signing_key, CHECKPOINT_RECORDS="1", ECHO="true"), RedisSecretAuditInstrumentor()) as audit:
        client = redis.Redis.from_url(redis_url)
        client.get("secret:echoed")
        client.get("secret:echoed")
        client.close()
        audit.flush()
        assert audit.records("audit.checkpoint")
    lines = [r.getMessage() for r in caplog.records if r.name == "secret_audit.audit"]
    assert len(lines) == 2
    assert all(line.startswith("[AUDIT] Secret") for line in lines)


def test_a_forked_child_signs_its_own_stream_from_genesis(signing_key, redis_url):
    with instrumented(env_for(signing_key, CHECKPOINT_RECORDS="2"), RedisSecretAuditInstrumentor()) as audit:
        client = redis.Redis.from_url(redis_url)
        client.get("secret:parent")
        client.get("secret:parent")
        audit.flush()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(read_fd)
                audit.log_exporter.clear()
                client.get("secret:child")
                client.get("secret:child")
                found = [dict(a) for n, a, _ in stream_of(audit) if n == "audit.checkpoint"]
                os.write(write_fd, json.dumps(found).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        data = b""
        while chunk := os.read(read_fd, 65536):
            data += chunk
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        parent = [a for n, a, _ in stream_of(audit) if n == "audit.checkpoint"]
        client.close()
    (child,) = json.loads(data)
    assert child["audit.stream.id"] != parent[0]["audit.stream.id"]
    assert (child["audit.sequence"], child["audit.checkpoint.prev"]) == (3, contract.GENESIS)


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


BAD_KEYS = {
    "missing": (None, "cannot be read"),
    "garbage": (b"not a key cnry0123456789abcdef\n", "is not a private key in PEM"),
    "rsa": (lambda: _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)), "another kind"),
    "public": (lambda: Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), "is not a private key in PEM"),
    "encrypted": (lambda: Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass-cnry")), "is encrypted"),
}


@pytest.mark.parametrize("kind", sorted(BAD_KEYS))
def test_a_bad_key_file_is_refused_in_one_line_without_its_content(kind, tmp_path):
    content, reason = BAD_KEYS[kind]
    path = tmp_path / "bad.key"
    if content is not None:
        path.write_bytes(content() if callable(content) else content)
    with pytest.raises(ConfigurationError) as info:
        load_settings({KEY_FILE: str(path)})
    message = str(info.value)
    assert info.value.variable == KEY_FILE
    assert message.startswith(f"{KEY_FILE}={str(path)!r} is not valid: expected an Ed25519 private key in PEM")
    assert reason in message
    assert "\n" not in message
    if content is not None:
        for line in path.read_bytes().splitlines():
            if len(line.strip()) > 8:
                assert line.decode(errors="replace") not in message
        assert "cnry" not in message


def test_a_bad_key_file_under_the_launcher_stops_the_process(tmp_path):
    path = tmp_path / "bad.key"
    path.write_text("-----BEGIN PRIVATE KEY-----\ncnrysecretmaterial\n-----END PRIVATE KEY-----\n")
    proc = launch("-c", "print('app ran unsigned')", **{KEY_FILE: str(path)})
    assert proc.returncode != 0
    assert "app ran unsigned" not in proc.stdout
    assert f"{KEY_FILE}={str(path)!r} is not valid: expected an Ed25519 private key in PEM" in proc.stderr
    assert "cnrysecretmaterial" not in proc.stderr + proc.stdout


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path, capsys):
    path = tmp_path / "k"
    assert main(["keygen", str(path)]) == 0
    out = capsys.readouterr()
    (kid,) = load_public_keys(f"{path}.pub")
    assert kid in out.out
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "k.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert load_settings({KEY_FILE: str(path)}).signing_key_file == str(path)
    before = path.read_bytes()
    assert main(["keygen", str(path)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert path.read_bytes() == before
    (tmp_path / "only.pub").write_text("x")  # a stray public half is not overwritten either
    assert main(["keygen", str(tmp_path / "only")]) == 2
    assert not (tmp_path / "only").exists()
