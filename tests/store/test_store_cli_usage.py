"""The CLI as people use it: one-line errors and exit 2 for every user error, filters checked before
anything is sent, and output that stays readable on a pipe and on a narrow terminal."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest

from otlp_receiver import otlp_receiver

from .records import chained, to_protobuf

CLI = [sys.executable, "-m", "secret_audit.cli"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _env(**extra: str) -> dict[str, str]:
    drop = ("XDG_RUNTIME_DIR", "COLUMNS", "LINES", "DATABASE_URL", "OTEL_PYTHON_SECRET_AUDIT_STORE_URL")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["OTEL_PYTHON_SECRET_AUDIT_STORE_TOKEN"] = "sat_000000000000_" + "x" * 43
    env.update(extra)
    return env


def cli(*argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *argv], env=_env(**extra), capture_output=True, text=True, timeout=60)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert "Warning" not in proc.stderr
    assert proc.stderr.startswith("secret-audit")
    assert proc.stderr.count("\n") == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def _refusing_port() -> int:
    """A port bound but never listening: connections to it are refused, and no other server can take it
    while the tests run (a port merely found free can be taken by a parallel server in between)."""
    import socket

    _HELD.append(sock := socket.socket())
    sock.bind(("127.0.0.1", 0))
    return int(sock.getsockname()[1])


_HELD: list[Any] = []
CLOSED = f"http://127.0.0.1:{_refusing_port()}"  # nothing listens there

USER_ERRORS = [
    (["query", "--url", CLOSED], ["cannot reach the store at " + CLOSED, "Connection refused"]),
    (["tail", "--url", CLOSED], ["cannot reach the store at " + CLOSED, "Connection refused"]),
    (["query", "--url", "not-a-url"], ["--url", "'not-a-url'", "http://"]),
    (["query", "--url", "http://[::1"], ["--url", "http://[::1"]),
    (["query", "--url", "ftp://127.0.0.1/"], ["--url", "ftp://"]),
    (["tail", "--url", "http://127.0.0.1:99999"], ["--url", "99999"]),
    (["query", "--url", CLOSED, "--start", "yesterday"], ["--start", "'yesterday'", "ISO 8601"]),
    (["query", "--url", CLOSED, "--end", "2026-13-01T00:00:00Z"], ["--end", "2026-13-01"]),
    (["verify", "--start", "yesterday"], ["--start", "'yesterday'", "ISO 8601"]),
    (["query", "--url", CLOSED, "--operation", "frobnicate"], ["--operation", "frobnicate", "metadata"]),
    (["query", "--url", CLOSED, "--outcome", "maybe"], ["--outcome", "maybe", "not_found"]),
    (["tail", "--url", CLOSED, "--operation", "frobnicate"], ["--operation", "frobnicate"]),
    (["query", "--url", CLOSED, "--trace-id", "xyz"], ["--trace-id", "'xyz'", "32 hexadecimal"]),
    (["query", "--url", CLOSED, "--event-name", "frobnicate"], ["--event-name", "secret.access", "audit."]),
    (["query", "--url", CLOSED, "--secret", "a\x01b" * 400], ["--secret", "1024"]),
    (["query", "--url", CLOSED, "--limit", "0"], ["--limit", "between 1 and 1000"]),
    (["query", "--url", CLOSED, "--limit", "1001"], ["--limit", "between 1 and 1000"]),
    (["query", "--url", CLOSED, "--limit", "ten"], ["--limit", "'ten'"]),
    (["query", "--url", CLOSED, "--format", "yaml"], ["--format", "yaml"]),
    (["query", "--url", CLOSED, "--order", "newest"], ["--order", "newest"]),
    (["tail", "--url", CLOSED, "--max-events", "0"], ["--max-events"]),
    (["store", "serve", "--port", "70000"], ["--port", "between 0 and 65535"]),
    (["store", "serve", "--workers", "0"], ["--workers", "between 1 and 64"]),
    (["retention", "apply", "--days", "0"], ["--days"]),
    (["tokens", "create", "--name", "x", "--role", "root"], ["--role", "root"]),
    (["tokens", "create", "--role", "admin"], ["--name"]),
    (["frobnicate"], ["frobnicate"]),
    (["query", "--url", CLOSED, "--bogus"], ["--bogus"]),
    (["store", "wait", "--url", CLOSED, "--timeout", "1"], ["was not ready within 1 s", CLOSED]),
    (["store", "wait", "--timeout", "0"], ["--timeout", "0"]),
    (["store", "wait", "--url", "nope", "--timeout", "60"], ["--url='nope'", "http://"]),
    (["query", "--start", "2026-12-01", "--end", "2026-01-01"], ["--end", "is not after --start"]),
    (["verify", "--start", "2026-12-01T00:00:00Z", "--end", "2026-12-01T00:00:00Z"], ["is not after --start"]),
]


@pytest.mark.parametrize(("argv", "needles"), USER_ERRORS, ids=lambda v: " ".join(v)[:60])
def test_user_errors_are_one_line_and_exit_2(argv, needles):
    assert_one_line_error(cli(*argv), *needles)


def test_store_url_from_the_environment_is_named_when_wrong():
    assert_one_line_error(cli("query", OTEL_PYTHON_SECRET_AUDIT_STORE_URL="localhost:4318"),
                          "OTEL_PYTHON_SECRET_AUDIT_STORE_URL", "'localhost:4318'")


def test_database_errors_are_one_line():
    assert_one_line_error(cli("tokens", "list", DATABASE_URL="not a postgres url"), "DATABASE_URL")
    port = _refusing_port()
    assert_one_line_error(cli("verify", DATABASE_URL=f"postgresql://nobody@127.0.0.1:{port}/audit"),
                          f"database audit on 127.0.0.1:{port} (DATABASE_URL)", "Connection refused")


@contextlib.contextmanager
def _http(status: int, body: bytes, content_type: str) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_url_that_is_not_the_store_is_one_line():
    with otlp_receiver() as rx:  # a real OTLP receiver: it answers GET with an HTML 501 page
        assert_one_line_error(cli("query", "--url", rx.url), "HTTP 501", "is --url the audit store?")
    with _http(200, b"<html>\n<body>hello</body>\n</html>", "text/html") as url:
        assert_one_line_error(cli("query", "--url", url), "not the audit store's API")
        assert_one_line_error(cli("tail", "--url", url, "--max-events", "1"), "not the audit store's API")
    with _http(422, orjson.dumps({"detail": [{"loc": ["query", "limit"], "msg": "too big"},
                                             {"loc": ["query", "x"], "msg": "bad"}]}), "application/json") as url:
        assert_one_line_error(cli("query", "--url", url), "HTTP 422", "limit: too big; x: bad")


# ---- output ---------------------------------------------------------------------------------------


@pytest.fixture
def stored(server_url, tokens) -> dict[str, str]:
    """Three records of service 'payments' in a live store; the env to query it with an auditor token."""
    recs = chained(3, secret="api-key", **{"secret.resource": "projects/p/secrets/api-key/versions/7" * 2})
    resp = httpx.post(f"{server_url}/v1/logs", content=to_protobuf(recs),
                      headers={"Content-Type": "application/x-protobuf", **tokens.header("ingest")})
    assert resp.status_code == 200
    return {"url": server_url, "OTEL_PYTHON_SECRET_AUDIT_STORE_TOKEN": tokens["auditor"]}


def _query(stored: dict[str, str], *argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
    token = stored["OTEL_PYTHON_SECRET_AUDIT_STORE_TOKEN"]
    proc = cli("query", "--url", stored["url"], "--secret", "api-key", *argv,
               OTEL_PYTHON_SECRET_AUDIT_STORE_TOKEN=token, **extra)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc


def test_query_on_a_pipe_writes_json_lines_oldest_last_unless_asked(stored):
    lines = [orjson.loads(line) for line in _query(stored).stdout.splitlines()]
    assert [e["sequence"] for e in lines] == [3, 2, 1]
    assert {e["service_name"] for e in lines} == {"payments"}
    asc = [orjson.loads(line) for line in _query(stored, "--order", "asc").stdout.splitlines()]
    assert [e["sequence"] for e in asc] == [1, 2, 3]
    assert _query(stored, "--json").stdout == _query(stored, "--format", "json").stdout
    assert len(_query(stored, "--start", "2000-01-01").stdout.splitlines()) == 3  # a date; UTC
    assert _query(stored, "--start", "2999-01-01T00:00:00", "--end", "2999-01-02T00:00:00+02:00").stdout == ""


def test_query_format_ocsf_writes_one_valid_ocsf_event_per_stored_event(stored):
    """`--format ocsf`: the same events as `--json`, each mapped by secret_audit.ocsf and valid OCSF 1.1.0."""
    from ocsf_schema import problems
    from secret_audit import ocsf

    stored_events = [orjson.loads(line) for line in _query(stored, "--json").stdout.splitlines()]
    lines = _query(stored, "--format", "ocsf").stdout.splitlines()
    assert [orjson.loads(line) for line in lines] == [ocsf.event(e) for e in stored_events]
    assert len(lines) == 3
    for line in lines:
        event = orjson.loads(line)
        assert problems(event) == []
        assert event["class_uid"] == 6003
        assert event["resources"][0]["name"] == "api-key"
        assert event["metadata"]["processed_time"] > 0  # the store's receive time
        assert event["metadata"]["log_provider"] == "secret_audit"  # the scope, now in the API's events
        assert event["unmapped"]["store.integrity"] == stored_events[0]["integrity"]


def test_query_table_forced_on_a_pipe_is_never_cut(stored):
    out = _query(stored, "--format", "table", COLUMNS="80").stdout
    header = out.splitlines()[0].split()
    assert header[:4] == ["time", "service", "secret", "source"]
    assert "…" not in out
    rows = [line for line in out.splitlines() if "api-key" in line]
    assert len(rows) == 3
    for row in rows:
        assert "payments" in row
        assert "svc-payments" in row
        assert "alice@example.com" in row
        assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", row)


def test_query_vertical_layout(stored):
    out = _query(stored, "--format", "vertical", "--limit", "2").stdout
    blocks = [b for b in out.split("-[ ") if b.strip()]
    assert len(blocks) == 2
    fields = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in blocks[0].splitlines()[1:] if line)
    assert fields["service"] == "payments"
    assert fields["secret"] == "api-key"
    assert fields["sequence"] == "3"
    assert fields["trace id"] == re.search(r"[0-9a-f]{32}", fields["trace id"]).group(0)


def _on_terminal(argv: list[str], env: dict[str, str], columns: int) -> str:
    """Run with stdout on a pseudo-terminal of the given width; returns what it showed, without colours."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen(argv, env=env, stdout=follower, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(60)
    os.close(leader)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    return ANSI.sub("", b"".join(chunks).decode().replace("\r\n", "\n"))


def test_query_on_a_wide_terminal_is_a_table_and_on_a_narrow_one_vertical(stored):
    env = _env(OTEL_PYTHON_SECRET_AUDIT_STORE_TOKEN=stored["OTEL_PYTHON_SECRET_AUDIT_STORE_TOKEN"])
    argv = [*CLI, "query", "--url", stored["url"], "--secret", "api-key"]
    wide = _on_terminal(argv, env, 300)
    assert wide.splitlines()[0].split()[:2] == ["time", "service"]
    assert len([line for line in wide.splitlines() if "api-key" in line]) == 3
    narrow = _on_terminal(argv, env, 80)
    assert narrow.count("-[ ") == 3
    assert "service    payments" in re.sub(r" {2,}", "    ", narrow)
    assert "…" not in narrow


def _tail(stored: dict[str, str], server_url: str, tokens: Any, *argv: str) -> str:
    proc = subprocess.Popen([*CLI, "tail", "--url", server_url, "--secret", "tailed", "--max-events", "2", *argv],
                            env=_env(OTEL_PYTHON_SECRET_AUDIT_STORE_TOKEN=tokens["auditor"]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while httpx.get(f"{server_url}/stats", headers=tokens.header("admin")).json()["live_streams"] < 1:
        assert time.monotonic() < deadline, proc.communicate()
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    httpx.post(f"{server_url}/v1/logs", content=to_protobuf(chained(2, secret="tailed")),
               headers={"Content-Type": "application/x-protobuf", **tokens.header("ingest")})
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out


def test_tail_formats(stored, server_url, tokens):
    lines = [orjson.loads(line) for line in _tail(stored, server_url, tokens).splitlines()]  # a pipe: JSON
    assert [e["secret_name"] for e in lines] == ["tailed", "tailed"]
    plain = _tail(stored, server_url, tokens, "--format", "line").splitlines()
    assert len(plain) == 2
    assert plain[0].split("  ")[1:4] == ["payments", "tailed", "redis"]
    vertical = _tail(stored, server_url, tokens, "--format", "vertical")
    assert vertical.count("-[ ") == 2
    events = [orjson.loads(line) for line in _tail(stored, server_url, tokens, "--format", "ocsf").splitlines()]
    assert [e["resources"][0]["name"] for e in events] == ["tailed", "tailed"]
    assert {e["type_uid"] for e in events} == {600302}
    assert "service" in vertical
    assert "payments" in vertical


def test_a_closed_pipe_ends_the_output_quietly(server_url, tokens):
    recs = chained(200, secret="many")
    httpx.post(f"{server_url}/v1/logs", content=to_protobuf(recs),
               headers={"Content-Type": "application/x-protobuf", **tokens.header("ingest")})
    proc = subprocess.Popen([*CLI, "query", "--url", server_url, "--secret", "many", "--limit", "200"],
                            env=_env(OTEL_PYTHON_SECRET_AUDIT_STORE_TOKEN=tokens["auditor"]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stderr is not None
    assert orjson.loads(proc.stdout.readline())["secret_name"] == "many"  # like `| head -1`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(30)
    assert "Traceback" not in err
    assert "BrokenPipe" not in err


def test_archives_that_are_not_archives_are_one_line(tmp_path):
    import gzip

    garbage = tmp_path / "garbage.jsonl.gz"
    garbage.write_text("not gzip")
    assert_one_line_error(cli("verify", "--archive", str(garbage)), str(garbage), "not a readable retention archive")
    other = tmp_path / "other.jsonl.gz"
    other.write_bytes(gzip.compress(b'{"a": 1}\n'))
    assert_one_line_error(cli("verify", "--archive", str(other)), str(other), "not a readable retention archive")
    empty = tmp_path / "empty.jsonl.gz"
    empty.write_bytes(gzip.compress(b""))
    proc = cli("verify", "--archive", str(empty))
    assert proc.returncode == 1
    assert "no audit records in the archives: nothing to verify" in proc.stderr
    assert "OK" not in proc.stdout
    assert cli("verify", "--archive", str(empty), "--allow-empty").returncode == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_taken_port_says_so_before_starting_anything(tmp_path, workers):
    import socket

    data = tmp_path / "pgdata"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        proc = cli("store", "serve", "--port", port, "--workers", workers,
                   OTEL_PYTHON_SECRET_AUDIT_STORE_DATA_DIR=str(data))
    assert_one_line_error(proc, f"cannot listen on 127.0.0.1:{port}", "--port")
    assert "listening on" not in proc.stderr
    assert not data.exists()  # no database was started for a server that could not listen
