"""The loss, integrity and refusal rules of detections/ fire on trails a real producer leaves in a real
store when its requests are refused (the demo's trail has none of them: tests/test_detections.py)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from secret_audit import AuditUnavailableError

from .conftest import serve
from .test_store_alerts import failing_ingest, lose_first_batch, producer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))

import detect  # noqa: E402


def trail(url: str, token: str) -> list[dict[str, object]]:
    """The store's whole trail as `secret-audit query --all --json` prints it."""
    env = {**os.environ, "OTEL_PYTHON_SECRET_AUDIT_STORE_URL": url, "OTEL_PYTHON_SECRET_AUDIT_STORE_TOKEN": token}
    proc = subprocess.run([str(Path(sys.executable).parent / "secret-audit"), "query", "--all", "--json"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def test_a_lost_batch_fires_the_loss_and_integrity_rules(store, tokens, redis_url):
    with serve(store, failing_ingest(1)) as url:
        lose_first_batch(url, tokens["ingest"], redis_url)
        events = trail(url, tokens["auditor"])
    fired = detect.evaluate(events)
    lost = fired["Audit records lost"]
    assert len(lost) == 1
    (dropped,) = [e for e in events if e["event_name"] == "audit.dropped"]
    assert lost[0].events == [dropped["id"]]
    assert dropped["attributes"]["audit.dropped.reason"] == "export_failed"
    broken = fired["Audit record failed its integrity check on ingest"]
    assert [e["integrity"] for e in events if e["id"] in broken[0].events] == ["gap_before"]


def test_fail_closed_refusals_fire_the_refusal_rule(store, tokens, redis_url):
    with serve(store, failing_ingest(3)) as url:
        with producer(url, tokens["ingest"], OTEL_PYTHON_SECRET_AUDIT_FAILURE_MODE="closed",
                      OTEL_PYTHON_SECRET_AUDIT_EXPORT_RETRY_TIMEOUT_MS="0") as pipeline:
            client = redis.Redis.from_url(redis_url)
            with pytest.raises(AuditUnavailableError):
                client.get("secret:held-back")
            deadline = time.monotonic() + 20
            while not pipeline.accepting() and time.monotonic() < deadline:
                with contextlib.suppress(AuditUnavailableError):
                    client.get("secret:held-back")  # refused up front while the store is away
                time.sleep(0.05)
            assert pipeline.accepting()
            client.get("secret:after")  # once accepted again: its batch carries the refusal reports
            assert pipeline.flush(10)
        events = trail(url, tokens["auditor"])
    fired = detect.evaluate(events)
    refused = [e for e in events if e["event_name"] == "audit.refused"]
    assert refused
    assert len(fired["Secret calls refused in fail-closed mode"]) == len(refused)


def test_a_flushdb_fires_the_bulk_wipe_rule(store, tokens):
    from servers import valkey_server

    with serve(store) as url, valkey_server() as (host, port):
        with producer(url, tokens["ingest"],
                      OTEL_PYTHON_SECRET_AUDIT_REDIS_KEY_PATTERNS="secret:*,vault/*") as pipeline:
            client = redis.Redis(host=host, port=port)
            client.set("secret:kept", "v")
            client.flushdb()
            client.close()
            assert pipeline.flush(10)
        events = trail(url, tokens["auditor"])
    fired = detect.evaluate(events)
    wiped = [e["id"] for e in events if e["attributes"].get("audit.action") == "FLUSHDB"]
    assert sorted(e["attributes"]["secret.name"] for e in events if e["id"] in wiped) == ["secret:*", "vault/*"]
    assert sorted(i for hit in fired["Secrets wiped or swapped in bulk"] for i in hit.events) == sorted(wiped)


def test_a_dead_agent_fires_the_agent_rule(store, tokens):
    """A stream that continues a dead agent's (audit.stream.continued) fires the rule; its predecessor's
    records do not."""
    from .records import chained
    from .test_store_succession import post_to, successor_of

    before = chained(3)
    after = successor_of(before, 3, 0, 2)
    with serve(store) as url:
        post_to(url, tokens["ingest"], before + after)
        events = trail(url, tokens["auditor"])
    fired = detect.evaluate(events)
    (link,) = [e for e in events if e["event_name"] == "audit.stream.continued"]
    assert [m.events for m in fired["Audit agent died"]] == [[link["id"]]]
