"""The agent's audit spans as OTLP bytes, not SDK spans: encoded from a slot's ids and records, batched.

With ``OTEL_PYTHON_SECRET_AUDIT_SPANS_VIA=agent`` and the app's traces exporter OTLP over HTTP/protobuf
or gRPC (``OTEL_TRACES_EXPORTER=otlp`` with ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` ``http/protobuf``
or ``grpc``, the SDK's default; gRPC through a ``grpcio`` channel, the request's bytes as they are),
the agent writes each audit span's protobuf ``Span`` itself (what the SDK's span would be: ids,
parent, times, name, kind, attributes, status; ``tests/test_agent_span_otlp.py`` holds the bytes to
the SDK's) and one thread ships them (to ``/v1/traces``, or TraceService/Export) grouped by resource,
bounded as the SDK's batch processor is (``OTEL_BSP_*``): no tracer provider, span objects or SDK
queue in the agent (issue 19's memory goal).
A span dropped (queue full, export refused or failed) is counted (``stats()["spans_dropped"]``) and
said once on stderr; spans are not records: no record ever waits for, or is dropped for, a span.
"""

from __future__ import annotations

import os
import struct
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from secret_audit._internal.otlp import encode_key_values, encode_request_framed, frame_record, ld
from secret_audit._internal.shapes import SCOPE, span_start, worst
from secret_audit.version import __version__

__all__ = ["SpanShipper", "encode_lone_span", "encode_span", "native_traces", "span_of", "traces_protocol"]

_pack_q = struct.Struct("<Q").pack
_pack_i = struct.Struct("<I").pack
# Span.flags (field 16, fixed32) as the SDK's encoder writes them: the parent's remoteness known, and remote.
_FLAGS_ROOT = b"\x85\x01" + _pack_i(0x100)
_FLAGS_REMOTE_PARENT = b"\x85\x01" + _pack_i(0x300)
_KIND_INTERNAL = b"\x30\x01"  # Span.kind (field 6): SPAN_KIND_INTERNAL
_STATUS_UNSET = b"\x7a\x00"  # Span.status (field 15): present and empty, as the SDK's encoder sets it
_NAMES: dict[str, bytes] = {}


def span_of(records: list[dict[str, Any]]) -> tuple[str, dict[str, Any], str | None]:
    """The audit span's name, attributes (in the SDK span's order) and error description (None: no error).

    As ``RecordBuilder.span_ids`` makes it: started with the records' common facts, then a lone record
    lends it all its attributes (the SDK moves a key set again to the end), an error or denial its status.
    """
    name, attrs = span_start(records)
    if len(records) == 1:
        for key, value in records[0].items():
            attrs.pop(key, None)
            attrs[key] = value
    if worst(records) in ("error", "denied"):
        return name, attrs, str(records[0].get("error.type") or "")
    return name, attrs, None


def _status(error: str | None) -> bytes:
    """Span.status: unset (present, empty), or an error with its description."""
    if error is None:
        return _STATUS_UNSET
    return ld(b"\x7a", (ld(b"\x12", error.encode("utf-8")) if error else b"") + b"\x18\x02")


def encode_span(
    trace_id: int, span_id: int, parent: int, start_ns: int, end_ns: int, records: list[dict[str, Any]]
) -> bytes:
    """One audit span's ``Span`` message (without its field tag), byte for byte the SDK encoder's."""
    name, attrs, error = span_of(records)
    name_field = _NAMES.get(name)
    if name_field is None:
        name_field = ld(b"\x2a", name.encode("utf-8"))
        if len(_NAMES) < 64:
            _NAMES[name] = name_field
    status = _status(error)
    return b"".join((
        b"\x0a\x10", trace_id.to_bytes(16, "big"),
        b"\x12\x08", span_id.to_bytes(8, "big"),
        b"\x22\x08" + parent.to_bytes(8, "big") if parent else b"",
        name_field,
        _KIND_INTERNAL,
        b"\x39" + _pack_q(start_ns) if start_ns else b"",
        b"\x41" + _pack_q(end_ns) if end_ns else b"",
        encode_key_values(b"\x4a", attrs),
        status,
        _FLAGS_REMOTE_PARENT if parent else _FLAGS_ROOT,
    ))


_DURATION_HEAD = encode_key_values(b"\x4a", {"audit.duration_ms": 0.0})[:-8]  # the attribute, but its double
_pack_d = struct.Struct("<d").pack
_LONE: dict[bytes, tuple[bytes, bytes, bytes]] = {}  # a lone record's span pieces, by its encoded attributes
_LONE_LIMIT = 1024


def encode_lone_span(
    trace_id: int, span_id: int, parent: int, start_ns: int, end_ns: int, attrs: Mapping[str, Any],
    key: bytes, fields: bytes = b"",
) -> bytes:
    """``encode_span`` of an access with one record of static attributes ``attrs`` (``key``: their encoding,
    the shape's), its name, attributes but the duration, and status made once per shape; ``fields``: the
    encoded attributes the record got after its duration (its stream fields, once stamped)."""
    pieces = _LONE.get(key)
    if pieces is None:
        name, span_attrs, error = span_of([{**attrs, "audit.duration_ms": 0.0}])
        head = ld(b"\x2a", name.encode("utf-8")) + _KIND_INTERNAL
        attributes = encode_key_values(b"\x4a", span_attrs)  # the duration last: cut, written per span
        pieces = (head, attributes[:-len(_DURATION_HEAD) - 8], _status(error))
        if error is None and len(_LONE) < _LONE_LIMIT:  # an error's text is one access's: not kept
            _LONE[key] = pieces
    head, attributes, status = pieces
    return b"".join((
        b"\x0a\x10", trace_id.to_bytes(16, "big"),
        b"\x12\x08", span_id.to_bytes(8, "big"),
        b"\x22\x08" + parent.to_bytes(8, "big") if parent else b"",
        head,
        b"\x39" + _pack_q(start_ns) if start_ns else b"",
        b"\x41" + _pack_q(end_ns) if end_ns else b"",
        attributes, _DURATION_HEAD, _pack_d((end_ns - start_ns) / 1e6), fields,
        status,
        _FLAGS_REMOTE_PARENT if parent else _FLAGS_ROOT,
    ))


def _env(env: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return ""


# Set, these keep the SDK's span path: span limits; the SDK's HTTP session and gRPC credential hooks.
_SDK_ONLY = (
    "OTEL_SPAN_", "OTEL_ATTRIBUTE_", "OTEL_PYTHON_EXPORTER_OTLP_HTTP_", "OTEL_PYTHON_EXPORTER_OTLP_GRPC_",
)
# Our gRPC channel trusts the system's roots only: a CA or client certificate keeps the SDK's exporter.
_GRPC_SDK_ONLY = tuple(f"OTEL_EXPORTER_OTLP_{signal}{name}" for signal in ("", "TRACES_")
                       for name in ("CERTIFICATE", "CLIENT_KEY", "CLIENT_CERTIFICATE"))


def traces_protocol(env: Mapping[str, str] | None = None) -> str | None:
    """``http/protobuf`` or ``grpc`` when the env's only traces exporter is OTLP, configured as we send
    it (the SDK's default protocol, gRPC, included: the distro's default); None otherwise.

    Anything else (console, zipkin, several exporters, http/json, deflate, a credential provider or a
    certificate for gRPC, span limits, the SDK disabled) keeps the SDK's span path, which honours it.
    """
    env = os.environ if env is None else env
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    protocol = _env(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    if names == ["otlp_proto_http"]:
        protocol = "http/protobuf"
    elif names == ["otlp_proto_grpc"]:
        protocol = "grpc"
    elif names != ["otlp"] or protocol not in ("http/protobuf", "grpc"):
        return None
    compression = _env(env, "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION").lower()
    sdk_only = [name for name in env if name.startswith(_SDK_ONLY)]
    if protocol == "grpc":
        sdk_only += [name for name in _GRPC_SDK_ONLY if env.get(name, "").strip()]
    disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    if compression not in ("", "none", "gzip") or sdk_only or disabled:
        return None
    return protocol


def native_traces(env: Mapping[str, str] | None = None) -> bool:
    """True when the agent sends the audit spans itself (``traces_protocol``), not through the SDK."""
    return traces_protocol(env) is not None


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    """An ``OTEL_BSP_*`` integer as the SDK reads it: a bad or non-positive value means the default."""
    try:
        value = int(env.get(name, "") or default)
    except ValueError:
        return default
    return value if value > 0 else default


class SpanShipper:
    """The agent's one queue and thread for every app's audit spans, bounded as the SDK's batch processor."""

    _shared: Any = None
    _lock = threading.Lock()

    @classmethod
    def shared(cls) -> SpanShipper:
        """The agent's shipper, made at the first span (every stream's spans share its queue and thread)."""
        with cls._lock:
            if cls._shared is None:
                from secret_audit._internal.senders import build_sender

                sender = build_sender(traces_protocol() or "http/protobuf", None, None, signal="traces")
                cls._shared = SpanShipper(sender, os.environ)
            return cls._shared  # type: ignore[no-any-return]

    @classmethod
    def dropped_so_far(cls) -> int:
        """Spans the agent's shipper dropped so far (0 before its first span)."""
        shipper = cls._shared
        return int(shipper.dropped) if shipper is not None else 0

    def __init__(self, sender: Any, env: Mapping[str, str]) -> None:
        self.sender = sender
        self.max_queue = _positive(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self.batch = min(_positive(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512), self.max_queue)
        self.delay = _positive(env, "OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self.deadline = _positive(env, "OTEL_BSP_EXPORT_TIMEOUT", 30000) / 1000
        self.dropped = 0
        self._said: set[str] = set()
        # Spans wait framed (ScopeSpans field 2) in one buffer per resource, not as a Python object each:
        # thousands of small objects held for seconds pin pymalloc's arenas long after they are sent.
        self._open: dict[str, bytearray] = {}  # the batch being filled, by resource key
        self._open_count = 0
        self._ready: list[tuple[dict[str, bytearray], int]] = []  # full batches, oldest first
        self._queued = 0  # spans in the open and ready batches: at most max_queue
        self._resources: dict[str, dict[str, Any]] = {}  # the resources' attributes, by key
        self._cond = threading.Condition()
        self._busy = 0  # spans taken from the queue and not yet sent (or dropped)
        self._thread: threading.Thread | None = None

    def add(self, resource: str, attributes: Mapping[str, Any] | None, span: bytes) -> None:
        """Queue one span of the resource keyed ``resource``; dropped (counted, said once) when full."""
        with self._cond:
            if self._queued >= self.max_queue:
                self._drop(1, f"its span queue was full (OTEL_BSP_MAX_QUEUE_SIZE={self.max_queue}): "
                              "raise it, or lower OTEL_BSP_SCHEDULE_DELAY")
                return
            framed = self._open.get(resource)
            if framed is None:
                framed = self._open[resource] = bytearray()
                if resource not in self._resources:
                    self._resources[resource] = dict(attributes or {})
            framed += frame_record(span)
            self._queued += 1
            self._open_count += 1
            if self._open_count >= self.batch:
                self._ready.append((self._open, self._open_count))
                self._open, self._open_count = {}, 0
                self._cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="secret-audit-spans", daemon=True)
                self._thread.start()

    def _drop(self, n: int, cause: str) -> None:
        self.dropped += n
        if cause not in self._said:
            self._said.add(cause)
            sys.stderr.write(f"otel-secret-audit: the audit agent dropped {n} audit span(s): {cause}; "
                             "audit records are not affected (stats()['spans_dropped'] counts every span "
                             "dropped).\n")

    def flush(self, timeout: float) -> bool:
        """Send what is queued now; True once it is sent or dropped within ``timeout`` seconds."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._queued or self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.notify()
                self._cond.wait(min(left, 0.05))
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._ready:
                    self._cond.wait(self.delay)  # a full batch, a flush, or the schedule's delay
                if self._ready:
                    taken, n = self._ready.pop(0)
                else:
                    taken, n = self._open, self._open_count
                    self._open, self._open_count = {}, 0
                self._queued -= n
                self._busy = n
            if n:
                self._send(taken, n)
            taken = {}  # not held while waiting for the next batch
            with self._cond:
                self._busy = 0
                self._cond.notify_all()

    def _send(self, taken: dict[str, bytearray], n: int) -> None:
        """One ExportTraceServiceRequest for the batch (a ResourceSpans per resource), retried."""
        # ResourceSpans and ScopeSpans are laid out as ResourceLogs and ScopeLogs are, field for field
        body = b"".join(encode_request_framed(self._resources[resource], SCOPE, __version__, framed)
                        for resource, framed in taken.items())
        end, pause = time.monotonic() + self.deadline, 1.0
        while True:
            result = self.sender.send(body)
            if result == "ok":
                return
            if result != "retry" or time.monotonic() + pause > end:
                break
            time.sleep(pause)
            pause *= 2
        with self._cond:
            self._drop(n, f"its traces endpoint {self.sender.endpoint} did not take them "
                                   f"({self.sender.problem or result})")


def _forget_in_child() -> None:
    """A forked child's shipper is its own: the parent's thread is not copied, nor its spans to send."""
    SpanShipper._shared = None
    SpanShipper._lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
