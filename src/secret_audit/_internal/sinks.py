"""Delivery's back ends: the interface, and the fast one that writes and sends OTLP bytes itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from secret_audit._internal.otlp import RecordData, encode_log_record, encode_request_framed, frame_record
from secret_audit._internal.senders import Sender

if TYPE_CHECKING:
    from secret_audit._internal.export import AnyResource

__all__ = ["FastSink", "Sink"]


class Sink:
    """Accumulates one batch of records, seals it into a payload and sends payloads.

    ``send`` returns a SendResult value. A back end that ``encodes`` takes each record's
    pre-encoded attribute bytes; one that is ``spoolable`` seals OTLP bytes, which the spool keeps.
    """

    encodes = False
    spoolable = False
    empty: Any = None  # the payload of an empty request, as the probe sends it
    problem: str | None = None
    # where ``courier.send`` puts each request's duration: None, the app's histogram (``meters``); an
    # agent's stream keeps them for its app (``export_timings``), whose histogram is in the app
    timings: Any = None

    def add(self, record: RecordData, prefix: bytes = b"", skip: int = 0, tail: bytes | None = None) -> None:
        """Add a record whose first ``skip`` attributes are already encoded as ``prefix`` (and the
        rest as ``tail``, when given); a back end that does not encode ignores them."""
        raise NotImplementedError

    def pending(self) -> int:
        raise NotImplementedError

    def seal(self) -> Any:
        """The pending batch as one payload; the back end starts a new batch."""
        raise NotImplementedError

    def send(self, payload: Any) -> str:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class FastSink(Sink):
    """Encodes each record once to protobuf and sends batches with our own sender."""

    encodes = True
    spoolable = True
    empty = b""  # an empty ExportLogsServiceRequest

    def __init__(self, resource: AnyResource, scope: str, version: str, sender: Sender) -> None:
        self._resource = dict(resource.attributes)
        self._schema_url = resource.schema_url or ""
        self._scope = scope
        self._version = version
        self._sender = sender
        # the pending records, each framed as a ScopeLogs field: pieces joined once, into the request (a
        # growing bytearray was copied again at each reallocation, a tenth of the agent's worker)
        self._batch: list[bytes | bytearray] = []
        self._pending = 0

    def add(self, record: RecordData, prefix: bytes = b"", skip: int = 0, tail: bytes | None = None) -> None:
        self._batch.append(frame_record(encode_log_record(record, prefix, skip, tail)))
        self._pending += 1

    def add_framed(self, stamp: Callable[[bytearray], int]) -> int:
        """Let ``stamp`` append records it encoded and framed itself (``Stream.stamp_slots``, all or
        none) straight onto the batch; how many it added."""
        out = bytearray()
        n = stamp(out)
        if out:
            self._batch.append(out)
        self._pending += n
        return n

    def pending(self) -> int:
        return self._pending

    def encode(self) -> bytes:
        """The pending batch as one ExportLogsServiceRequest."""
        return encode_request_framed(
            self._resource,
            self._scope,
            self._version,
            self._batch,
            resource_schema_url=self._schema_url,
        )

    def seal(self) -> bytes:
        body = self.encode()
        self._batch = []
        self._pending = 0
        return body

    @property
    def problem(self) -> str | None:  # type: ignore[override]
        """What the endpoint's last failure looked like, for loss reports."""
        return self._sender.problem

    def send(self, payload: bytes) -> str:
        """Send an encoded request (a fresh batch or a spooled one)."""
        return self._sender.send(payload)

    def close(self) -> None:
        self._sender.close()
