"""Audit store ingest throughput into PostgreSQL with durable commits, against a naive executemany baseline.

Both variants run in one process against one embedded PostgreSQL (fsync on, synchronous_commit on),
interleaved over rounds, each round into a fresh database. Batches of 1000 records (10 streams each),
one transaction per batch, as one OTLP request would be.

- store ingest: ``Ingestor.ingest`` on decoded records: contract validation, SHA-256 recomputation of
  every record, sequence and chain checks, binary COPY, stream registry update, commit; run by
  ``--workers`` threads with a connection each, as the server's request threads do with concurrent
  requests (a collector's ``otlphttp`` exporter sends from 10 consumers by default; the store's pool
  has 8 connections). Several requests in flight keep PostgreSQL busy while Python hashes and
  encodes the next one: on 2 cores 4 workers ingest about 10% more than 2.
- naive executemany: the same rows, no checks, ``executemany`` of INSERTs, commit per batch.
- full path: OTLP protobuf decoding plus store ingest, the work of one ``POST /v1/logs`` minus HTTP.

The store variant is also run by ``--processes`` processes (default 2) with ``--process-threads``
request threads each (default 1), the same batches split between them, as ``store serve --workers 2``
does on this 2-core machine (each process keeps its own GIL); reported on a line of its own.
``--processes 1`` skips it.

Every process settles its heap after decoding (``settle_heap``: freeze what exists, a higher young
threshold), as a ``store serve`` process does once started: the pre-decoded batches stand for requests
a server would hold only while ingesting them, and must not make every full collection walk them.

``--sustain K`` then ingests K segments of ``--events`` events into one growing database per variant,
store and naive alternating segment by segment, and prints each segment's rates: the fresh database
of each round shows ingest into a young partition, this shows how it holds up as the table grows
(``--rounds 0 --sustain 14`` runs only that).

The records' indexed columns (secret, principal, end user, client address) take varied values, as in
a deployment; ``--same-values`` puts one value in every record, as this benchmark did before
2026-11-25 evening (PostgreSQL's index upkeep is cheaper then).

Run: ``python benchmarks/bench_store.py [--events 100000] [--rounds 3] [--workers 4] [--processes 2]
[--process-threads 1] [--same-values] [--sustain K]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import multiprocessing
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _common import drain

from secret_audit import contract
from secret_audit.store._embedded import EmbeddedPostgres
from secret_audit.store._heap import settle_heap
from secret_audit.store._ingest import Ingestor
from secret_audit.store._otlp import Record, decode_protobuf
from secret_audit.store._prepare import P_ROW, finish, prepare
from secret_audit.store._rows import COLUMNS, time_of_stamp
from secret_audit.store.migrations import ensure_partitions, migrate
from store.records import chained, rehash, to_protobuf

BATCH = 1000
STREAMS_PER_BATCH = 10


# What the indexed columns hold. With one value in every record (``--same-values``, the benchmark's
# data before 2026-11-25 evening) each B-tree insert lands on one hot page and compares equal strings;
# a deployment has many secrets, a principal per service, many end users and client addresses, and
# PostgreSQL then spends about 4 µs more per row (17.9 against 13.8 µs in one measurement).
SECRETS = [f"prod/payments/secret-{i}" for i in range(1000)]
PRINCIPALS = [f"svc-{i}" for i in range(50)]
USERS = [f"user{i}@example.com" for i in range(10_000)]
CLIENTS = [f"10.0.{i // 256}.{i % 256}" for i in range(1000)]


def vary(recs: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """Give one stream's records varied index keys, chained again so every hash covers them."""
    prev = contract.GENESIS
    principal = rng.choice(PRINCIPALS)
    for rec in recs:
        rec["attributes"].update({
            "secret.name": rng.choice(SECRETS), "audit.principal": principal,
            "enduser.id": rng.choice(USERS), "client.address": rng.choice(CLIENTS),
            "audit.chain.prev": prev,
        })
        prev = rehash(rec)
    return recs


def make_batches(events: int, same_values: bool = False) -> list[bytes]:
    """OTLP requests of BATCH records, each mixing STREAMS_PER_BATCH chained streams."""
    per_stream = events // (events // BATCH * STREAMS_PER_BATCH)
    rng = random.Random(events)
    out = []
    for _ in range(events // BATCH):
        recs: list[dict[str, Any]] = []
        for _ in range(STREAMS_PER_BATCH):
            stream = chained(per_stream, stream=str(uuid.uuid4()))
            recs += stream if same_values else vary(stream, rng)
        out.append(to_protobuf(recs))
    return out


def fresh_db(admin: psycopg.Connection[Any], url: str) -> str:
    name = "bench_" + uuid.uuid4().hex[:8]
    admin.execute(f'CREATE DATABASE "{name}"')
    conninfo = make_conninfo(url, dbname=name)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        migrate(conn)
    return conninfo


def _ingest_threads(
    conninfo: str, batches: list[Any], threads: int, decode: Callable[[Any], list[Record]] | None = None
) -> tuple[float, float, int]:
    """Ingest the batches (each decoded by ``decode`` inside the timing) with ``threads`` request
    threads, a connection each; returns the clock at start and end and the events stored."""
    ingestor = Ingestor()
    lock = threading.Lock()
    stored = [0]

    @contextlib.contextmanager
    def session() -> Iterator[Callable[[Any], None]]:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            def ingest(batch: Any) -> None:
                records = batch if decode is None else decode(batch)
                result = ingestor.ingest(conn, records)
                assert result.accepted == len(records), result.errors
                assert not result.findings, result.findings[:3]  # every chain intact
                with lock:
                    stored[0] += result.accepted

            yield ingest

    started, ended = drain(batches, threads, session)
    return started, ended, stored[0]


def run_store(conninfo: str, decoded: list[list[Record]], workers: int) -> float:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        Ingestor().ingest(conn, decoded[0])  # creates the partition outside the timing
    started, ended, stored = _ingest_threads(conninfo, decoded[1:], workers)
    return stored / (ended - started)


def _ingest_part(conninfo: str, pbs: list[bytes], threads: int, ready: Any, go: Any, out: Any) -> None:
    """One store process: decode its share first, then ingest it with its threads when told to."""
    decoded = [decode_protobuf(b) for b in pbs]
    settle_heap()
    ready.put(True)
    go.wait()
    out.put(_ingest_threads(conninfo, decoded, threads))


def run_processes(conninfo: str, pbs: list[bytes], processes: int, threads: int) -> float:
    """The store variant in several processes (spawned, so no connection is shared), one clock for all."""
    ctx = multiprocessing.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        Ingestor().ingest(conn, decode_protobuf(pbs[0]))  # creates the partition outside the timing
    parts = [pbs[1 + i::processes] for i in range(processes)]
    procs = [ctx.Process(target=_ingest_part, args=(conninfo, part, threads, ready, go, out)) for part in parts]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get()
    go.set()
    done = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(d[2] for d in done) / (max(d[1] for d in done) - min(d[0] for d in done))


def run_naive(conninfo: str, decoded: list[list[Record]]) -> float:
    cols = ", ".join(COLUMNS)
    marks = ", ".join(["%s"] * len(COLUMNS))
    insert = f"INSERT INTO audit_events ({cols}) VALUES ({marks})".encode()
    rows = []
    for batch in decoded:
        prepared = [prepare(i, r, None) for i, r in enumerate(batch)]
        for p in prepared:
            finish(p)  # type: ignore[arg-type]
        rows.append([
            (time_of_stamp(p[P_ROW][1]),
             *(v[1:].decode() if isinstance(v, bytes) else v for v in p[P_ROW][2:]))
            for p in prepared
        ])
    with psycopg.connect(conninfo) as conn:
        now = time.gmtime()
        ensure_partitions(conn, {(now.tm_year, now.tm_mon)})
        with conn.cursor() as cur:
            cur.executemany(insert, rows[0])
        conn.commit()
        started = time.perf_counter()
        for batch_rows in rows[1:]:
            with conn.cursor() as cur:
                cur.executemany(insert, batch_rows)
            conn.commit()
        took = time.perf_counter() - started
    return sum(len(b) for b in rows[1:]) / took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--processes", type=int, default=2,
                        help="also run the store variant in this many processes (1: don't)")
    parser.add_argument("--process-threads", type=int, default=1,
                        help="request threads in each of those processes")
    parser.add_argument("--same-values", action="store_true",
                        help="one secret, principal, end user and client address in every record")
    parser.add_argument("--sustain", type=int, default=0, metavar="K",
                        help="then K segments of --events events into one growing database per variant")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-store-"))
    server = EmbeddedPostgres(base / "pgdata", delete_on_stop=True)
    url = server.start()
    store_rates, naive_rates, full_rates, decode_rates, proc_rates = [], [], [], [], []
    try:
        with psycopg.connect(url, autocommit=True) as admin:
            settings = {k: admin.execute(f"SHOW {k}").fetchone()[0]  # type: ignore[index]
                        for k in ("fsync", "synchronous_commit", "wal_sync_method")}
            print(f"PostgreSQL durability: {settings}; {args.events} events per variant per round, "
                  f"batches of {BATCH}, {args.workers} ingest workers, "
                  f"{'one value' if args.same_values else 'varied values'} in the indexed columns")
            for rnd in range(args.rounds):
                pbs = make_batches(args.events, args.same_values)
                gc.collect()
                started = time.perf_counter()
                decoded = [decode_protobuf(b) for b in pbs]
                decode_rates.append(sum(map(len, decoded)) / (time.perf_counter() - started))
                settle_heap()
                naive_rates.append(run_naive(fresh_db(admin, url), decoded))
                store_rates.append(run_store(fresh_db(admin, url), decoded, args.workers))
                if args.processes > 1:
                    proc_rates.append(run_processes(fresh_db(admin, url), pbs, args.processes, args.process_threads))
                # full path: decode inside the timed loop, fresh streams
                pbs = make_batches(args.events, args.same_values)
                full_rates.append(run_full(fresh_db(admin, url), pbs, args.workers))
                procs = f", store in {args.processes} processes {proc_rates[-1]:,.0f}/s" if proc_rates else ""
                print(f"round {rnd + 1}: store {store_rates[-1]:,.0f}/s, naive {naive_rates[-1]:,.0f}/s, "
                      f"full path {full_rates[-1]:,.0f}/s, decode {decode_rates[-1]:,.0f}/s{procs}")
            if args.sustain:
                sustain(admin, url, args.sustain, args.events, args.workers, args.same_values)
    finally:
        server.stop()
    if not store_rates:
        return
    store = statistics.median(store_rates)
    naive = statistics.median(naive_rates)
    print(f"OTLP protobuf decode: {statistics.median(decode_rates):,.0f} records/s; "
          f"full path (decode + ingest): {statistics.median(full_rates):,.0f} events/s")
    print(f"store ingest: {store:.0f} events/s (naive executemany {naive:.0f} events/s, "
          f"ratio {store / naive:.2f}) (target >= 50000/s)")
    if proc_rates:
        multi = statistics.median(proc_rates)
        print(f"store ingest in {args.processes} processes x {args.process_threads} threads: "
              f"{multi:.0f} events/s (ratio to naive {multi / naive:.2f}) (target >= 50000/s)")


def sustain(admin: psycopg.Connection[Any], url: str, segments: int, events: int, workers: int,
            same_values: bool) -> None:
    """Segments into one growing database per variant, alternating: ingest as the table grows."""
    store_db, naive_db = fresh_db(admin, url), fresh_db(admin, url)
    took_store = took_naive = 0.0
    counted = 0
    for seg in range(segments):
        decoded = [decode_protobuf(b) for b in make_batches(events, same_values)]
        settle_heap()
        store, naive = run_store(store_db, decoded, workers), run_naive(naive_db, decoded)
        timed = sum(map(len, decoded[1:]))  # each run leaves its first batch out of the timing
        counted += timed
        took_store += timed / store
        took_naive += timed / naive
        print(f"segment {seg + 1} (tables at {(seg + 1) * events:,} rows): store {store:,.0f}/s, "
              f"naive {naive:,.0f}/s, ratio {store / naive:.2f}")
    print(f"sustained over {segments * events:,} events: store {counted / took_store:.0f} events/s, naive "
          f"{counted / took_naive:.0f} events/s, ratio {took_naive / took_store:.2f} (target >= 50000/s)")


def run_full(conninfo: str, pbs: list[bytes], workers: int) -> float:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        Ingestor().ingest(conn, decode_protobuf(pbs[0]))
    started, ended, stored = _ingest_threads(conninfo, pbs[1:], workers, decode_protobuf)
    return stored / (ended - started)


if __name__ == "__main__":
    main()
