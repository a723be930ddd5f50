"""Build chained audit records exactly as the producer does, for tests that need many or odd ones.

``write_copy`` writes the collector's file copy of OTLP requests: one OTLP/JSON ExportLogsServiceRequest
per line, as protobuf's JSON mapping yields it with the OTLP/JSON rules (hex trace and span ids,
integer enums). That is the file exporter's format; no collector here can write it (see FACTS.md), so
the tests do.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
import uuid
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from secret_audit import contract


def chained(count: int, *, stream: str | None = None, start_seq: int = 1, prev: str = contract.GENESIS,
            secret: str = "db-password", tenant: str | None = None, **extra: Any) -> list[dict[str, Any]]:
    """Records as dicts (the otlp_receiver shape), chained from prev."""
    stream = stream or str(uuid.uuid4())
    out = []
    now = time.time_ns()
    for i in range(count):
        seq = start_seq + i
        attrs: dict[str, Any] = {
            "secret.name": secret,
            "secret.source": "redis",
            "secret.resource": "redis://127.0.0.1:6379/0",
            "audit.operation": "read",
            "audit.action": "GET",
            "audit.outcome": "success",
            "audit.result": "found",
            "audit.duration_ms": 0.25 + i / 1000,
            "audit.principal": "svc-payments",
            "enduser.id": "alice@example.com",
            "client.address": "203.0.113.7",
            "audit.access_path": "external",
            **extra,
            "audit.event.id": f"{stream}:{seq}",
            "audit.stream.id": stream,
            "audit.sequence": seq,
            "audit.chain.prev": prev,
        }
        rec: dict[str, Any] = {
            "time_unix_nano": now + i * 1000,
            "observed_unix_nano": now + i * 1000 + 5,
            "severity_number": 9,
            "severity_text": "INFO",
            "event_name": "secret.access",
            "body": f"Secret accessed: {secret} from redis (0.25ms)",
            "trace_id": uuid.uuid4().hex,
            "span_id": uuid.uuid4().hex[:16],
            "attributes": attrs,
            "resource": {"service.name": "payments", "service.instance.id": "i-1",
                         **({"service.namespace": tenant} if tenant else {})},
        }
        rehash(rec)
        prev = rec["attributes"]["audit.chain.hash"]
        out.append(rec)
    return out


def rehash(rec: dict[str, Any]) -> str:
    """Recompute a record's chain hash in place (as a forger who knows the algorithm would)."""
    digest = contract.chain_hash(
        contract.canonical_bytes(
            time_unix_nano=rec["time_unix_nano"], event_name=rec["event_name"],
            severity_number=rec["severity_number"], body=rec["body"], trace_id=rec["trace_id"],
            span_id=rec["span_id"], attributes=rec["attributes"],
        )
    )
    rec["attributes"]["audit.chain.hash"] = digest
    return digest


def backdate(recs: list[dict[str, Any]], time_unix_nano: int, prev: str = contract.GENESIS) -> str:
    """Move records to another time (1 ns apart) and chain them again from ``prev``; the last hash."""
    for i, r in enumerate(recs):
        r["time_unix_nano"] = time_unix_nano + i
        r["attributes"]["audit.chain.prev"] = prev
        prev = rehash(r)
    return prev


def _any(v: Any) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    return AnyValue(string_value=str(v))


def to_protobuf(records: list[dict[str, Any]]) -> bytes:
    """Encode records as one ExportLogsServiceRequest, one resource group per distinct resource."""
    req = ExportLogsServiceRequest()
    groups: dict[tuple[Any, ...], Any] = {}
    for r in records:
        key = tuple(sorted(r["resource"].items()))
        if key not in groups:
            rl = req.resource_logs.add()
            for k, v in r["resource"].items():
                rl.resource.attributes.append(KeyValue(key=k, value=_any(v)))
            sl = rl.scope_logs.add()
            sl.scope.name = "secret_audit"
            groups[key] = sl
        lr = groups[key].log_records.add()
        lr.time_unix_nano = r["time_unix_nano"]
        lr.observed_time_unix_nano = r["observed_unix_nano"]
        lr.severity_number = r["severity_number"]
        lr.severity_text = r["severity_text"]
        lr.event_name = r["event_name"]
        if r["body"] is not None:
            lr.body.string_value = r["body"]
        if r["trace_id"]:
            lr.trace_id = bytes.fromhex(r["trace_id"])
            lr.span_id = bytes.fromhex(r["span_id"])
        for k, v in r["attributes"].items():
            lr.attributes.append(KeyValue(key=k, value=_any(v)))
    return req.SerializeToString()


def _json_any(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    return {"stringValue": str(v)}


def to_json(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The OTLP/JSON form (int attributes as strings, hex ids), one resource group per record."""
    return {
        "resourceLogs": [
            {
                "resource": {"attributes": [{"key": k, "value": _json_any(v)} for k, v in r["resource"].items()]},
                "scopeLogs": [{
                    "scope": {"name": "secret_audit"},
                    "logRecords": [{
                        "timeUnixNano": str(r["time_unix_nano"]),
                        "observedTimeUnixNano": str(r["observed_unix_nano"]),
                        "severityNumber": r["severity_number"],
                        "severityText": r["severity_text"],
                        "eventName": r["event_name"],
                        "body": {"stringValue": r["body"]},
                        "traceId": r["trace_id"],
                        "spanId": r["span_id"],
                        "attributes": [{"key": k, "value": _json_any(v)} for k, v in r["attributes"].items()],
                    }],
                }],
            }
            for r in records
        ]
    }


def store_legacy(conn: Any, records: list[dict[str, Any]]) -> None:
    """Store chained records as the code of schema versions 1..6 did, for upgrade tests on an old schema:
    rows built by the ingest's own row builder, each stream registered with its head in audit_streams."""
    from secret_audit.store._otlp import decode_protobuf_python
    from secret_audit.store._prepare import (
        P_ROW,
        P_SEQUENCE,
        ROW_CLAIMED,
        ROW_STREAM,
        ROW_TENANT,
        ROW_TIME,
        finish,
        prepare,
    )
    from secret_audit.store._rows import COLUMNS, time_of_stamp
    from secret_audit.store.migrations import ensure_partitions

    prepared = []
    for i, rec in enumerate(decode_protobuf_python(to_protobuf(records))):
        p = prepare(i, rec, None)
        assert not isinstance(p, str), p
        assert finish(p) is None
        prepared.append(p)
    ensure_partitions(conn, {(t.year, t.month) for t in (time_of_stamp(p[P_ROW][ROW_TIME]) for p in prepared)})
    cols = ", ".join(COLUMNS)
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy(f"COPY audit_events ({cols}) FROM STDIN") as copy:
            for p in prepared:
                row = list(p[P_ROW][1:])
                row[0] = time_of_stamp(row[0])
                row[COLUMNS.index("attributes")] = row[COLUMNS.index("attributes")][1:].decode()
                row[COLUMNS.index("resource")] = row[COLUMNS.index("resource")][1:].decode()
                copy.write_row(row)
        for p in sorted(prepared, key=lambda p: p[P_SEQUENCE]):
            row = p[P_ROW]
            cur.execute(
                "INSERT INTO audit_streams (stream_id, tenant, service_name, last_sequence, last_hash, "
                "record_count) VALUES (%s, %s, %s, %s, %s, 1) ON CONFLICT (stream_id) DO UPDATE SET "
                "last_sequence = EXCLUDED.last_sequence, last_hash = EXCLUDED.last_hash, "
                "record_count = audit_streams.record_count + 1",
                (row[ROW_STREAM], row[ROW_TENANT], row[1 + COLUMNS.index("service_name")], p[P_SEQUENCE],
                 row[ROW_CLAIMED]),
            )


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
