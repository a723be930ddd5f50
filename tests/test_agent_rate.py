"""The agent's rate without giving up order: a flush exports at once, and the courier's second batch in
flight never reaches the endpoint ahead of a first one that failed."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

from otlp_receiver import otlp_receiver

P = "OTEL_PYTHON_SECRET_AUDIT_"


def test_a_flush_has_the_agent_export_what_it_read_at_once(redis_url, tmp_path):
    """The app's flush asks the agent (an ``L`` frame) to export its partial batch once it has read the
    ring that far: before, the batch waited for the worker's timer (``SCHEDULE_DELAY_MS``), a fifth of a
    second of every 100,000-record round of bench_throughput.py, here a minute."""
    import redis

    from secret_audit._internal import agent_wire
    from secret_audit._internal.agent_client import AgentHandoff
    from secret_audit._internal.config import load_settings
    from secret_audit._internal.matcher import KeyMatcher
    from secret_audit._internal.redis_calls import Wrappers

    with otlp_receiver() as rx:
        settings = load_settings({P + "EXPORTER_OTLP_ENDPOINT": rx.url + "/v1/logs", P + "AGENT": "process",
                                  P + "SPOOL_DIR": str(tmp_path / "spool"), P + "SCHEDULE_DELAY_MS": "60000"})
        address = agent_wire.agent_address()
        handoff = AgentHandoff(settings, address, agent_wire.spawn(address, settings))
        assert handoff.register() is not None
        client = redis.Redis.from_url(redis_url)
        get = Wrappers(handoff, KeyMatcher(["secret:*"])).execute_command
        try:
            key = "secret:" + secrets.token_hex(6)
            for _ in range(7):  # far fewer than a batch (512): only the flush or the timer exports them
                get(client.execute_command, client, ("GET", key), {})
            started = time.monotonic()
            assert handoff.flush(20)
            assert time.monotonic() - started < 10
            assert len(rx.audit_records()) == 7
        finally:
            handoff.close(10)
            client.close()


class _Endpoint:
    """A back end that answers RETRY to its first request, which it holds until told to answer."""

    encodes = False
    spoolable = False
    empty = b""
    problem = None

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.release = threading.Event()

    def send(self, payload: Any) -> str:
        self.sent.append(payload)
        if len(self.sent) == 1:
            assert self.release.wait(10)
            return "retry"
        return "ok"

    def pending(self) -> int:
        return 0

    def close(self) -> None:
        pass


def test_the_batch_behind_a_failed_one_is_not_sent_ahead_of_it():
    """Two batches on the courier: the first fails (the endpoint asks for a retry); the second, already
    queued, is not sent until the first is retried and delivered, so the endpoint sees them in order."""
    from secret_audit._internal.delivery import DELIVERED, Delivery, Sealed

    endpoint = _Endpoint()
    delivery = Delivery(5.0, threading.Event())
    assert delivery.open(endpoint, None, 0, False)  # type: ignore[arg-type]
    first = Sealed(b"first", "s", 1, 1, 1, {}, [], {})
    second = Sealed(b"second", "s", 2, 2, 1, {}, [], {})
    verdicts = delivery.deliver(first) + delivery.deliver(second)
    assert verdicts == []  # both on the courier, nothing waited for
    assert delivery.in_flight() == 2
    endpoint.release.set()
    verdicts = delivery.settle()
    assert [(v.kind, v.batch.payload) for v in verdicts] == [(DELIVERED, b"first"), (DELIVERED, b"second")]
    assert endpoint.sent == [b"first", b"first", b"second"]
    delivery.close()
