"""The durable spool: records survive an unreachable endpoint and a process restart, in order, once."""

from __future__ import annotations

import secrets
import sqlite3
import time

import pytest
import redis
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from conftest import retire_pipeline
from otlp_receiver import otlp_receiver
from secret_audit._internal.config import load_settings
from secret_audit._internal.lifecycle import AgentPipeline
from secret_audit._internal.pipeline import AuditPipeline, peek_pipeline
from secret_audit.redis import RedisSecretAuditInstrumentor
from servers import free_port
from test_launcher_e2e import HERE, launch


# Each test below runs in-process (AGENT=off: its pipeline, stats and spool in this process) and with the agent
# (its stream's spool in the agent, what the user sees the same: the receiver's records, stats(), the spool).
@pytest.fixture(params=["off", "process"])
def instrument(request):
    made = []

    def make(env):
        settings = load_settings({"OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS": "20",
                                  "OTEL_PYTHON_SECRET_AUDIT_AGENT": request.param, **env})
        RedisSecretAuditInstrumentor().instrument(settings=settings)
        pipeline = peek_pipeline()
        assert isinstance(pipeline, AuditPipeline if request.param == "off" else AgentPipeline)
        made.append(pipeline)
        return pipeline

    yield make
    RedisSecretAuditInstrumentor().uninstrument()
    retire_pipeline()


def spool_rows(directory) -> int:
    with sqlite3.connect(str(directory / "audit-spool.sqlite3")) as conn:
        return conn.execute("SELECT COUNT(*) FROM batches").fetchone()[0]


def test_unavailable_endpoint_spools_then_replays_in_order(tmp_path, redis_url, key, instrument):
    with otlp_receiver() as rx:
        pipeline = _spool_35_records(tmp_path, redis_url, key, instrument, rx)
        stats = pipeline.stats()
        assert stats["spooled"] == 35
        assert stats["spool"]["records"] == 35
        assert rx.audit_records() == []
        rx.status = 200
        redis.Redis.from_url(redis_url).get(key)  # new records queue behind the spooled ones
        _replay_all(pipeline)
        seqs = [r["attributes"]["audit.sequence"] for r in rx.audit_records()]
    assert seqs == list(range(1, 37))


def test_spool_survives_a_restart_and_is_replayed_by_the_next_process(tmp_path, redis_url):
    prefix = "secret:restart:" + secrets.token_hex(4)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    env = {
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR": str(tmp_path),
        "OTEL_PYTHON_SECRET_AUDIT_EXPORT_RETRY_TIMEOUT_MS": "0",
    }
    first = launch(
        dead, redis_url, str(HERE / "apps" / "spool_app.py"), prefix + ":a", "20",
        OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT=dead + "/v1/logs", **env,
    )
    assert first.returncode == 0, first.stderr
    assert spool_rows(tmp_path) >= 1
    with otlp_receiver() as rx:
        second = launch(
            rx.url, redis_url, str(HERE / "apps" / "spool_app.py"), prefix + ":b", "5", **env
        )
        assert second.returncode == 0, second.stderr
        records = rx.audit_records()
    streams: dict[str, list[int]] = {}
    for rec in records:
        streams.setdefault(rec["attributes"]["audit.stream.id"], []).append(rec["attributes"]["audit.sequence"])
    assert sorted(len(v) for v in streams.values()) == [5, 20]
    for seqs in streams.values():
        assert seqs == list(range(1, len(seqs) + 1))
    names = [r["attributes"]["secret.name"] for r in records]
    assert names.index(f"{prefix}:a:0") < names.index(f"{prefix}:b:0")  # old records first
    assert spool_rows(tmp_path) == 0


def test_bad_spool_directory_is_a_configuration_error(tmp_path):
    from secret_audit import ConfigurationError

    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ConfigurationError, match="OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR"):
        load_settings({"OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR": str(target)})


def test_a_leftover_spool_is_replayed_even_by_a_process_that_audits_nothing(tmp_path, redis_url):
    prefix = "secret:leftover:" + secrets.token_hex(4)
    dead = f"http://127.0.0.1:{free_port()}"
    env = {
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR": str(tmp_path),
        "OTEL_PYTHON_SECRET_AUDIT_EXPORT_RETRY_TIMEOUT_MS": "0",
    }
    first = launch(
        dead, redis_url, str(HERE / "apps" / "spool_app.py"), prefix, "7",
        OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT=dead + "/v1/logs", **env,
    )
    assert first.returncode == 0, first.stderr
    assert spool_rows(tmp_path) >= 1
    with otlp_receiver() as rx:
        second = launch(rx.url, redis_url, str(HERE / "apps" / "spool_app.py"), prefix + ":none", "0", **env)
        assert second.returncode == 0, second.stderr
        records = rx.audit_records()
    assert [r["attributes"]["secret.name"] for r in records] == [f"{prefix}:{i}" for i in range(7)]
    assert spool_rows(tmp_path) == 0


def test_only_a_spool_with_rows_in_it_is_a_leftover(tmp_path):
    """An opened spool stays on disk: were it a leftover for good, every later process would start
    its threads at once (its agent stream too) to replay nothing."""
    from secret_audit._internal.spool import Spool
    from secret_audit._internal.spooldir import leftover_spool

    assert not leftover_spool(str(tmp_path))  # none yet
    drainer = Spool(str(tmp_path), 1 << 20)
    assert not leftover_spool(str(tmp_path))  # created, nothing in it
    writer = Spool(str(tmp_path), 1 << 20)  # another process sharing the folder
    assert writer.append("s", 1, 1, 1, b"request")
    assert leftover_spool(str(tmp_path))
    Spool(str(tmp_path), 1 << 20).close()  # a third opening it while a row waits marks nothing
    assert leftover_spool(str(tmp_path))
    drainer._note_if_empty()  # a drainer's look while the row waits
    assert leftover_spool(str(tmp_path))
    batch = drainer.oldest()[0]
    drainer.remove(batch.id)
    drainer.release()
    assert not leftover_spool(str(tmp_path))  # drained
    assert writer.append("s", 2, 2, 1, b"request")  # after a drainer marked it empty
    assert leftover_spool(str(tmp_path))
    assert spool_rows(tmp_path) == 1
    drainer.remove(drainer.oldest()[0].id)
    drainer.release()
    writer.close()
    drainer.close()
    assert not leftover_spool(str(tmp_path))
    (tmp_path / "audit-spool.empty").unlink()  # a spool written before the mark existed is replayed
    assert leftover_spool(str(tmp_path))
    Spool(str(tmp_path), 1 << 20).close()  # which finds it empty
    assert not leftover_spool(str(tmp_path))


def _spooling(instrument, rx, tmp_path, **extra):
    """A pipeline exporting to ``rx`` (answering 503 for now) with a spool in ``tmp_path``."""
    rx.status = 503
    env = {
        "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT": rx.url + "/v1/logs",
        "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR": str(tmp_path),
    }
    return instrument(env | {f"OTEL_PYTHON_SECRET_AUDIT_{k}": v for k, v in extra.items()})


def _spool_35_records(tmp_path, redis_url, key, instrument, rx):
    pipeline = _spooling(instrument, rx, tmp_path, BATCH_SIZE="10")
    client = redis.Redis.from_url(redis_url)
    for i in range(35):
        client.set(f"{key}:{i}", "v")
    assert pipeline.flush(10)
    assert spool_rows(tmp_path) == 4
    return pipeline


def _replay_all(pipeline):
    for _ in range(150):  # replay backs off up to 5 s between attempts
        pipeline.flush(5)
        if pipeline.stats()["spool"]["records"] == 0:
            break
        time.sleep(0.1)
    assert pipeline.stats()["spool"]["records"] == 0


def test_spooled_requests_are_replayed_together(tmp_path, redis_url, key, instrument):
    with otlp_receiver() as rx:
        pipeline = _spool_35_records(tmp_path, redis_url, key, instrument, rx)
        refused = len(rx.raw)
        rx.status = 200
        _replay_all(pipeline)
        replay_requests = rx.raw[refused:]
        seqs = [r["attributes"]["audit.sequence"] for r in rx.audit_records()]
    assert seqs == list(range(1, 36))
    # four spooled requests went out as one combined request (several resource_logs)
    assert len(replay_requests) == 1
    assert pipeline.stats()["replayed"] == 35


def test_a_refused_combined_replay_isolates_the_refused_request(tmp_path, redis_url, key, instrument):
    poisoned = {11, 12, 13, 14, 15, 16, 17, 18, 19, 20}  # the second spooled request

    with otlp_receiver() as rx:
        pipeline = _spool_35_records(tmp_path, redis_url, key, instrument, rx)
        plain = rx.handle

        def handle(path, body, headers):
            if path.endswith("/v1/logs"):
                req = ExportLogsServiceRequest.FromString(body)
                seqs = {
                    kv.value.int_value
                    for rl in req.resource_logs
                    for sl in rl.scope_logs
                    for lr in sl.log_records
                    for kv in lr.attributes
                    if kv.key == "audit.sequence"
                }
                if seqs & poisoned:
                    return 400, b""
            return plain(path, body, headers)

        rx.handle = handle
        rx.status = 200
        _replay_all(pipeline)
        redis.Redis.from_url(redis_url).get(key)
        assert pipeline.flush(10)
        stored = [r["attributes"]["audit.sequence"] for r in rx.audit_records()]
        [report] = [r["attributes"] for r in rx.logs if r["event_name"] == "audit.dropped"]
    assert stored == [s for s in range(1, 36) if s not in poisoned] + [37]
    assert pipeline.stats()["lost_export"] == 10
    assert (report["audit.dropped.first_sequence"], report["audit.dropped.last_sequence"]) == (11, 20)
    assert report["audit.sequence"] == 36


def _dropped(body: bytes) -> list[dict]:
    req = ExportLogsServiceRequest.FromString(body)
    return [
        {kv.key: kv.value for kv in lr.attributes}
        for rl in req.resource_logs
        for sl in rl.scope_logs
        for lr in sl.log_records
        if lr.event_name == "audit.dropped"
    ]


def test_a_refused_spooled_loss_report_is_made_again(tmp_path, redis_url, instrument):
    with otlp_receiver() as rx:
        pipeline = _spooling(instrument, rx, tmp_path, QUEUE_SIZE="64", BATCH_SIZE="64", QUEUE_FULL_TIMEOUT_MS="0")
        from opentelemetry.context import get_current

        from secret_audit._internal.event import Access, Item
        from secret_audit._internal.redis_source import SOURCE

        target = redis.Redis.from_url(redis_url)
        item = (Item("secret:burst", "read", "GET", "found"),)
        # far faster than records are built and spooled: the queue (in-process, QUEUE_SIZE) or the agent's
        # ring (16,384 accesses not yet settled: sent or spooled) overflows
        for _ in range(50_000 if isinstance(pipeline, AgentPipeline) else 5000):
            now = time.time_ns()
            pipeline.submit(Access(SOURCE, now, now, get_current(), target, item, "success"))
        assert pipeline.flush(30)
        dropped = pipeline.stats()["dropped_queue_full"]
        assert dropped > 0, pipeline.stats()
        last_spooled = pipeline.stats()["sequence"]
        refused: list[dict] = []
        plain = rx.handle

        def handle(path, body, headers):
            # refuse, for good, every request that carries one of the original loss reports
            if path.endswith("/v1/logs"):
                originals = [d for d in _dropped(body) if d["audit.sequence"].int_value <= last_spooled]
                if originals:
                    refused.extend(originals)
                    return 400, b""
            return plain(path, body, headers)

        rx.handle = handle
        rx.status = 200
        _replay_all(pipeline)
        pipeline.submit(Access(SOURCE, now, now, get_current(), target, item, "success"))
        assert pipeline.flush(10)
        reports = [r["attributes"] for r in rx.logs if r["event_name"] == "audit.dropped"]
    # a combined replay and then its parts one by one: each original report was refused twice
    unique = {d["audit.sequence"].int_value: d for d in refused}
    refused_counts = sum(d["audit.dropped.count"].int_value for d in unique.values())
    assert refused_counts == dropped  # every original queue-full report went down with its request
    again = [r for r in reports if r["audit.dropped.reason"] == "queue_full"]
    assert sum(r["audit.dropped.count"] for r in again) == dropped
    assert all(r["audit.sequence"] > last_spooled for r in again)
    lost = [r for r in reports if r["audit.dropped.reason"] == "export_failed"]
    assert lost, "the refused requests themselves are reported lost too"
    assert sum(r["audit.dropped.count"] for r in lost) == pipeline.stats()["lost_export"]


def test_a_spool_written_before_loss_reports_were_noted_is_upgraded_in_place(tmp_path):
    from secret_audit._internal.spool import Spool

    path = tmp_path / Spool.FILENAME
    with sqlite3.connect(str(path)) as conn:  # the 0.1.0 schema, with one request waiting
        conn.execute(
            "CREATE TABLE batches (id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, "
            "first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, records INTEGER NOT NULL, "
            "body BLOB NOT NULL, created_ns INTEGER NOT NULL)"
        )
        conn.execute("INSERT INTO batches VALUES (1, 's', 1, 3, 3, x'0a00', 0)")
    spool = Spool(str(tmp_path), 1 << 20)
    second = Spool(str(tmp_path), 1 << 20)  # a second process opening it too
    try:
        [old] = spool.oldest(1 << 20)
        assert (old.stream, old.first_seq, old.last_seq, old.body, old.reports) == ("s", 1, 3, b"\n\x00", None)
        assert second.append("s", 4, 4, 1, b"\n\x00", '{"4": 7}')
        assert [b.reports for b in spool.oldest(1 << 20)] == [None, '{"4": 7}']
    finally:
        spool.close()
        second.close()


def test_stats_after_shutdown_do_not_fail_on_the_closed_spool(tmp_path, redis_url, key, instrument):
    """A health check or benchmark may read stats() after shutdown (at exit): the spool is closed then."""
    with otlp_receiver() as rx:
        pipeline = _spooling(instrument, rx, tmp_path)
        redis.Redis.from_url(redis_url).get(key)
        assert pipeline.flush(10)
        assert pipeline.stats()["spool"]["records"] == 1
        pipeline.shutdown(5)
        stats = pipeline.stats()
    assert stats["spooled"] == 1
    assert stats["spool"] is None
