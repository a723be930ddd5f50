"""Nothing lost by default: the per-user spool, its folders per destination, and when it cannot be made."""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

import pytest

from otlp_receiver import otlp_receiver
from secret_audit._internal.config import load_settings
from secret_audit._internal.spooldir import DESTINATION_FILE
from test_exit_and_protocol import THREE_LINES, UNDER_LAUNCHER, run

DEAD = "http://127.0.0.1:9/v1/logs"  # the discard port: nothing answers OTLP there


@pytest.fixture
def app_env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "KEY": "secret:spool-default:" + secrets.token_hex(4),
            "VALUE": "canary-" + secrets.token_hex(12), "XDG_STATE_HOME": str(tmp_path / "state")}


def spooled(state: Path) -> dict[str, int]:
    """Records waiting per destination folder under ``state``."""
    out = {}
    for db in (state / "secret-audit" / "spool").glob(f"*/{'audit-spool.sqlite3'}"):
        with sqlite3.connect(db) as conn:
            out[db.parent.name] = conn.execute("SELECT COALESCE(SUM(records), 0) FROM batches").fetchone()[0]
    return out


def test_endpoint_down_at_exit_spools_at_once_and_the_next_process_sends_it(tmp_path, app_env):
    state = Path(app_env["XDG_STATE_HOME"])
    # a shutdown timeout far longer than the test's own timeout: waiting it out would fail the test
    proc = run(tmp_path, UNDER_LAUNCHER, launcher=True, timeout=30,
               OTEL_PYTHON_SECRET_AUDIT_SHUTDOWN_TIMEOUT_MS="600000",
               OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT=DEAD, **app_env)
    assert proc.returncode == 0, proc.stderr
    assert list(spooled(state).values()) == [2]
    folder = next((state / "secret-audit" / "spool").iterdir())
    assert (folder / DESTINATION_FILE).read_text().split() == ["http/protobuf", DEAD]
    assert f"2 audit records wait in the spool {folder}" in proc.stderr
    assert f"secret-audit spool replay {folder}" in proc.stderr
    # the replay command sends where its own environment says: the hint names those settings
    assert "with the app's OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_* settings set" in proc.stderr
    assert app_env["VALUE"] not in proc.stderr


def test_a_spool_is_replayed_only_to_its_own_destination(tmp_path, app_env):
    state = Path(app_env["XDG_STATE_HOME"])
    with otlp_receiver() as rx:
        endpoint = rx.url + "/v1/logs"
        rx.status = 503
        first = run(tmp_path, THREE_LINES, OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT=endpoint, **app_env)
        assert first.returncode == 0, first.stderr
        # another app of the same user, with another destination, neither sends nor takes it
        other = run(tmp_path, THREE_LINES, OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT=DEAD, **app_env)
        assert other.returncode == 0, other.stderr
        assert sorted(spooled(state).values()) == [1, 1]
        assert rx.audit_records() == []
        rx.status = 200
        again = run(tmp_path, THREE_LINES, OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT=endpoint, **app_env)
        assert again.returncode == 0, again.stderr
        streams = [r["attributes"]["audit.stream.id"] for r in rx.audit_records()]
    assert len(streams) == 2
    assert len(set(streams)) == 2  # the first process's record, then the second's
    assert sorted(spooled(state).values()) == [0, 1]


def test_spool_off_loses_on_an_outage_and_says_so(tmp_path, app_env):
    proc = run(tmp_path, THREE_LINES, OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR="off",
               OTEL_PYTHON_SECRET_AUDIT_EXPORT_RETRY_TIMEOUT_MS="0",
               OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT=DEAD, **app_env)
    assert proc.returncode == 0, proc.stderr
    assert spooled(Path(app_env["XDG_STATE_HOME"])) == {}
    assert "lost 1 audit record (sequence 1..1): the exporter kept failing" in proc.stderr
    assert "connection refused" in proc.stderr
    assert "keep the spool on (OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR)" in proc.stderr


def test_a_refused_batch_is_lost_with_advice_about_the_token_not_the_spool(tmp_path, app_env):
    # the spool is on (the default), but a 4xx is never spooled: the advice must say what to check
    with otlp_receiver() as rx:
        rx.status = 401
        proc = run(tmp_path, THREE_LINES, **app_env,
                   OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT=rx.url + "/v1/logs")
    assert proc.returncode == 0, proc.stderr
    assert "lost 1 audit record (sequence 1..1): the endpoint refused them" in proc.stderr
    assert "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_HEADERS" in proc.stderr
    assert "keep the spool on" not in proc.stderr
    assert sum(spooled(Path(app_env["XDG_STATE_HOME"])).values()) == 0  # nothing spooled
    assert app_env["VALUE"] not in proc.stderr


def test_an_unusable_chosen_spool_stops_start_up(tmp_path, app_env):
    (tmp_path / "file").write_text("x")
    for mode in ("open", "closed"):
        proc = run(tmp_path, UNDER_LAUNCHER, launcher=True, OTEL_PYTHON_SECRET_AUDIT_FAILURE_MODE=mode,
                   OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR=str(tmp_path / "file" / "spool"), **app_env)
        assert proc.returncode == 1
        assert proc.stderr.startswith("otel-secret-audit: refusing to start: OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR=")
        assert len(proc.stderr.strip().splitlines()) == 1


def test_an_unusable_default_spool_fail_open_starts_and_says_so_fail_closed_refuses(tmp_path, app_env):
    (tmp_path / "file").write_text("x")  # a read-only root in a container, as far as we can tell
    app_env["XDG_STATE_HOME"] = str(tmp_path / "file")
    with otlp_receiver() as rx:
        endpoint = rx.url + "/v1/logs"
        opened = run(tmp_path, UNDER_LAUNCHER, launcher=True,
                     OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT=endpoint, **app_env)
        assert opened.returncode == 0, opened.stderr
        assert [r["attributes"]["audit.action"] for r in rx.audit_records()] == ["SET", "GET"]
        closed = run(tmp_path, UNDER_LAUNCHER, launcher=True, OTEL_PYTHON_SECRET_AUDIT_FAILURE_MODE="closed",
                     OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT=endpoint, **app_env)
    assert opened.stderr.count("starting without a spool") == 1
    assert closed.returncode == 1
    assert "fail-closed mode needs a spool" in closed.stderr
    assert "SPOOL_DIR (unset: the per-user default)=" in closed.stderr  # not blamed on a variable never set
    assert len(closed.stderr.strip().splitlines()) == 1


def test_the_default_spool_never_lands_in_the_working_directory():
    relative = {"XDG_STATE_HOME": "state", "HOME": "relative-home"}
    settings = load_settings(relative)
    assert settings.spool_dir is None or Path(settings.spool_dir).is_absolute()
    default = load_settings({"XDG_STATE_HOME": "/var/lib/app-state"})
    assert default.spool_default
    assert default.spool_dir is not None
    assert default.spool_dir.startswith("/var/lib/app-state/secret-audit/spool/")
    assert load_settings({"OTEL_PYTHON_SECRET_AUDIT_EXPORTER": "console"}).spool_dir is None
