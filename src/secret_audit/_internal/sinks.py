"""Where built records go: the sink interface, and the fast sink that writes OTLP bytes itself."""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource

from secret_audit._internal.otlp import RecordData, encode_log_record, encode_request
from secret_audit._internal.senders import Sender

__all__ = ["FastSink", "Sink"]


class Sink:
    """Accumulates one batch of records and delivers it; ``deliver`` returns a SendResult value."""

    def add(self, record: RecordData) -> None:
        raise NotImplementedError

    def pending(self) -> int:
        raise NotImplementedError

    def deliver(self) -> str:
        raise NotImplementedError

    def discard(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class FastSink(Sink):
    """Encodes each record once to protobuf and sends batches with our own sender."""

    def __init__(self, resource: Resource, scope: str, version: str, sender: Sender) -> None:
        self._resource = dict(resource.attributes)
        self._schema_url = resource.schema_url or ""
        self._scope = scope
        self._version = version
        self._sender = sender
        self._batch: list[bytes] = []

    def add(self, record: RecordData) -> None:
        self._batch.append(encode_log_record(record))

    def add_encoded(self, record: RecordData, prefix: bytes, skip: int, tail: bytes | None) -> None:
        """Add a record whose first ``skip`` attributes are already encoded as ``prefix`` (and the
        rest as ``tail``, when given)."""
        self._batch.append(encode_log_record(record, prefix, skip, tail))

    def pending(self) -> int:
        return len(self._batch)

    def encode(self) -> bytes:
        """The pending batch as one ExportLogsServiceRequest."""
        return encode_request(
            self._resource,
            self._scope,
            self._version,
            self._batch,
            resource_schema_url=self._schema_url,
        )

    @property
    def problem(self) -> str | None:
        """What the endpoint's last failure looked like, for loss reports."""
        return self._sender.problem

    def send(self, body: bytes) -> str:
        """Send an encoded request (a fresh batch or a spooled one)."""
        return self._sender.send(body)

    def deliver(self) -> str:
        return self.send(self.encode())

    def discard(self) -> None:
        self._batch = []

    def close(self) -> None:
        self._sender.close()
