"""The agent's rate without giving up order: the courier's second batch in flight never reaches the
endpoint ahead of a first one that failed (the flush that exports at once: test_agent_caller.py)."""

from __future__ import annotations

import threading
from typing import Any


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
