"""Alert delivery off the ingest path: one sender thread, a bounded queue, retries, signed bodies.

Deliveries follow the Standard Webhooks format (https://www.standardwebhooks.com): headers
``webhook-id`` (the alert's id, the same on every retry), ``webhook-timestamp`` (Unix seconds of
this attempt) and ``webhook-signature`` (``v1,`` + base64 of HMAC-SHA256 over
``{id}.{timestamp}.{body}``), so receivers can use that project's libraries to check them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import queue
import threading
import time
from typing import Any

from secret_audit.store.config import AlertSettings, Webhook
from secret_audit.version import __version__

__all__ = ["Sender", "sign"]

_log = logging.getLogger("secret_audit.store")

_RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value of one delivery attempt."""
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class Sender:
    """Sends each alert to every webhook that wants its kind; counts what was sent, failed or dropped."""

    def __init__(self, settings: AlertSettings) -> None:
        self._settings = settings
        self._queue: queue.Queue[tuple[Webhook, str, str, bytes] | None] = queue.Queue(settings.queue_size)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sent: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="secret-audit-alerts-out", daemon=True)
        self._thread.start()

    def send(self, kind: str, message_id: str, body: bytes) -> None:
        """Queue one alert for its webhooks; a full queue drops it, counted and logged."""
        for hook in self._settings.webhooks:
            if kind not in hook.kinds:
                continue
            try:
                self._queue.put_nowait((hook, kind, message_id, body))
            except queue.Full:
                self._count(self.dropped, kind)
                _log.error("secret-audit store: alert %s (%s) dropped: %d alerts already wait for %s; "
                           "raise OTEL_PYTHON_SECRET_AUDIT_STORE_ALERT_QUEUE_SIZE or fix the receiver",
                           message_id, kind, self._queue.qsize(), hook.url)

    def stats(self) -> dict[str, Any]:
        """What /stats shows: sent, failed and dropped alerts by kind, and how many wait."""
        with self._lock:
            return {"sent": dict(self.sent), "failed": dict(self.failed), "dropped": dict(self.dropped),
                    "queued": self._queue.qsize()}

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued within ``timeout``, then stop (what is left is counted as failed)."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        self._stop.set()
        self._thread.join(timeout)

    def _count(self, table: dict[str, int], kind: str) -> None:
        with self._lock:
            table[kind] = table.get(kind, 0) + 1

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self._settings.timeout_ms / 1000, follow_redirects=False) as client:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                hook, kind, message_id, body = item
                if self._deliver(client, hook, message_id, body):
                    self._count(self.sent, kind)
                else:
                    self._count(self.failed, kind)

    def _deliver(self, client: Any, hook: Webhook, message_id: str, body: bytes) -> bool:
        import httpx

        delay = 0.5
        why = ""
        for attempt in range(self._settings.retries + 1):
            if attempt:
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, 30.0)
            stamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "user-agent": f"secret-audit-store/{__version__}",
                "webhook-id": message_id,
                "webhook-timestamp": str(stamp),
                "webhook-signature": sign(hook.secret, message_id, stamp, body),
            }
            try:
                status = client.post(hook.url, content=body, headers=headers).status_code
            except httpx.HTTPError as exc:
                why = type(exc).__name__
                continue
            if 200 <= status < 300:
                return True
            why = f"HTTP {status}"
            if status not in _RETRYABLE:
                break
        _log.error("secret-audit store: alert %s not delivered to %s (%s) after %d attempts",
                   message_id, hook.url, why, attempt + 1)
        return False
