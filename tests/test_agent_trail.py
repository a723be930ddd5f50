"""The trail with the audit agent ends, and is replayed, as the in-process pipeline's does.

Against a real Redis and a real agent process: when the app's pipeline shuts down, its stream's end
(the final signed checkpoint) is at the sink before ``shutdown`` returns, and checkpoints land at the
same record counts as in-process.
"""

from __future__ import annotations

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
from test_spool_default import app_env, spooled  # noqa: F401 - app_env: a fixture

P = "OTEL_PYTHON_SECRET_AUDIT_"


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
