"""The caller's path with the audit agent: what it works out once per kind of call stays right, and an
idle agent sleeps until an access wakes it (a steady stream of accesses wakes nothing)."""

from __future__ import annotations

import contextlib
import os
import secrets
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest

from otlp_receiver import otlp_receiver

P = "OTEL_PYTHON_SECRET_AUDIT_"


@pytest.fixture
def audit_env() -> dict[str, str]:
    return {P + "SCHEDULE_DELAY_MS": "20", P + "SPANS": "all", P + "REDIS_KEY_PATTERNS": "secret:*,1*"}


def test_items_made_once_per_kind_of_call_follow_the_reply_and_the_key_type(audit, r):
    """A plain command's Items are kept per (command, key names, what the reply tells): a hit and a miss
    of one key differ, and 1 and 1.0 (one dict key in Python) are named as redis-py sends them."""
    n = 10**9 + secrets.randbelow(10**9)
    key = "secret:" + secrets.token_hex(6)
    r.set(key, b"v")
    audit.clear()
    for _ in range(2):
        r.get(key)
        r.get(key + ":missing")
        r.get(n)
        r.get(float(n))
    got = [(a["secret.name"], a["audit.outcome"], a.get("audit.result")) for a in audit.attrs()]
    one_round = [(key, "success", "found"), (key + ":missing", "not_found", None),
                 (str(n), "not_found", None), (f"{n}.0", "not_found", None)]
    assert got == one_round * 2


def test_the_ring_says_when_its_reader_sleeps_and_a_writer_sees_it():
    """``doze`` sets SLEEPING only when nothing is committed; ``put`` commits and reports it; a reader
    that finds a slot committed while it dozed off stays awake."""
    from secret_audit._internal.ring import SLEEPING, Ring, open_ring

    fd, mm = open_ring()
    os.close(fd)
    app, agent = Ring(mm), Ring(mm)
    assert app.put(0, 1, 2, 0, 0, 0, (3,)) == (0, False)  # the reader is awake: nobody is woken
    assert agent.doze() is False  # a slot is there: no sleep
    assert agent.word(SLEEPING) == 0
    assert agent.read() == (0, 0, 1, 2, 0, 0, 0, (3,), 0)
    assert agent.doze() is True
    assert app.word(SLEEPING) == 1
    assert app.put(0, 3, 4, 5, 6, 1, (7, 8), 9) == (1, True)  # asleep: this writer wakes it
    app.wake()
    assert agent.word(SLEEPING) == 0
    assert agent.read() == (1, 0, 3, 4, 5, 6, 1, (7, 8), 9)
    mm.close()


@pytest.fixture
def agent_extra() -> dict[str, str]:
    """Settings a test adds to its agent's (parametrize it to change them)."""
    return {}


@pytest.fixture
def agent_handoff(redis_url: str, tmp_path: Any, agent_extra: dict[str, str]) -> Iterator[tuple[Any, Any, Any]]:
    """A real agent serving this process's ring; its wrapper for GET, a real client, the receiver."""
    with serving_agent(redis_url, tmp_path, extra=agent_extra) as served:
        yield served


@contextlib.contextmanager
def serving_agent(redis_url: str, tmp_path: Any, via_agent: bool = False,
                  extra: dict[str, str] | None = None) -> Iterator[tuple[Any, Any, Any]]:
    """The agent's hand-off, a GET through our wrapper on a real client, the receiver; ``via_agent``: the
    agent makes the audit spans (whether the app's sampler allows it is test_agent's to check)."""
    import redis

    from secret_audit._internal import agent_wire
    from secret_audit._internal.agent_client import AgentHandoff
    from secret_audit._internal.config import load_settings
    from secret_audit._internal.matcher import KeyMatcher
    from secret_audit._internal.redis_calls import Wrappers

    with otlp_receiver() as rx:
        settings = load_settings({P + "EXPORTER_OTLP_ENDPOINT": rx.url + "/v1/logs", P + "AGENT": "process",
                                  P + "SPOOL_DIR": str(tmp_path / "spool"),
                                  P + "SPANS_VIA": "agent" if via_agent else "app", **(extra or {})})
        address = agent_wire.agent_address()
        handoff = AgentHandoff(settings, address, agent_wire.spawn(address, settings))
        if via_agent:
            handoff._via_agent = True
        assert handoff.register() is not None
        client = redis.Redis.from_url(redis_url)
        get = Wrappers(handoff, KeyMatcher(["secret:*"])).execute_command
        try:
            yield handoff, (lambda key: get(client.execute_command, client, ("GET", key), {})), rx
        finally:
            handoff.close(10)
            client.close()


def test_an_idle_agent_sleeps_and_the_next_access_wakes_it(agent_handoff):
    """Once idle the agent says it sleeps; an access then wakes it at once (without the wake, its slot
    would wait for the agent's next look, a quarter of a second later), and clears the word."""
    from secret_audit._internal.ring import SLEEPING, TAIL

    handoff, get, rx = agent_handoff
    key = "secret:" + secrets.token_hex(6)
    handoff.stats()  # the agent said hello: its pid is known
    assert os.sched_getscheduler(handoff.agent_pid) == os.SCHED_BATCH  # its wake-ups preempt nobody
    took = []
    for _ in range(3):
        ring = handoff.ring
        deadline = time.monotonic() + 10
        while not ring.word(SLEEPING) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert ring.word(SLEEPING) == 1
        before = ring.next
        started = time.monotonic()
        get(key)
        while ring.word(TAIL) <= before and time.monotonic() - started < 5:
            time.sleep(0.001)
        took.append(time.monotonic() - started)
        assert ring.word(SLEEPING) == 0
    assert statistics.median(took) < 0.1, took
    assert handoff.flush(10)
    deadline = time.monotonic() + 10
    while len(rx.audit_records()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r["attributes"]["secret.name"] for r in rx.audit_records()] == [key] * 3


def test_a_steady_stream_of_accesses_does_not_wake_the_agent(agent_handoff):
    """While accesses keep coming the agent naps and reads what came: callers find it awake and make no
    system call (the socket carries no wake frame)."""
    handoff, get, rx = agent_handoff
    key = "secret:" + secrets.token_hex(6)
    get(key)  # its shape crosses once
    assert handoff.flush(10)
    woken = []
    nudge = handoff.nudge

    def counted() -> None:  # no fail-closed caller and no flush here: a nudge is a wake
        woken.append(handoff.ring.next)
        nudge()

    handoff.nudge = counted
    for _ in range(500):
        get(key)
        time.sleep(0.0005)
    # Were the agent to sleep whenever it found the ring empty, nearly every access would wake it; it
    # naps instead. A few wakes are allowed: this process may be descheduled for longer than a nap.
    assert len(woken) <= 10, woken


@pytest.mark.parametrize("agent_extra", [{P + "SCHEDULE_DELAY_MS": "60000"}])
def test_a_flush_has_the_agent_export_what_it_read_at_once(agent_handoff):
    """The app's flush asks the agent (an ``L`` frame) to export its partial batch once it has read the
    ring that far: before, the batch waited for the worker's timer (``SCHEDULE_DELAY_MS``), a fifth of a
    second of every 100,000-record round of bench_throughput.py, here a minute."""
    handoff, get, rx = agent_handoff
    key = "secret:" + secrets.token_hex(6)
    for _ in range(7):  # far fewer than a batch (512): only the flush or the timer exports them
        get(key)
    started = time.monotonic()
    assert handoff.flush(20)
    assert time.monotonic() - started < 10
    assert len(rx.audit_records()) == 7
