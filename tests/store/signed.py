"""A signed trail made for real: the Redis instrumentation with a signing key, exporting to a running store.

The ASGI tee keeps every request body the store received, so that a test can write the collector's
file copy of the same records (``copy_lines``): one OTLP/JSON ExportLogsServiceRequest per line, as
protobuf's JSON mapping yields it with the OTLP/JSON rules (hex trace and span ids, integer enums).
That is the file exporter's format; no collector here can write it (see FACTS.md), so the test does.
"""

from __future__ import annotations

import base64
import gzip
import json
import urllib.parse
from pathlib import Path
from typing import Any

import redis

from conftest import retire_pipeline
from secret_audit._internal.config import load_settings
from secret_audit._internal.pipeline import peek_pipeline


class Tee:
    """ASGI middleware that keeps each /v1/logs request body (decompressed) the store was sent."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/logs":
            await self.app(scope, receive, send)
            return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if "protobuf" in headers.get("content-type", ""):
            self.bodies.append(gzip.decompress(body) if headers.get("content-encoding") == "gzip" else body)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def produce(url: str, token: str, redis_url: str, key: Path | None, *, accesses: int = 10,
            every: int = 4, close: bool = True, **env: str) -> str:
    """Audit ``accesses`` real GETs with the signing key; ``close`` shuts down cleanly (final checkpoint).

    Returns the stream id. Without ``close`` the pipeline stays open, as a live producer's would.
    """
    from secret_audit.redis import RedisSecretAuditInstrumentor

    settings = load_settings({
        "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT": f"{url}/v1/logs",
        "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_HEADERS": "authorization=" + urllib.parse.quote(f"Bearer {token}"),
        "OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS": "20",
        "OTEL_PYTHON_SECRET_AUDIT_CHECKPOINT_RECORDS": str(every),
        "OTEL_PYTHON_SECRET_AUDIT_CHECKPOINT_INTERVAL_MS": "600000",
        **({"OTEL_PYTHON_SECRET_AUDIT_SIGNING_KEY_FILE": str(key)} if key is not None else {}),
        **env,
    })
    inst = RedisSecretAuditInstrumentor()
    inst.instrument(settings=settings)
    client = redis.Redis.from_url(redis_url)
    try:
        for i in range(accesses):
            client.get(f"secret:signed-{i % 3}")
            pipeline = peek_pipeline()
            assert pipeline is not None
            if i % 2:
                assert pipeline.flush(10)  # several drains: checkpoints land between records
        stream = pipeline.stream_id
        assert pipeline.flush(10)
    finally:
        client.close()
        inst.uninstrument()
        if close:
            retire_pipeline()
    return stream


def copy_lines(bodies: list[bytes]) -> list[str]:
    """The file exporter's uncompressed format for these requests: one OTLP/JSON request per line."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    lines = []
    for body in bodies:
        doc = json_format.MessageToDict(ExportLogsServiceRequest.FromString(body), use_integers_for_enums=True)
        for rl in doc.get("resourceLogs", []):
            for sl in rl.get("scopeLogs", []):
                for lr in sl.get("logRecords", []):
                    for k in ("traceId", "spanId"):
                        if k in lr:
                            lr[k] = base64.b64decode(lr[k]).hex()
        lines.append(json.dumps(doc, separators=(",", ":")))
    return lines


def write_copy(path: Path, bodies: list[bytes], *, gz: bool = False) -> Path:
    """Write the copy to ``path`` (gzip-compressed with ``gz``), as a rotated and compressed file would be."""
    data = "".join(line + "\n" for line in copy_lines(bodies)).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def checkpoint_after(records: list[dict[str, Any]], signer: Any, *, prev: str, covered: int,
                     final: bool = False) -> dict[str, Any]:
    """A signed checkpoint appended to ``records`` (the records.py shape), made with the public contract."""
    from secret_audit import contract

    head = records[-1]
    attrs = head["attributes"]
    seq, stream = attrs["audit.sequence"] + 1, attrs["audit.stream.id"]
    at = head["time_unix_nano"] + 1
    fields = {"head_sequence": seq - 1, "head_hash": attrs["audit.chain.hash"], "records": seq - 1 - covered,
              "key_id": signer.key_id, "prev": prev, "final": final}
    signature = signer.sign(contract.checkpoint_bytes(stream_id=stream, sequence=seq, time_unix_nano=at, **fields))
    cp_attrs: dict[str, Any] = {"audit.outcome": "success", **{f"audit.checkpoint.{k}": v for k, v in fields.items()},
                                "audit.checkpoint.signature": signature}
    rec = {**head, "time_unix_nano": at, "observed_unix_nano": at, "event_name": "audit.checkpoint",
           "body": "Audit checkpoint", "trace_id": "", "span_id": "", "attributes": cp_attrs}
    contract.stamp(cp_attrs, stream, seq, attrs["audit.chain.hash"], at, "audit.checkpoint", 9, "Audit checkpoint")
    records.append(rec)
    return rec
