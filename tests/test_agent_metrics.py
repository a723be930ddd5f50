"""The pipeline's metrics with the audit agent: the same instruments in the app's MeterProvider as in-process,
read once per collection, none on a secret call, the agent's export durations recorded exactly."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from bisect import bisect_left
from pathlib import Path
from typing import Any

import redis

from otlp_receiver import otlp_receiver
from secret_audit._internal.export_timings import KEEP, ExportTimings
from secret_audit._internal.lifecycle import AgentPipeline
from secret_audit.instruments import BUCKETS
from test_metrics import metered, points, spied, value  # noqa: F401 - metered and spied are fixtures

P = "OTEL_PYTHON_SECRET_AUDIT_"
MISSING = {"event.name": "secret.access", "secret.source": "redis", "audit.outcome": "not_found"}


def test_each_export_request_the_agent_sends_is_one_point_of_the_apps_histogram(metered, redis_url, key):  # noqa: F811
    """Each request the agent sent (then each one the endpoint failed) is one duration in the app's histogram,
    with the same error.type as in-process; read at collection, so callers pay nothing."""
    with otlp_receiver() as rx:
        reader, pipeline = metered(rx.url, **{P + "AGENT": "process", P + "EXPORT_RETRY_TIMEOUT_MS": "0"})
        assert isinstance(pipeline, AgentPipeline)
        client = redis.Redis.from_url(redis_url)
        for _ in range(5):
            client.get(key)
            assert pipeline.flush(10)
        got = points(reader)
        sent = len(rx.raw)
        rx.status = 503
        client.get(key)
        assert pipeline.flush(10)
        failed = points(reader)
    ok = value(got, "secret_audit.export.duration")
    assert sent == 5
    assert ok.count == sent
    assert sum(ok.bucket_counts) == sent
    assert 0 < ok.min <= ok.max < 10
    assert ok.min <= ok.sum / ok.count <= ok.max
    assert value(got, "secret_audit.record.exported", **MISSING) == 5
    unavailable = value(failed, "secret_audit.export.duration", **{"error.type": "unavailable"})
    assert unavailable.count >= 1
    assert value(failed, "secret_audit.export.duration").count == sent  # nothing counted twice


def test_the_caller_never_records_a_metric_with_the_agent(metered, redis_url, key, spied,  # noqa: F811
                                                          monkeypatch):
    """With the agent, callers write ring slots only: the counts are asked of the agent once per collection,
    and its durations recorded, on the collecting thread, never on a secret call."""
    threads, calls = spied
    with otlp_receiver() as rx:
        reader, pipeline = metered(rx.url, **{P + "AGENT": "process"})
        assert isinstance(pipeline, AgentPipeline)
        asked: list[str] = []
        ledger = pipeline.handoff.ledger

        def asking(timeout: float = 1.0, spool: bool = False) -> Any:
            asked.append(threading.current_thread().name)
            return ledger(timeout, spool)

        monkeypatch.setattr(pipeline.handoff, "ledger", asking)
        client = redis.Redis.from_url(redis_url)
        for _ in range(50):
            client.get(key)
        assert calls == []  # nothing read the counters while the app worked
        assert threads == set()
        assert pipeline.flush(10)
        assert asked == []
        got = points(reader)
    me = threading.current_thread().name
    assert calls == [me]  # one reading for all the instruments of a collection
    assert asked == [me]  # one question to the agent
    assert threads == {me}  # the agent's durations, recorded by the collection
    assert value(got, "secret_audit.record.created", **MISSING) == 50
    assert value(got, "secret_audit.export.duration").count >= 1


def test_queue_size_bounds_the_agents_ring_as_it_bounds_the_in_process_queue(metered, redis_url, key):  # noqa: F811
    """QUEUE_SIZE 64 with the agent: the app holds at most 64 unsettled accesses (queue.capacity 64), the
    queue.size metric shows them, and what comes past them with QUEUE_FULL_TIMEOUT_MS 0 is dropped,
    counted and reported, as in-process."""
    with otlp_receiver() as rx:
        reader, pipeline = metered(rx.url, **{P + "AGENT": "process", P + "QUEUE_SIZE": "64",
                                              P + "BATCH_SIZE": "8", P + "QUEUE_FULL_TIMEOUT_MS": "0"})
        assert isinstance(pipeline, AgentPipeline)
        client = redis.Redis.from_url(redis_url)
        client.get(key)
        assert pipeline.flush(10)
        agent = pipeline.stats()["agent"]["pid"]
        os.kill(agent, signal.SIGSTOP)
        try:
            stopped(agent)
            for _ in range(100):
                client.get(key)
            full = points(reader)
        finally:
            os.kill(agent, signal.SIGCONT)
        assert pipeline.flush(10)
        done = points(reader)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(r["event_name"] == "audit.dropped" for r in rx.logs):
            time.sleep(0.05)
        records = rx.audit_records()
        dropped = [r["attributes"] for r in rx.logs if r["event_name"] == "audit.dropped"]
    assert value(full, "secret_audit.queue.capacity") == 64
    assert value(full, "secret_audit.queue.size") == 64
    assert value(full, "secret_audit.record.lost", **{"audit.dropped.reason": "queue_full"}) == 36
    assert value(done, "secret_audit.queue.size") == 0
    assert len(records) == 65
    assert [(a["audit.dropped.reason"], a["audit.dropped.count"]) for a in dropped] == [("queue_full", 36)]


def stopped(pid: int) -> None:
    """Wait until every thread of ``pid`` is stopped (a SIGSTOP reaches a running thread a moment later)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = [Path(f"/proc/{pid}/task/{t}/stat").read_text().rsplit(")", 1)[1].split()[0]
                  for t in os.listdir(f"/proc/{pid}/task")]
        if set(states) == {"T"}:
            return
        time.sleep(0.005)
    raise AssertionError(f"agent {pid} did not stop")


def test_durations_cross_from_the_agent_to_the_app_unchanged():
    """Up to KEEP durations between two questions arrive as measured, in order within each result (JSON, as
    the C frame carries them): the app records the very floats the in-process pipeline would have."""
    rng = random.Random(7)
    measured = [(rng.lognormvariate(-6, 2), rng.choice(["ok", "retry", "refused"])) for _ in range(KEEP)]
    agent, app = ExportTimings(), ExportTimings()
    for seconds, result in measured:
        agent.add(seconds, result)
    app.merge(json.loads(json.dumps(agent.take())))
    drained = list(app.drain())

    def series(durations: list[tuple[float, str]]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for seconds, result in durations:
            out.setdefault(result, []).append(seconds)
        return out

    assert len(drained) == KEEP
    assert series(drained) == series(measured)  # each result's series: the same floats, in order
    assert agent.take() == {"values": {}, "folded": []}
    assert list(app.drain()) == []


def test_durations_past_keep_fold_per_bucket_and_keep_counts_buckets_bounds_and_sum():
    """Past KEEP (an app that seldom collects) the rest fold per bucket: every bucket's count, the count,
    least and greatest stay exact, the sum up to rounding, and memory stays bounded."""
    rng = random.Random(11)
    measured = [rng.lognormvariate(-6, 2) for _ in range(3 * KEEP)]
    bounds = BUCKETS["secret_audit.export.duration"]
    on_a_bound = [bounds[3]] * 5  # a value on a bound is in the lower bucket, as the SDK has it
    agent, app = ExportTimings(), ExportTimings()
    for seconds in [*measured, *on_a_bound]:
        agent.add(seconds, "ok")
    taken = json.loads(json.dumps(agent.take()))
    assert len(taken["values"]["ok"]) == KEEP
    assert len(taken["folded"]) <= len(bounds) + 1
    app.merge(taken)
    replayed = [seconds for seconds, result in app.drain() if result == "ok"]

    def buckets(values: list[float]) -> list[int]:
        out = [0] * (len(bounds) + 1)
        for v in values:
            out[bisect_left(bounds, v)] += 1
        return out

    original = [*measured, *on_a_bound]
    assert len(replayed) == len(original)
    assert buckets(replayed) == buckets(original)
    assert (min(replayed), max(replayed)) == (min(original), max(original))
    assert abs(sum(replayed) - sum(original)) <= 1e-9 * sum(original)
