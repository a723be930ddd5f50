"""A local webhook receiver for tests and the demo: keeps every delivery attempt and checks signatures
with the Standard Webhooks reference library (not the store's own signing code)."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from otlp_receiver import serve_http


def new_secret() -> str:
    """A signing key in the Standard Webhooks form, ``whsec_`` and base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


class Receiver:
    """Every attempt (headers, raw body, whether its signature verified); the verified alerts apart."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.verifier = Webhook(secret)
        self.attempts: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []
        self.fail_next = 0  # answer this many attempts with 503 first (to prove retries)
        self.lock = threading.Lock()
        self.url = ""

    def handle(self, body: bytes, headers: dict[str, str]) -> int:
        try:
            alert = self.verifier.verify(body, headers)
            verified = True
        except WebhookVerificationError:
            alert, verified = None, False
        with self.lock:
            failing = self.fail_next > 0
            self.fail_next -= 1 if failing else 0
            self.attempts.append({"headers": headers, "body": body, "verified": verified, "status":
                                  503 if failing else 200 if verified else 401})
            if failing:
                return 503
            if verified:
                self.alerts.append(alert)
                return 200
        return 401

    def wait_for(self, kind: str, count: int = 1, timeout: float = 20, **match: Any) -> list[dict[str, Any]]:
        """The verified alerts of one kind (whose details contain ``match``), once there are ``count``."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [a for a in self.alerts if a["kind"] == kind
                         and all(a["details"].get(k) == v for k, v in match.items())]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def raw(self) -> bytes:
        """Every byte received, for canary checks."""
        with self.lock:
            return b"".join(a["body"] + json.dumps(a["headers"]).encode() for a in self.attempts)


@contextmanager
def webhook_receiver(secret: str | None = None) -> Iterator[Receiver]:
    receiver = Receiver(secret or new_secret())

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            status = receiver.handle(body, {k.lower(): v for k, v in self.headers.items()})
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    with serve_http(Handler) as url:
        receiver.url = url + "/alerts"
        yield receiver
