"""Concurrent requests: overlapping retries of one stream and parallel audited reads keep every chain whole."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from secret_audit.store.verify import verify

from .records import chained, to_protobuf

PB = {"Content-Type": "application/x-protobuf"}


def test_parallel_overlapping_batches_and_reads(server_url, tokens, owner):
    recs = chained(300)
    # batches overlap: a collector retrying while its first attempt is still in flight
    batches = [recs[i:i + 60] for i in range(0, 300, 30)] * 2
    hdr = {**PB, **tokens.header("ingest")}

    def send(batch):
        return httpx.post(f"{server_url}/v1/logs", content=to_protobuf(batch), headers=hdr, timeout=60)

    def read(_):
        return httpx.get(f"{server_url}/api/audit-logs", headers=tokens.header("auditor"), timeout=60)

    with ThreadPoolExecutor(8) as pool:
        sent = list(pool.map(send, batches))
        reads = list(pool.map(read, range(20)))
    assert {r.status_code for r in sent} == {200}
    assert {r.status_code for r in reads} == {200}
    stream = recs[0]["attributes"]["audit.stream.id"]
    rows = owner.execute("SELECT sequence, integrity FROM audit_events WHERE stream_id = %s ORDER BY sequence",
                         (stream,)).fetchall()
    assert [r[0] for r in rows] == list(range(1, 301))
    # batches may land out of order (gap_before, then filled late), but nothing is lost or doubled
    assert owner.execute("SELECT count(*) FROM audit_events WHERE event_name = 'audit.query'").fetchone()[0] == 20
    report = verify(owner)
    assert report.ok, report.as_dict()


def test_new_month_partition_created_by_concurrent_requests(server_url, tokens, owner):
    import time

    from .records import rehash

    when = time.time_ns() - 10 * 86400 * 10**9  # a fresh database has no partition yet (and within bounds)

    def month_batch(_):
        recs = chained(5)
        prev = "0" * 64
        for i, r in enumerate(recs):
            r["time_unix_nano"] = when + i
            r["attributes"]["audit.chain.prev"] = prev
            prev = rehash(r)
        return httpx.post(f"{server_url}/v1/logs", content=to_protobuf(recs), headers={**PB, **tokens.header("ingest")},
                          timeout=60)

    with ThreadPoolExecutor(6) as pool:
        codes = {r.status_code for r in pool.map(month_batch, range(6))}
    assert codes == {200}
    assert owner.execute("SELECT count(*) FROM audit_events WHERE time < now() - interval '5 days'"
                         ).fetchone()[0] == 30
