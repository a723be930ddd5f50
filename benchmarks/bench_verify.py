"""Offline verification speed in rows/s: plain ``verify``, with ``--public-key``, and with ``--against``.

One embedded PostgreSQL, one database filled through the store's ingest path with signed streams
(10 streams, a checkpoint every 1,000 records and a final one each, made with the public contract and
a real Ed25519 key), and the collector's file copy of the same requests in OTLP/JSON lines. Each
variant runs the CLI's own code (``verify`` with the signed check and the reconciliation riding on its
one scan) over the whole store; the variants alternate over rounds. Verify reads with a server-side
cursor in one transaction, recomputing every record's hash from its columns.

Run: ``python benchmarks/bench_verify.py [--events 200000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from secret_audit import contract
from secret_audit.signing import generate_key, load_public_keys, load_signer
from secret_audit.store._against import Reconciler, read_copy
from secret_audit.store._attest import Attestor
from secret_audit.store._embedded import EmbeddedPostgres
from secret_audit.store._ingest import Ingestor
from secret_audit.store._otlp import decode_protobuf
from secret_audit.store.migrations import migrate
from secret_audit.store.verify import verify
from store.records import chained, checkpoint_after, to_protobuf, write_copy

STREAMS = 10
EVERY = 1000


def signed_requests(events: int, key: Path) -> list[bytes]:
    """OTLP requests of about 1000 records: STREAMS signed streams, a checkpoint every EVERY records."""
    signer = load_signer(key)
    per_stream = events // STREAMS
    bodies = []
    for _ in range(STREAMS):
        stream, prev, cp_prev, covered, seq = str(uuid.uuid4()), contract.GENESIS, contract.GENESIS, 0, 1
        made = 0
        while made < per_stream:
            recs = chained(min(EVERY, per_stream - made), stream=stream, start_seq=seq, prev=prev)
            made += len(recs)
            cp = checkpoint_after(recs, signer, prev=cp_prev, covered=covered, final=made >= per_stream)
            cp_prev = prev = cp["attributes"]["audit.chain.hash"]
            seq = cp["attributes"]["audit.sequence"] + 1
            covered = seq - 2
            bodies.append(to_protobuf(recs))
    return bodies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    key = base / "audit.key"
    generate_key(key)
    keys = load_public_keys(f"{key}.pub")
    bodies = signed_requests(args.events, key)
    copy = write_copy(base / "secret-audit.jsonl", bodies)
    server = EmbeddedPostgres(base / "pgdata", delete_on_stop=True)
    url = server.start()
    rates: dict[str, list[float]] = {"plain": [], "public-key": [], "public-key+against": []}
    try:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute('CREATE DATABASE "bench_verify"')
        conninfo = make_conninfo(url, dbname="bench_verify")
        with psycopg.connect(conninfo, autocommit=True) as conn:
            migrate(conn)
            ingestor = Ingestor()
            for body in bodies:
                ingestor.ingest(conn, decode_protobuf(body))
            conn.execute("VACUUM ANALYZE audit_events")
            rows = conn.execute("SELECT count(*) FROM audit_events").fetchone()[0]  # type: ignore[index]
            print(f"{rows} rows in {STREAMS} signed streams (a checkpoint every {EVERY} records); "
                  f"copy {copy.stat().st_size / 1e6:.1f} MB of OTLP/JSON lines")
            for rnd in range(args.rounds):
                order = list(rates)
                for name in order[rnd % 3:] + order[: rnd % 3]:
                    started = time.perf_counter()
                    report, extra = _run(conn, name, keys, copy)
                    took = time.perf_counter() - started
                    if not (report.ok and all(s.ok for s in extra)):
                        raise SystemExit(f"{name}: the trail did not verify: {report.as_dict()}")
                    rates[name].append(report.rows / took)
                print(f"round {rnd + 1}: " + ", ".join(f"{n} {r[-1]:,.0f} rows/s" for n, r in rates.items()))
    finally:
        server.stop()
    med = {n: statistics.median(r) for n, r in rates.items()}
    print(f"verify: {med['plain']:,.0f} rows/s plain, {med['public-key']:,.0f} rows/s with --public-key, "
          f"{med['public-key+against']:,.0f} rows/s with --public-key and --against, medians of {args.rounds} "
          f"rounds (no target: documented in docs/performance.md)")
    return 0


def _run(conn: psycopg.Connection[Any], name: str, keys: dict[str, Any], copy: Path) -> tuple[Any, list[Any]]:
    """One verify as the CLI runs it: the signed check and the reconciliation on verify's own scan."""
    hooks: list[Any] = []
    if name != "plain":
        hooks.append(Attestor(keys))
    if name.endswith("against"):
        hooks.append(Reconciler(read_copy([copy], keys=keys), [str(copy)]))

    def also(row: dict[str, Any], computed: str) -> None:
        for hook in hooks:
            hook(row, computed)

    report = verify(conn, also=also if hooks else None)
    return report, [h.finish() for h in hooks]


if __name__ == "__main__":
    sys.exit(main())
