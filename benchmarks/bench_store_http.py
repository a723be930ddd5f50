"""Audit store over HTTP: `store serve` with one and with two worker processes, side by side.

The whole path of a collector's export: HTTP, OTLP protobuf decoding, the checks, hashing, COPY and a
durable commit, into one embedded PostgreSQL (fsync on). Each round starts `secret-audit store serve`
on a fresh database once per variant, alternating the variants, and posts pre-encoded requests of
1000 records (10 chained streams each) from ``--clients`` keep-alive connections (http.client, so
the clients cost little CPU next to the server).

Run: ``python benchmarks/bench_store_http.py [--events 40000] [--rounds 2] [--clients 8] [--workers 1,2]``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import drain, free_port, wait_port
from bench_store import fresh_db, make_batches

from secret_audit.store._embedded import EmbeddedPostgres
from secret_audit.store.tokens import create_token


def _post_all(port: int, token: str, bodies: list[bytes], clients: int) -> float:
    """Send every body once over ``clients`` keep-alive connections; returns the seconds taken."""
    headers = {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {token}"}

    @contextlib.contextmanager
    def session() -> Iterator[Callable[[bytes], None]]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

        def post(body: bytes) -> None:
            conn.request("POST", "/v1/logs", body, headers)
            resp = conn.getresponse()
            answer = resp.read()
            if resp.status != 200 or answer:  # a partial success would carry a message
                raise AssertionError(f"ingest answered {resp.status} {answer[:200]!r}")

        try:
            yield post
        finally:
            conn.close()

    started, ended = drain(bodies, clients, session)
    return ended - started


def run_variant(admin: psycopg.Connection[Any], url: str, workers: int, events: int, clients: int) -> float:
    """Events per second through a fresh `store serve --workers N` on a fresh database."""
    conninfo = fresh_db(admin, url)
    with psycopg.connect(conninfo, autocommit=True) as owner:
        token, _ = create_token(owner, "bench", "ingest", None)
    port = free_port()
    env = {**os.environ, "DATABASE_URL": conninfo}
    server = subprocess.Popen(
        [sys.executable, "-m", "secret_audit.cli", "store", "serve", "--port", str(port),
         "--workers", str(workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_port(port, server)
        bodies = make_batches(events)
        took = _post_all(port, token, bodies, clients)
        with psycopg.connect(conninfo) as check:
            stored = check.execute("SELECT count(*) FROM audit_events WHERE event_name = 'secret.access'").fetchone()
        if stored != (events,):  # every record stored once: nothing lost, nothing doubled
            raise AssertionError(f"stored {stored}, sent {events}")
        return events / took
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to compare")
    args = parser.parse_args()
    variants = [int(w) for w in args.workers.split(",")]
    server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="bench-store-http-")) / "pgdata", delete_on_stop=True)
    url = server.start()
    rates: dict[int, list[float]] = {w: [] for w in variants}
    try:
        with psycopg.connect(url, autocommit=True) as admin:
            print(f"{args.events} events per variant per round, requests of 1000 records, "
                  f"{args.clients} clients, durable commits")
            for rnd in range(args.rounds):
                for w in variants:
                    rates[w].append(run_variant(admin, url, w, args.events, args.clients))
                print(f"round {rnd + 1}: " + ", ".join(f"{w} worker(s) {rates[w][-1]:,.0f}/s" for w in variants))
    finally:
        server.stop()
    base = statistics.median(rates[variants[0]])
    for w in variants:
        median = statistics.median(rates[w])
        print(f"store over HTTP, {w} worker process(es): {median:.0f} events/s "
              f"(ratio to {variants[0]}: {median / base:.2f}) (target >= 50000/s)")


if __name__ == "__main__":
    main()
