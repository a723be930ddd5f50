"""OTLP/HTTP ingest: protobuf and JSON, gzip, partial success, idempotent retries, integrity on ingest."""

from __future__ import annotations

import gzip

import orjson
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from .records import chained, rehash, to_json, to_protobuf

PB = {"Content-Type": "application/x-protobuf"}


def count(owner, where: str = "TRUE") -> int:
    return owner.execute(f"SELECT count(*) FROM audit_events WHERE {where}").fetchone()[0]


def post_pb(client, tokens, records, label="ingest", gz=False):
    body = to_protobuf(records)
    headers = {**PB, **tokens.header(label)}
    if gz:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    return client.post("/v1/logs", content=body, headers=headers)


def test_protobuf_batch_is_stored_with_typed_columns(client, tokens, owner):
    recs = chained(5)
    resp = post_pb(client, tokens, recs)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/x-protobuf"
    parsed = ExportLogsServiceResponse.FromString(resp.content)
    assert parsed.partial_success.rejected_log_records == 0
    rows = owner.execute(
        "SELECT secret_name, secret_source, operation, action, outcome, principal, enduser_id, client_address, "
        "sequence, integrity, duration_ms FROM audit_events ORDER BY sequence"
    ).fetchall()
    assert [r[8] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0][:8] == ("db-password", "redis", "read", "GET", "success", "svc-payments",
                           "alice@example.com", "203.0.113.7")
    assert {r[9] for r in rows} == {"ok"}
    assert rows[1][10] == pytest.approx(0.251)


def test_json_and_gzip_are_accepted(client, tokens, owner):
    recs = chained(3)
    body = gzip.compress(orjson.dumps(to_json(recs)))
    resp = client.post("/v1/logs", content=body, headers={
        "Content-Type": "application/json", "Content-Encoding": "gzip", **tokens.header("ingest")})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {}
    assert count(owner, "integrity = 'ok'") == 3


def test_json_whole_double_and_string_ints_still_verify(client, tokens, owner):
    recs = chained(1, **{"audit.duration_ms": 5.0})
    doc = to_json(recs)
    raw = orjson.dumps(doc).replace(b'{"doubleValue":5.0}', b'{"doubleValue":5}')
    assert b'{"doubleValue":5}' in raw
    resp = client.post("/v1/logs", content=raw, headers={"Content-Type": "application/json",
                                                         **tokens.header("ingest")})
    assert resp.status_code == 200
    assert owner.execute("SELECT integrity, duration_ms FROM audit_events").fetchone() == ("ok", 5.0)


@pytest.mark.parametrize("value", [None, True, [1, "a"]])
def test_a_typed_attribute_of_another_kind_is_kept_in_jsonb_and_verifies(client, tokens, owner, value):
    # enduser.id without a value (an unset AnyValue), a bool or a list: the column stays NULL and the
    # attribute is kept in the JSONB remainder exactly as sent. (Before, an unset one was dropped from
    # both, and verify then reported the stored record as a hash mismatch.)
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue

    from secret_audit.store.verify import verify

    recs = chained(2, **{"enduser.id": value})
    req = ExportLogsServiceRequest.FromString(to_protobuf(recs))
    for lr in req.resource_logs[0].scope_logs[0].log_records:
        kv = next(kv for kv in lr.attributes if kv.key == "enduser.id")
        kv.value.CopyFrom(AnyValue() if value is None else AnyValue(bool_value=True) if value is True else
                          AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1), AnyValue(string_value="a")])))
    resp = client.post("/v1/logs", content=req.SerializeToString(), headers={**PB, **tokens.header("ingest")})
    assert resp.status_code == 200
    assert not ExportLogsServiceResponse.FromString(resp.content).HasField("partial_success")
    rows = owner.execute("SELECT enduser_id, attributes, integrity FROM audit_events ORDER BY sequence").fetchall()
    assert rows == [(None, {"enduser.id": value}, "ok")] * 2
    report = verify(owner)
    assert (report.rows, report.total_breaks) == (2, 0)


def test_stream_ids_with_quotes_braces_and_backslashes_are_registered_and_advanced(client, tokens, owner):
    # the statements take a request's streams as array literals: each element is quoted and escaped
    streams = ['we"ird', "back\\slash\\", "{braces},comma", "NULL", " spaced "]
    recs = [r for s in streams for r in chained(2, stream=s)]
    assert post_pb(client, tokens, recs).status_code == 200
    assert sorted(r[0] for r in owner.execute("SELECT stream_id FROM audit_streams")) == sorted(streams)
    heads = owner.execute("SELECT stream_id, last_sequence FROM audit_stream_state").fetchall()
    assert sorted(heads) == sorted((s, 2) for s in streams)
    assert post_pb(client, tokens, [r for s in streams for r in chained(1, stream=s, start_seq=3,
               prev=next(x for x in recs if x["attributes"]["audit.stream.id"] == s
                         and x["attributes"]["audit.sequence"] == 2)["attributes"]["audit.chain.hash"])]).status_code == 200
    assert count(owner, "integrity = 'ok'") == 15


def test_a_nul_in_a_stream_id_is_refused_per_record(client, tokens, owner):
    # the stream id reaches the per-request statements before the hash is checked: a NUL there made
    # the whole request fail with 503, which senders retry for ever
    good = chained(2)
    bad = chained(1, stream="a\x00b")
    resp = post_pb(client, tokens, good + bad)
    assert resp.status_code == 200, resp.content
    parsed = ExportLogsServiceResponse.FromString(resp.content)
    assert parsed.partial_success.rejected_log_records == 1
    assert "record 2: NUL characters cannot be stored" in parsed.partial_success.error_message
    assert count(owner) == 2


def test_retried_batch_creates_no_duplicates(client, tokens, owner, store):
    recs = chained(10)
    assert post_pb(client, tokens, recs[:6]).status_code == 200
    # the exporter retries the whole batch plus more, after a timeout it never saw answered
    assert post_pb(client, tokens, recs, gz=True).status_code == 200
    assert post_pb(client, tokens, recs).status_code == 200
    assert count(owner) == 10
    assert owner.execute("SELECT count(DISTINCT event_id) FROM audit_events").fetchone()[0] == 10
    assert owner.execute("SELECT count(*) FROM audit_findings").fetchone()[0] == 0
    assert store.counters.duplicates == 16


def test_non_audit_records_are_refused_with_partial_success(client, tokens, owner):
    recs = chained(2)
    other = dict(recs[0], event_name="app.log", attributes={"x": 1})
    missing = chained(1)[0]
    del missing["attributes"]["audit.stream.id"]
    resp = post_pb(client, tokens, [*recs, other, missing])
    parsed = ExportLogsServiceResponse.FromString(resp.content)
    assert resp.status_code == 200
    assert parsed.partial_success.rejected_log_records == 2
    assert "not an audit record" in parsed.partial_success.error_message
    assert "missing audit.stream.id" in parsed.partial_success.error_message
    assert count(owner) == 2


def test_non_audit_records_can_be_dropped_and_counted(db_url, tokens, owner):
    from fastapi.testclient import TestClient

    from secret_audit.store.app import create_app
    from secret_audit.store.config import StoreConfig
    from secret_audit.store.service import Store

    store = Store(StoreConfig(non_audit="drop"), db_url)
    store.open()
    try:
        with TestClient(create_app(store, manage_store=False)) as c:
            other = dict(chained(1)[0], event_name="app.log")
            resp = post_pb(c, tokens, [other, *chained(1)])
            assert ExportLogsServiceResponse.FromString(resp.content).partial_success.rejected_log_records == 0
            assert store.counters.dropped_non_audit == 1
            stats = c.get("/stats", headers=tokens.header("admin")).json()
            assert stats["dropped_non_audit"] == 1
    finally:
        store.close()
    assert count(owner, "event_name = 'secret.access'") == 1  # (the /stats read is audited too)


def test_gap_chain_break_and_hash_mismatch_become_findings(client, tokens, owner):
    recs = chained(6)
    tampered = [dict(r, attributes=dict(r["attributes"])) for r in recs]
    tampered[2]["attributes"]["secret.name"] = "other-secret"  # content changed, hash left as it was
    del tampered[4]  # sequence 5 lost
    resp = post_pb(client, tokens, tampered)
    assert resp.status_code == 200
    kinds = owner.execute("SELECT kind, sequence FROM audit_findings ORDER BY sequence").fetchall()
    assert kinds == [("hash_mismatch", 3), ("gap", 6)]
    integrity = dict(owner.execute("SELECT sequence, integrity FROM audit_events").fetchall())
    assert integrity == {1: "ok", 2: "ok", 3: "hash_mismatch", 4: "ok", 6: "gap_before"}
    # the late record fills the gap and links both ways
    assert post_pb(client, tokens, [recs[4]]).status_code == 200
    assert owner.execute("SELECT integrity FROM audit_events WHERE sequence = 5").fetchone() == ("ok",)
    stats = client.get("/stats", headers=tokens.header("auditor")).json()
    assert stats["integrity_findings"] == {"hash_mismatch": 1}  # the gap is filled: no longer a problem
    assert stats["findings_recorded"] == {"hash_mismatch": 1, "gap": 1, "gap_filled": 1}
    stream = next(s for s in stats["streams"] if s["stream_id"] == recs[0]["attributes"]["audit.stream.id"])
    assert stream["last_sequence"] == 6
    assert stream["missing"] == 0


def test_forged_link_is_a_chain_break(client, tokens, owner):
    recs = chained(3)
    forged = chained(1, stream=recs[0]["attributes"]["audit.stream.id"], start_seq=4, prev="ab" * 32)
    assert post_pb(client, tokens, recs + forged).status_code == 200
    assert owner.execute("SELECT kind, sequence, expected FROM audit_findings").fetchall() == [
        ("chain_break", 4, recs[2]["attributes"]["audit.chain.hash"])]


def test_same_event_id_with_other_content_is_refused(client, tokens, owner):
    recs = chained(2)
    assert post_pb(client, tokens, recs).status_code == 200
    evil = dict(recs[1], attributes=dict(recs[1]["attributes"], **{"secret.name": "x"}))
    rehash(evil)
    resp = post_pb(client, tokens, [evil])
    assert ExportLogsServiceResponse.FromString(resp.content).partial_success.rejected_log_records == 1
    assert count(owner) == 2
    assert owner.execute("SELECT kind FROM audit_findings").fetchall() == [("duplicate_conflict",)]


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"\x0a\xff\xff\xff", PB, 400),
        (b"{not json", {"Content-Type": "application/json"}, 400),
        (b'{"resourceLogs": 5}', {"Content-Type": "application/json"}, 400),
        (b"x", {"Content-Type": "text/plain"}, 415),
        (b"x", {**PB, "Content-Encoding": "br"}, 415),
        (b"not gzip", {**PB, "Content-Encoding": "gzip"}, 400),
        (b"x" * (1024 * 1024 + 1), PB, 413),
        (gzip.compress(b"\0" * (3 * 1024 * 1024)), {**PB, "Content-Encoding": "gzip"}, 413),
    ],
)
def test_bad_input_gets_4xx_and_writes_nothing(client, tokens, owner, body, headers, status):
    resp = client.post("/v1/logs", content=body, headers={**headers, **tokens.header("ingest")})
    assert resp.status_code == status, resp.text
    assert count(owner) == 0
    assert client.get("/healthz").status_code == 200


def test_tenant_scoped_ingest_token(client, tokens, owner):
    mine = chained(2, tenant="acme")
    unnamed = chained(1)
    theirs = chained(1, tenant="globex")
    resp = post_pb(client, tokens, mine + unnamed + theirs, label="acme-ingest")
    assert ExportLogsServiceResponse.FromString(resp.content).partial_success.rejected_log_records == 1
    assert owner.execute("SELECT tenant, count(*) FROM audit_events GROUP BY tenant").fetchall() == [("acme", 3)]


def test_custom_event_body_over_the_limit_is_refused(client, tokens, owner):
    huge = {"event_name": "audit.login", "body": "x" * (2 * 1024 * 1024)}
    resp = client.post("/api/audit-events", json=huge, headers=tokens.header("ingest"))
    assert resp.status_code == 413
    assert count(owner) == 0


def test_database_outage_is_a_retryable_503(client, tokens, store, monkeypatch):
    import contextlib

    import psycopg

    @contextlib.contextmanager
    def down():
        raise psycopg.OperationalError("connection refused")
        yield

    monkeypatch.setattr(store, "connection", down)
    resp = post_pb(client, tokens, chained(1))
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "1"
    assert client.get("/api/audit-logs", headers=tokens.header("auditor")).status_code == 503
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


def _ids(owner) -> list[int]:
    return [r[0] for r in owner.execute("SELECT id FROM audit_events ORDER BY id")]


def test_row_ids_are_drawn_a_block_at_a_time(owner):
    from secret_audit.store._ingest import Ingestor
    from secret_audit.store._otlp import decode_protobuf
    from secret_audit.store.migrations import ID_BLOCK

    step = owner.execute("SELECT seqincrement FROM pg_sequence "
                         "WHERE seqrelid = 'audit_events_id_seq'::regclass").fetchone()[0]
    assert step == ID_BLOCK > 1
    ingestor = Ingestor()
    assert ingestor.ingest(owner, decode_protobuf(to_protobuf(chained(3)))).accepted == 3
    assert ingestor.ingest(owner, decode_protobuf(to_protobuf(chained(ID_BLOCK + 2)))).accepted == ID_BLOCK + 2
    ids = _ids(owner)
    first = ids[0]
    # the first request used the start of one block; the second, two whole blocks drawn after it
    assert ids[:3] == [first, first + 1, first + 2]
    assert ids[3:] == list(range(first + ID_BLOCK, first + 2 * ID_BLOCK + 2))


def test_row_ids_stay_unique_whatever_the_sequence_steps_by(owner):
    from secret_audit.store._ingest import Ingestor
    from secret_audit.store._otlp import decode_protobuf

    # a sequence reset by hand to step 1 (as before schema version 4): one id per record, none twice
    owner.execute("ALTER TABLE audit_events ALTER COLUMN id SET INCREMENT BY 1")
    ingestor = Ingestor()
    for n in (3, 5):
        assert ingestor.ingest(owner, decode_protobuf(to_protobuf(chained(n)))).accepted == n
    ids = _ids(owner)
    assert ids == list(range(ids[0], ids[0] + 8))


@pytest.mark.parametrize("own", [True, False])
def test_a_failed_write_leaves_nothing_and_the_connection_usable(owner, db_url, own: bool):
    import psycopg
    from psycopg.pq import TransactionStatus

    from secret_audit.store._ingest import Ingestor
    from secret_audit.store._otlp import decode_protobuf

    # the database refuses one row in the middle of the COPY
    owner.execute("ALTER TABLE audit_events ADD CONSTRAINT no_boom CHECK (secret_name <> 'boom')")
    bad = chained(3) + chained(2, secret="boom")
    ingestor = Ingestor()
    with psycopg.connect(db_url, autocommit=own) as conn:
        if not own:
            conn.execute("SELECT 1")  # a transaction of the caller's is open
        with pytest.raises(psycopg.errors.CheckViolation):
            ingestor.ingest(conn, decode_protobuf(to_protobuf(bad)))
        if not own:  # the caller's transaction: only our savepoint was rolled back
            assert conn.info.transaction_status == TransactionStatus.INTRANS
            conn.rollback()
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert count(owner) == 0
        assert owner.execute("SELECT count(*) FROM audit_streams").fetchone()[0] == 0
        good = chained(4)
        assert ingestor.ingest(conn, decode_protobuf(to_protobuf(good))).accepted == 4
        if not own:
            conn.commit()
    assert count(owner) == 4


def test_record_time_bounds_follow_their_settings(db_url, tokens, owner):
    """OTEL_PYTHON_SECRET_AUDIT_STORE_MAX_CLOCK_SKEW_SECONDS and ..._MAX_RECORD_AGE_DAYS: records outside
    are stored at their receive time, with a time_out_of_bounds finding (the defaults, 300 s and 31 days,
    are in tests/store/test_attacks.py)."""
    import time

    from fastapi.testclient import TestClient

    from secret_audit.store.app import create_app
    from secret_audit.store.config import load_store_config

    from .conftest import opened_store

    config = load_store_config({"OTEL_PYTHON_SECRET_AUDIT_STORE_MAX_CLOCK_SKEW_SECONDS": "0",
                                "OTEL_PYTHON_SECRET_AUDIT_STORE_MAX_RECORD_AGE_DAYS": "1"})
    now = time.time_ns()
    recs = chained(3)
    prev = "0" * 64
    for r, at in zip(recs, [now - 2 * 86400 * 10**9, now - 10**9, now + 30 * 10**9], strict=True):
        r["time_unix_nano"] = at
        r["attributes"]["audit.chain.prev"] = prev
        prev = rehash(r)
    with opened_store(config, db_url) as store, TestClient(create_app(store, manage_store=False)) as c:
        assert post_pb(c, tokens, recs).status_code == 200
    held = owner.execute("SELECT range_first, range_last FROM audit_findings WHERE kind = 'time_out_of_bounds' "
                         "ORDER BY range_first").fetchall()
    assert held == [(1, 1), (3, 3)]  # two days old, and 30 s ahead
