"""The trail with the audit agent ends, and is replayed, as the in-process pipeline's does.

Against a real Redis and a real agent process: when the app's pipeline shuts down, its stream's end
(the final signed checkpoint) is at the sink before ``shutdown`` returns, and checkpoints land at the
same record counts as in-process.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
import redis

from conftest import retire_pipeline
from otlp_receiver import Receiver, otlp_receiver
from secret_audit import contract
from secret_audit._internal.config import load_settings
from secret_audit._internal.pipeline import peek_pipeline
from secret_audit.signing import generate_key
from test_exit_and_protocol import THREE_LINES, run
from test_spool_default import spooled

P = "OTEL_PYTHON_SECRET_AUDIT_"


@pytest.fixture
def app_env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "KEY": "secret:trail:" + secrets.token_hex(4),
            "VALUE": "canary-" + secrets.token_hex(12), "XDG_STATE_HOME": str(tmp_path / "state")}


def _signed_run(rx: Receiver, redis_url: str, key: Path, agent: str, tmp_path: Path) -> tuple[str, Any]:
    """Ten audited GETs with a signing key, a checkpoint every 4 records, flushes between them; shut down.

    Returns the pipeline's type name and the records (of every event) at the sink once ``shutdown``
    returned, not a moment later.
    """
    from secret_audit.redis import RedisSecretAuditInstrumentor

    settings = load_settings({
        P + "EXPORTER_OTLP_ENDPOINT": rx.url + "/v1/logs", P + "AGENT": agent,
        P + "SCHEDULE_DELAY_MS": "20", P + "CHECKPOINT_RECORDS": "4", P + "CHECKPOINT_INTERVAL_MS": "600000",
        P + "SIGNING_KEY_FILE": str(key), P + "SPOOL_DIR": str(tmp_path / f"spool-{agent}"),
    })
    inst = RedisSecretAuditInstrumentor()
    inst.instrument(settings=settings)
    client = redis.Redis.from_url(redis_url)
    name = "secret:trail:" + secrets.token_hex(4)
    try:
        for i in range(10):
            client.get(name)
            pipeline = peek_pipeline()
            assert pipeline is not None
            if i % 2:
                assert pipeline.flush(10)
        kind = type(pipeline).__name__
        assert pipeline.flush(10)
    finally:
        client.close()
        inst.uninstrument()
        retire_pipeline()
    with rx.lock:
        return kind, [(r["event_name"], dict(r["attributes"])) for r in rx.logs]


def _shape(logs: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, int, bool]]:
    """Each record's event, sequence and (for a checkpoint) whether it is the final one, in sequence order."""
    out = [(event, int(a[contract.SEQUENCE]), bool(a.get(contract.CHECKPOINT_FINAL, False))) for event, a in logs]
    return sorted(out, key=lambda row: row[1])


@pytest.mark.parametrize("agent", ["off", "process"])
def test_the_final_checkpoint_is_at_the_sink_when_shutdown_returns(redis_url, tmp_path, agent):
    """Before, with the agent, ``shutdown`` returned once the records were settled and the agent wrote the
    stream's final checkpoint afterwards: a verifier right after found the stream not final (or a row more
    than it had just counted)."""
    key = tmp_path / "audit.key"
    generate_key(key)
    with otlp_receiver() as rx:
        kind, logs = _signed_run(rx, redis_url, key, agent, tmp_path)
    assert kind == ("AgentPipeline" if agent == "process" else "AuditPipeline")
    rows = _shape(logs)
    assert [seq for _, seq, _ in rows] == list(range(1, len(rows) + 1))
    assert rows[-1] == (contract.EVENT_CHECKPOINT, len(rows), True), rows
    # checkpoints every 4 access records, then the final one: the same counts with the agent as in-process
    accesses = [seq for event, seq, _ in rows if event == "secret.access"]
    assert len(accesses) == 10
    checkpoints = [seq for event, seq, _ in rows if event == contract.EVENT_CHECKPOINT]
    assert checkpoints == [5, 10, 13], rows


_FLUSHED_THEN_EXIT = THREE_LINES + "import secret_audit\nassert secret_audit.flush(10)\n"


@pytest.mark.parametrize("agent", ["off", "process"])
def test_a_refused_batch_flushed_before_exit_leaves_nothing_in_the_spool(tmp_path, app_env, agent):
    """A refusal is not an outage: the loss report made after it is sent (and refused, said), never spooled
    for a later process with the same token, whether the app flushed before exiting (in-process) or the
    agent ends the stream after the app's flush. Before, both spooled it and advised a replay."""
    with otlp_receiver() as rx:
        rx.status = 401
        proc = run(tmp_path, _FLUSHED_THEN_EXIT, **app_env, OTEL_PYTHON_SECRET_AUDIT_AGENT=agent,
                   OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT=rx.url + "/v1/logs")
    assert proc.returncode == 0, proc.stderr
    assert "lost 1 audit record (sequence 1..1): the endpoint refused them" in proc.stderr
    assert "lost 1 audit record (sequence 2..2): the endpoint refused them" in proc.stderr
    assert "wait in the spool" not in proc.stderr
    assert sum(spooled(Path(app_env["XDG_STATE_HOME"])).values()) == 0
    assert app_env["VALUE"] not in proc.stderr


_SPOOL_STATS_APP = """
import json, os, redis, secret_audit
client = redis.Redis.from_url(os.environ["REDIS_URL"])
for _ in range(3):
    client.get(os.environ["KEY"])
assert secret_audit.flush(30)
print("stats " + json.dumps(secret_audit.stats()["spool"]), flush=True)
"""


@pytest.mark.parametrize("agent", ["off", "process"])
def test_stats_name_what_waits_in_the_spool_with_the_agent_as_in_process(tmp_path, app_env, agent):
    """``stats()["spool"]`` (what a health check or a drain loop reads) says what waits in the stream's spool;
    with the agent it was None."""
    with otlp_receiver() as rx:
        rx.status = 503
        proc = run(tmp_path, _SPOOL_STATS_APP, launcher=True, **app_env, OTEL_PYTHON_SECRET_AUDIT_AGENT=agent,
                   OTEL_PYTHON_SECRET_AUDIT_EXPORT_RETRY_TIMEOUT_MS="0", OTEL_TRACES_EXPORTER="none",
                   OTEL_PYTHON_SECRET_AUDIT_SHUTDOWN_TIMEOUT_MS="500",
                   OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT=rx.url + "/v1/logs")
    assert proc.returncode == 0, proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("stats ")]
    spool = json.loads(line.split(" ", 1)[1])
    assert spool is not None, proc.stderr
    assert (spool["batches"], spool["records"]) == (1, 3)
    assert spool["bytes"] > 0


def test_a_lone_span_with_its_records_stream_fields_is_the_sdks_span_of_the_stamped_record():
    """The agent's common span (one record) gets the stream fields its record was stamped with, after the
    duration, as the SDK span ``RecordBuilder`` ends with the stamped record: the same bytes."""
    from secret_audit._internal.agent_span_otlp import encode_lone_span, encode_span
    from secret_audit._internal.otlp import encode_attributes, encode_key_values
    from test_agent_span_otlp import RESOURCE, _record, our_request, sdk_request

    attrs = _record()
    del attrs["audit.duration_ms"]
    record = {**attrs, "audit.duration_ms": 0.25}
    contract.stamp(record, "a-stream", 7, "ab" * 32, 1_000_000_000, "secret.access", 9, "body")
    stream_fields = (contract.EVENT_ID, contract.STREAM_ID, contract.SEQUENCE, contract.CHAIN_PREV,
                     contract.CHAIN_HASH)
    assert list(record)[-5:] == list(stream_fields)
    ids = (0xABC, 0x77, 1, 0x1234)
    assert our_request(RESOURCE, ids, [record], 1_000_000_000, 1_000_250_000) == sdk_request(
        RESOURCE, ids, [record], 1_000_000_000, 1_000_250_000)
    fields = encode_key_values(b"\x4a", {k: record[k] for k in stream_fields})
    for _ in range(2):  # first made, then from the pieces kept per shape
        assert encode_lone_span(0xABC, 0x77, 0x1234, 1_000_000_000, 1_000_250_000, attrs, encode_attributes(attrs),
                                fields) == encode_span(0xABC, 0x77, 0x1234, 1_000_000_000, 1_000_250_000, [record])


_STREAM_FIELDS = {contract.EVENT_ID, contract.STREAM_ID, contract.SEQUENCE, contract.CHAIN_PREV, contract.CHAIN_HASH}


@pytest.mark.parametrize("via", ["agent", "app"])
def test_a_lone_records_span_carries_its_attributes_and_stream_fields_where_the_agent_makes_it(redis_url, via):
    """docs/semantic-conventions.md: a single-record call's span carries exactly the record's attributes, chain
    fields included (the agent makes it once the record is stamped); a span made in the app
    (``SPANS_VIA=app``) ends before the agent stamps the record: it carries all but the stream fields."""
    from test_launcher_e2e import HERE, launch

    key = "secret:lone-span:" + secrets.token_hex(4)
    with otlp_receiver() as rx:
        proc = launch(rx.url, redis_url, str(HERE / "apps" / "launcher_app.py"), key, "v-" + secrets.token_hex(8),
                      **{P + "SPANS_VIA": via})
        assert proc.returncode == 0, proc.stderr
        records = rx.audit_records()
        spans = {s["span_id"]: s for s in rx.spans}
    assert len(records) == 4
    for rec in records:
        attrs, span = rec["attributes"], spans[rec["span_id"]]["attributes"]
        expected = dict(attrs) if via == "agent" else {k: v for k, v in attrs.items() if k not in _STREAM_FIELDS}
        assert {k: v for k, v in span.items() if k != "audit.record_count"} == expected
