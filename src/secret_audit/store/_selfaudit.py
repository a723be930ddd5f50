"""Chained streams made by the store itself: its own audit of reads, and custom events posted to it."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import orjson
import psycopg

from secret_audit import contract
from secret_audit.contract import severity_for
from secret_audit.store._ingest import Ingestor, IngestResult
from secret_audit.store._otlp import make_record
from secret_audit.version import __version__

__all__ = ["STORE_SERVICE", "Chainer", "SelfAudit", "severity_for"]

STORE_SERVICE = "secret-audit-store"  # service.name of the store's own stream

class Chainer:
    """One chained stream written by this process; the lock keeps sequence order equal to commit order."""

    def __init__(self, ingestor: Ingestor, resource: dict[str, Any], tenant: str | None = None) -> None:
        self.ingestor = ingestor
        self.stream_id = str(uuid.uuid4())
        self.resource = {**resource, "service.instance.id": self.stream_id}
        if tenant:
            self.resource["service.namespace"] = tenant
        self.tenant = tenant
        self._seq = 0
        self._prev = contract.GENESIS
        self._lock = threading.Lock()

    def append(
        self,
        conn: psycopg.Connection[Any],
        *,
        event_name: str,
        attributes: dict[str, Any],
        body: str,
        severity: tuple[int, str],
        time_unix_nano: int | None = None,
        trace_id: str = "",
        span_id: str = "",
    ) -> IngestResult:
        """Chain and commit one record; the caller is answered only after it is durable."""
        with self._lock:
            seq = self._seq + 1
            now = time.time_ns()
            at = time_unix_nano or now
            attrs = dict(attributes)
            digest = contract.stamp(attrs, self.stream_id, seq, self._prev, at, event_name, severity[0], body,
                                    trace_id, span_id)
            rec = make_record(at, now, severity[0], severity[1], body, event_name, trace_id, span_id, attrs,
                              self.resource, "secret_audit.store", __version__)
            result = self.ingestor.ingest(conn, [rec], self.tenant)
            if result.accepted == 1:
                self._seq, self._prev = seq, digest
            return result


class SelfAudit(Chainer):
    """The store's own trail: each query, stream, verify and refusal is written before the answer."""

    def __init__(self, ingestor: Ingestor) -> None:
        super().__init__(ingestor, {"service.name": STORE_SERVICE})

    def record(
        self,
        conn: psycopg.Connection[Any],
        *,
        event_name: str,
        action: str,
        outcome: str,
        principal: str,
        client_address: str | None,
        body: str,
        extra: dict[str, Any] | None = None,
    ) -> IngestResult:
        """Write one audit.query-style record about a caller's use of the store."""
        attrs: dict[str, Any] = {
            "secret.source": "secret-audit-store",
            "audit.operation": "read",
            "audit.action": action,
            "audit.outcome": outcome,
            "audit.principal": principal,
            "audit.access_path": "external",
        }
        if client_address:
            attrs["client.address"] = client_address
        for key, value in (extra or {}).items():
            attrs[key] = value if isinstance(value, (str, int, float, bool)) else orjson.dumps(value).decode()
        return self.append(conn, event_name=event_name, attributes=attrs, body=body,
                           severity=severity_for(outcome))
