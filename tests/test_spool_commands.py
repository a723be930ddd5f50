"""`secret-audit spool status|replay DIR` on spools left by real instrumented processes whose endpoint
was down, and the spool's replay claim: exactly once, also while an app replays the same spool."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from otlp_receiver import Receiver, otlp_receiver
from secret_audit._internal.spool import Spool
from servers import free_port
from test_launcher_e2e import HERE, launch, launcher_env

CLI = [sys.executable, "-m", "secret_audit.cli"]
APP = str(HERE / "apps" / "spool_app.py")
BIN = Path(sys.executable).parent


def _app_env(spool: Path, **extra: str) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR": str(spool),
        "OTEL_PYTHON_SECRET_AUDIT_EXPORT_RETRY_TIMEOUT_MS": "0",
        "OTEL_PYTHON_SECRET_AUDIT_BATCH_SIZE": "5",
        **extra,
    }


def spool_by_apps_whose_endpoint_was_down(spool: Path, redis_url: str, *counts: int) -> list[str]:
    """Run the real spool app under the launcher once per count, its endpoint down; returns their key prefixes."""
    dead = f"http://127.0.0.1:{free_port()}"
    prefixes = []
    for count in counts:
        prefix = "secret:spooled:" + secrets.token_hex(4)
        proc = launch(dead, redis_url, APP, prefix, str(count),
                      OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT=dead + "/v1/logs", **_app_env(spool))
        assert proc.returncode == 0, proc.stderr
        prefixes.append(prefix)
    assert _rows(spool) >= len(counts)
    return prefixes


def _db(spool: Path) -> sqlite3.Connection:
    return sqlite3.connect(str(spool / Spool.FILENAME))


def _rows(spool: Path) -> int:
    with _db(spool) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM batches").fetchone()[0])


def cli(*argv: str, endpoint: str | None = None, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTEST_"))}
    if endpoint is not None:
        env["OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT"] = endpoint
    env.update(extra)
    return subprocess.run([*CLI, *argv], env=env, capture_output=True, text=True, timeout=120)


def _received(rx: Receiver) -> Counter[tuple[str, int]]:
    return Counter((r["attributes"]["audit.stream.id"], r["attributes"]["audit.sequence"]) for r in rx.audit_records())


def _streams(rx: Receiver) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in rx.audit_records():
        out.setdefault(r["attributes"]["audit.stream.id"], []).append(r["attributes"]["audit.sequence"])
    return out


# ---- status ---------------------------------------------------------------------------------------


def test_status_shows_records_bytes_the_oldest_entry_and_streams(tmp_path, redis_url):
    spool = tmp_path / "spool"
    spool_by_apps_whose_endpoint_was_down(spool, redis_url, 20, 7)
    with _db(spool) as conn:
        batches, records, size, oldest = conn.execute(
            "SELECT COUNT(*), SUM(records), SUM(LENGTH(body)), MIN(created_ns) FROM batches").fetchone()
        streams = {row[0]: row[1:] for row in conn.execute(
            "SELECT stream, COUNT(*), SUM(records), MIN(first_seq), MAX(last_seq) FROM batches GROUP BY stream")}
    assert records == 27
    assert len(streams) == 2

    proc = cli("spool", "status", str(spool), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = orjson.loads(proc.stdout)
    assert (doc["batches"], doc["records"], doc["bytes"]) == (batches, records, size)
    assert doc["oldest"] == dt.datetime.fromtimestamp(oldest / 1e9, dt.timezone.utc).isoformat()
    assert doc["replaying"] is False
    assert {s["stream"]: (s["batches"], s["records"], s["first_sequence"], s["last_sequence"])
            for s in doc["streams"]} == streams
    assert sorted(s["records"] for s in doc["streams"]) == [7, 20]

    human = cli("spool", "status", str(spool))
    assert human.returncode == 0, human.stderr
    assert f"27 records in {batches} requests" in human.stdout
    assert f"{size:,} bytes" in human.stdout
    assert "oldest spooled" in human.stdout
    for stream, (_, count, first, last) in streams.items():
        assert f"{stream}  {count} records, sequences {first}..{last}" in human.stdout
    assert _rows(spool) == batches  # status reads only


def test_status_and_replay_of_a_directory_without_a_spool_create_nothing(tmp_path):
    missing = tmp_path / "no-spool"
    for argv in (["status", str(missing)], ["replay", str(missing)]):
        proc = cli("spool", *argv, endpoint="http://127.0.0.1:9/v1/logs")
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert f"no audit spool in {missing}" in proc.stderr
        assert not missing.exists()
    missing.mkdir()
    assert cli("spool", "status", str(missing)).returncode == 2
    assert list(missing.iterdir()) == []


# ---- replay ---------------------------------------------------------------------------------------


def test_replay_sends_every_record_exactly_once_in_order_with_progress(tmp_path, redis_url):
    spool = tmp_path / "spool"
    spool_by_apps_whose_endpoint_was_down(spool, redis_url, 20, 7)
    with otlp_receiver() as rx:
        proc = cli("spool", "replay", str(spool), endpoint=rx.url + "/v1/logs")
        assert proc.returncode == 0, proc.stderr
        streams = _streams(rx)
        received = _received(rx)
    assert sorted(len(v) for v in streams.values()) == [7, 20]
    for seqs in streams.values():
        assert seqs == list(range(1, len(seqs) + 1))  # in order, each once
    assert set(received.values()) == {1}
    assert f"replayed 27 records to {rx.url}/v1/logs" in proc.stdout
    assert "27/27 records" in proc.stderr  # progress
    assert _rows(spool) == 0
    status = orjson.loads(cli("spool", "status", str(spool), "--json").stdout)
    assert status["records"] == 0
    again = cli("spool", "replay", str(spool), endpoint=rx.url + "/v1/logs")
    assert again.returncode == 0
    assert "nothing waits" in again.stdout


def test_replay_uses_the_apps_settings_protocol_and_headers(tmp_path, redis_url):
    spool = tmp_path / "spool"
    spool_by_apps_whose_endpoint_was_down(spool, redis_url, 4)
    with otlp_receiver() as rx:
        proc = cli("spool", "replay", str(spool), endpoint=rx.url + "/v1/logs",
                   OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                   OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_HEADERS="authorization=Bearer sat_abc,x-tenant=acme")
        assert proc.returncode == 0, proc.stderr
        assert {(h.get("authorization"), h.get("x-tenant")) for h in rx.headers} == {("Bearer sat_abc", "acme")}
        assert len(rx.audit_records()) == 4
    assert "sat_abc" not in proc.stdout + proc.stderr  # headers are never shown


def test_replay_to_an_endpoint_that_is_down_keeps_everything(tmp_path, redis_url):
    spool = tmp_path / "spool"
    spool_by_apps_whose_endpoint_was_down(spool, redis_url, 6)
    before = _rows(spool)
    dead = f"http://127.0.0.1:{free_port()}/v1/logs"
    proc = cli("spool", "replay", str(spool), endpoint=dead)
    assert proc.returncode == 1
    assert f"{dead} did not take the request" in proc.stderr
    assert "6 records still wait" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _rows(spool) == before


def test_replay_refused_by_the_endpoint_keeps_the_refused_request_and_what_follows(tmp_path, redis_url):
    spool = tmp_path / "spool"
    spool_by_apps_whose_endpoint_was_down(spool, redis_url, 12)  # three spooled requests of 5, 5 and 2
    with _db(spool) as conn:
        second = conn.execute("SELECT first_seq, last_seq FROM batches ORDER BY id LIMIT 1 OFFSET 1").fetchone()
    with otlp_receiver() as rx:
        plain = rx.handle

        def handle(path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
            if path.endswith("/v1/logs") and _carries(body, second[0]):
                return 401, b""  # e.g. a missing token: never a reason to drop records
            return plain(path, body, headers)

        rx.handle = handle
        proc = cli("spool", "replay", str(spool), endpoint=rx.url + "/v1/logs")
        assert proc.returncode == 1
        assert "HTTP 401" in proc.stderr
        assert f"sequences {second[0]}..{second[1]}" in proc.stderr
        assert "kept in the spool" in proc.stderr
        sent = sorted(seq for _, seq in _received(rx))
    assert sent == list(range(1, second[0]))  # the first request went, nothing after the refused one
    assert _rows(spool) == 2
    with otlp_receiver() as rx:  # fixed: the rest goes, once
        assert cli("spool", "replay", str(spool), endpoint=rx.url + "/v1/logs").returncode == 0
        assert sorted(seq for _, seq in _received(rx)) == list(range(second[0], 13))


def _carries(body: bytes, sequence: int) -> bool:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    req = ExportLogsServiceRequest.FromString(body)
    return any(kv.key == "audit.sequence" and kv.value.int_value == sequence
               for rl in req.resource_logs for sl in rl.scope_logs for lr in sl.log_records for kv in lr.attributes)


def test_replay_refuses_settings_without_an_otlp_endpoint(tmp_path, redis_url):
    spool = tmp_path / "spool"
    spool_by_apps_whose_endpoint_was_down(spool, redis_url, 2)
    proc = cli("spool", "replay", str(spool), OTEL_PYTHON_SECRET_AUDIT_EXPORTER="console")
    assert proc.returncode == 2
    assert "OTEL_PYTHON_SECRET_AUDIT_EXPORTER" in proc.stderr
    bad = cli("spool", "replay", str(spool), OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_PROTOCOL="carrier-pigeon")
    assert bad.returncode == 2
    assert "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_PROTOCOL" in bad.stderr
    assert _rows(spool) >= 1


# ---- exactly once while an app replays the same spool -------------------------------------------


def _slow(rx: Receiver, seconds: float) -> threading.Event:
    """Hold the first export request for ``seconds`` (the event is set when it arrives), later ones briefly."""
    plain = rx.handle
    arrived = threading.Event()

    def handle(path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        first = not arrived.is_set()
        arrived.set()
        time.sleep(seconds if first else 0.05)  # its sender is mid-request while the other looks at the spool
        return plain(path, body, headers)

    rx.handle = handle
    return arrived


def _app(rx: Receiver, redis_url: str, spool: Path, prefix: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen([str(BIN / "opentelemetry-instrument"), sys.executable, APP,
                             f"{prefix}:{secrets.token_hex(4)}", str(count)],
                            env=launcher_env(rx.url, redis_url, **_app_env(spool)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _replayer(rx: Receiver, spool: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTEST_"))}
    env["OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT"] = rx.url + "/v1/logs"
    return subprocess.Popen([*CLI, "spool", "replay", str(spool)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("first", ["app", "command"])
def test_replay_while_the_app_replays_the_same_spool_sends_each_record_once(tmp_path, redis_url, first):
    spool = tmp_path / "spool"
    spool_by_apps_whose_endpoint_was_down(spool, redis_url, 20, 7)
    with otlp_receiver() as rx:
        arrived = _slow(rx, 3.0)
        # the second starts while the first one's replay request is on its way
        one = _app(rx, redis_url, spool, "secret:live", 8) if first == "app" else _replayer(rx, spool)
        assert arrived.wait(30)
        two = _replayer(rx, spool) if first == "app" else _app(rx, redis_url, spool, "secret:live", 8)
        for proc in (one, two):
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        # what the app spooled behind the command's replay and left at exit is durable: drain it
        assert cli("spool", "replay", str(spool), endpoint=rx.url + "/v1/logs").returncode == 0
        received = _received(rx)
        streams = _streams(rx)
    assert [k for k, n in received.items() if n > 1] == []  # never twice
    assert sorted(len(set(v)) for v in streams.values()) == [7, 8, 20]  # never lost
    for seqs in streams.values():
        assert seqs == sorted(seqs)  # and each stream in order
    assert _rows(spool) == 0


def test_two_apps_replaying_one_spool_send_each_record_once(tmp_path, redis_url):
    spool = tmp_path / "spool"
    spool_by_apps_whose_endpoint_was_down(spool, redis_url, 20, 7)
    with otlp_receiver() as rx:
        arrived = _slow(rx, 3.0)
        apps = [_app(rx, redis_url, spool, "secret:twin", 3)]
        assert arrived.wait(30)
        apps.append(_app(rx, redis_url, spool, "secret:twin", 3))
        for app in apps:
            _, err = app.communicate(timeout=120)
            assert app.returncode == 0, err
        assert cli("spool", "replay", str(spool), endpoint=rx.url + "/v1/logs").returncode == 0
        received = _received(rx)
    assert [k for k, n in received.items() if n > 1] == []
    assert sorted(received.values()).count(1) == 20 + 7 + 3 + 3
    assert _rows(spool) == 0


# ---- the claim ------------------------------------------------------------------------------------


def test_the_replay_claim_is_held_by_one_spool_at_a_time(tmp_path):
    one, two = Spool(str(tmp_path), 1 << 20), Spool(str(tmp_path), 1 << 20)
    try:
        one.append("s", 1, 1, 1, b"x")
        assert one.claim()
        assert two.oldest(1 << 20) == []  # claimed by the other: nothing to send here
        assert two.claimed_elsewhere()
        assert not one.claimed_elsewhere()
        assert two.pending()  # still waiting, so the second keeps new records behind it
        one.release()
        assert [b.first_seq for b in two.oldest(1 << 20)] == [1]
        assert not one.claim()
        two.release()
    finally:
        one.close()
        two.close()


_HOLDER = textwrap.dedent("""
    import os, sys, time
    from secret_audit._internal.spool import Spool
    spool = Spool(sys.argv[1], 1 << 20)
    assert spool.claim()
    if sys.argv[2] == "fork" and os.fork() == 0:
        time.sleep(60)  # a child forked while the parent held the claim outlives it
        os._exit(0)
    print("claimed", flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("mode", ["alone", "fork"])
def test_the_claim_of_a_killed_process_is_released(tmp_path, mode):
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path), mode], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "claimed"
    spool = Spool(str(tmp_path), 1 << 20)
    try:
        assert not spool.claim()
        holder.send_signal(signal.SIGKILL)  # the parent only: a forked child lives on
        holder.wait(10)
        deadline = time.monotonic() + 5
        while not spool.claim():
            assert time.monotonic() < deadline, "the claim outlived its process"
            time.sleep(0.05)
        spool.release()
    finally:
        spool.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)


def test_canary_values_reach_neither_the_spool_nor_the_commands_output(tmp_path, redis_url):
    from test_canary import assert_no_canary, new_canary

    spool, canary = tmp_path / "spool", new_canary()
    dead = f"http://127.0.0.1:{free_port()}"
    app = launch(dead, redis_url, str(HERE / "apps" / "sa_canary_app.py"), "secret:canary:" + secrets.token_hex(4),
                 canary, OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT=dead + "/v1/logs", **_app_env(spool))
    assert app.returncode == 0, app.stderr
    assert _rows(spool) >= 1
    assert_no_canary(b"".join(f.read_bytes() for f in spool.iterdir()).decode("latin-1"), canary)  # db, WAL
    status = cli("spool", "status", str(spool))
    status_json = cli("spool", "status", str(spool), "--json")
    with otlp_receiver() as rx:
        replayed = cli("spool", "replay", str(spool), endpoint=rx.url + "/v1/logs")
        assert replayed.returncode == 0, replayed.stderr
        assert len(rx.audit_records()) > 10
        sent = b"".join(rx.raw).decode("latin-1")
    for proc in (status, status_json, replayed):
        assert_no_canary(proc.stdout + proc.stderr, canary)
    assert_no_canary(sent, canary)
