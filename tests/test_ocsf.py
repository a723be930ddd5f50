"""OCSF events (secret_audit.ocsf, docs/ocsf.md): valid against the official schema, every field accounted
for, the collector's OTTL doing what the Python does, hashed names still hashed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from ocsf_json_schema import get_ocsf_schema

import ottl_eval
from ocsf_schema import VERSIONS, problems
from secret_audit import contract, ocsf
from secret_audit.hashing import hash_name

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_732_528_800_123_456_789
HASHED = hash_name("db-password", key=b"k" * 32)


def chain(specs: list[tuple[str, dict[str, Any], str]], resource: dict[str, Any] | None = None,
          scope: str = "secret_audit") -> list[dict[str, Any]]:
    """Records in the store's event shape, chained on one stream as the producer would."""
    out, prev, stream = [], contract.GENESIS, "6f1c1a52-1c1e-4d2a-9d36-3f1fb1f5a001"
    for seq, (name, attrs, body) in enumerate(specs, 1):
        attrs = dict(attrs)
        number, text = contract.severity_for(attrs.get(contract.OUTCOME))
        trace, span = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7") if name == "secret.access" else ("", "")
        at = T0 + seq * 1_000_000_007
        prev = contract.stamp(attrs, stream, seq, prev, at, name, number, body, trace, span)
        out.append({"time_unix_nano": str(at), "observed_unix_nano": str(at + 250_000), "event_name": name,
                    "severity_number": number, "severity_text": text, "body": body, "trace_id": trace,
                    "span_id": span, "attributes": attrs,
                    "resource": resource or {"service.name": "payments", "service.instance.id": stream,
                                             "service.namespace": "team-a", "deployment.environment": "prod"},
                    "scope_name": scope, "scope_version": "0.1.0"})
    return out


def access(operation: str, action: str, outcome: str = "success", **extra: Any) -> tuple[str, dict[str, Any], str]:
    attrs = {"secret.name": HASHED, "secret.source": "redis", "secret.resource": "redis://10.0.0.5:6379/0",
             "audit.operation": operation, "audit.action": action, "audit.outcome": outcome,
             "audit.duration_ms": 0.42, "audit.access_path": "internal", "audit.principal": "redis:default",
             **extra}
    return "secret.access", attrs, f"Secret accessed: {HASHED} from redis (0.42ms)"


SAMPLES = chain([
    access("read", "GET", **{"audit.result": "found", "enduser.id": "alice@example.com", "client.address": "203.0.113.7",
                                             "audit.access_path": "external"}),
    access("write", "SET", **{"audit.result": "created", "audit.count": 3}),
    access("write", "HSET", **{"audit.result": "updated", "client.address": "2001:db8::7"}),
    access("delete", "DEL", **{"audit.result": "deleted"}),
    access("metadata", "TTL"),
    access("admin", "DisableSecretVersion", **{"secret.source": "gcp_secret_manager", "secret.version": "3",
                                               "secret.resource": f"projects/p/locations/eu/secrets/{HASHED}/versions/3",
                                               "audit.principal": "serviceAccount:app@p.iam.gserviceaccount.com"}),
    access("unknown", "JSON.GET", "not_found"),
    access("read", "GET", "denied", **{"error.type": "redis.exceptions.NoPermissionError", "audit.error": "NOPERM"}),
    access("read", "GET", "error", **{"error.type": "redis.exceptions.ResponseError", "client.address": "not-an-ip",
                                      "audit.error": "WRONGTYPE Operation against a key holding the wrong kind of value"}),
    ("audit.dropped", {"audit.dropped.reason": "export_failed", "audit.dropped.count": 12,
                       "audit.dropped.first_sequence": 2, "audit.dropped.last_sequence": 13, "audit.outcome": "error"},
     "Audit records lost: 12 (export_failed)"),
    ("audit.refused", {"audit.refused.reason": "unavailable", "audit.refused.count": 2, "audit.outcome": "error",
                       "audit.principal": "secret-service@demo"},
     "Secret calls refused: 2 (fail-closed, audit records could not be made durable)"),
    ("audit.checkpoint", {"audit.checkpoint.head_sequence": 11, "audit.checkpoint.head_hash": "a" * 64,
                          "audit.checkpoint.records": 11, "audit.checkpoint.key_id": "1f0c9a2b3d4e5f60",
                          "audit.checkpoint.prev": "0" * 64, "audit.checkpoint.final": True,
                          "audit.checkpoint.signature": "b" * 128, "audit.outcome": "success"},
     "Final audit checkpoint: records up to sequence 11 signed by key 1f0c9a2b3d4e5f60"),
]) + chain([
    ("audit.query", {"secret.source": "secret-audit-store", "audit.operation": "read",
                     "audit.action": "GET /api/audit-logs", "audit.outcome": "success",
                     "audit.principal": "token:3f2a:auditor", "audit.access_path": "external",
                     "client.address": "127.0.0.1", "audit.query.filters": "secret=x",
                     "audit.query.result_count": 3, "audit.tenant": "team-a"}, "Audit log queried by auditor: 3 events"),
    ("audit.query", {"secret.source": "secret-audit-store", "audit.operation": "read", "audit.action": "GET /stats",
                     "audit.outcome": "denied", "audit.principal": "anonymous", "audit.access_path": "external",
                     "audit.refused.count": 40, "audit.refused.minute": "2024-11-25T10:00Z",
                     "audit.refused.reasons": '{"unknown token":40}'}, "Audit store refused 40 unauthenticated calls"),
], {"service.name": "secret-audit-store", "service.instance.id": "s"}, "secret_audit.store") + chain([
    ("audit.login", {"audit.principal": "token:9:ingest", "audit.outcome": 1, "user": "bob", "mfa": True,
                     "attempts": 2, "ratio": 0.5}, "User bob logged in"),
    ("audit.policy.change", {"audit.outcome": "approved", "audit.sequence.note": "x"}, "Policy changed"),
], {"service.name": "custom"}, "secret_audit.custom") + chain([
    ("audit.stream.continued", {"audit.stream.predecessor.id": "6f1c1a52-1c1e-4d2a-9d36-3f1fb1f5a001",
                                "audit.stream.predecessor.sequence": 11, "audit.outcome": "error"},
     "Audit stream continues stream 6f1c1a52-1c1e-4d2a-9d36-3f1fb1f5a001 after its sequence 11: the audit "
     "agent died"),
])


def ocsf_statements() -> list[str]:
    cfg = yaml.safe_load((ROOT / "collector-config/otelcol-audit.yaml").read_text())
    return cfg["processors"]["transform/ocsf"]["log_statements"][0]["statements"]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_kind_of_record_is_a_valid_ocsf_event(version):
    kinds = {r["event_name"] for r in SAMPLES}
    assert kinds >= {*contract.RESERVED_EVENT_NAMES, "audit.login"}
    for record in SAMPLES:
        event = ocsf.event(record)
        assert problems(event, version) == [], (record["event_name"], record["attributes"])


def test_the_schema_check_refuses_what_ocsf_refuses():
    """The validator is not vacuous: each of these breaks the schema and is caught."""
    good = ocsf.event(SAMPLES[0])
    assert problems(good) == []
    broken = [
        {**good, "secret_name": "x"},                                   # not an OCSF attribute
        {**good, "activity_id": 7},                                     # not an API Activity activity
        {**good, "time": "yesterday"},                                  # a timestamp is an integer
        {**good, "message": None},                                      # null is not a value
        {**good, "src_endpoint": {"ip": "not-an-ip"}},                  # ip_t has a pattern
        {k: v for k, v in good.items() if k != "actor"},                # actor is required
        {**good, "actor": {}},                                          # actor needs one of its parts
        {**good, "type_name": "API Activity: Delete"},                  # the caption must match type_uid
        {**good, "metadata": {**good["metadata"], "product": {"name": "x"}}},  # vendor_name is required
    ]
    for event in broken:
        assert problems(event), event


def test_classes_activities_and_statuses():
    by = {(r["event_name"], r["attributes"].get("audit.action")): ocsf.event(r) for r in SAMPLES}
    assert {k: (e["class_uid"], e["activity_id"], e.get("status_id")) for k, e in by.items()} == {
        ("secret.access", "GET"): (6003, 2, 2),  # the last GET (error) wins the key
        ("secret.access", "SET"): (6003, 1, 1),
        ("secret.access", "HSET"): (6003, 3, 1),
        ("secret.access", "DEL"): (6003, 4, 1),
        ("secret.access", "TTL"): (6003, 2, 1),
        ("secret.access", "DisableSecretVersion"): (6003, 99, 1),
        ("secret.access", "JSON.GET"): (6003, 0, 2),
        ("audit.dropped", None): (0, 99, 2),
        ("audit.refused", None): (0, 99, 2),
        ("audit.checkpoint", None): (0, 99, 1),
        ("audit.stream.continued", None): (0, 99, 2),
        ("audit.query", "GET /api/audit-logs"): (6003, 2, 1),
        ("audit.query", "GET /stats"): (6003, 2, 2),
        ("audit.login", None): (0, 99, None),  # an outcome that is not a string is not a status
        ("audit.policy.change", None): (0, 99, 99),
    }
    read = ocsf.event(SAMPLES[0])
    assert read["actor"] == {"user": {"name": "redis:default"},
                             "process": {"name": "payments", "uid": SAMPLES[0]["attributes"]["audit.stream.id"]}}
    assert read["src_endpoint"] == {"svc_name": "payments", "ip": "203.0.113.7"}
    assert read["resources"] == [{"name": HASHED, "uid": "redis://10.0.0.5:6379/0", "type": "secret"}]
    assert read["api"] == {"operation": "GET", "service": {"name": "redis"}}
    assert read["metadata"]["uid"] == SAMPLES[0]["attributes"]["audit.event.id"]
    assert read["metadata"]["original_time"] == SAMPLES[0]["time_unix_nano"]
    assert read["time"] == int(SAMPLES[0]["time_unix_nano"]) // 1_000_000
    assert read["metadata"]["tenant_uid"] == "team-a"
    assert read["unmapped"]["enduser.id"] == "alice@example.com"
    refusals = ocsf.event(SAMPLES[13])
    assert (refusals["count"], refusals["severity"]) == (40, "Medium")
    dropped = ocsf.event(SAMPLES[9])
    assert (dropped["count"], dropped["status_detail"], dropped["severity"]) == (12, "export_failed", "High")
    error = ocsf.event(SAMPLES[8])
    assert "ip" not in error["src_endpoint"]  # not an IP address: kept in unmapped, not a schema failure
    assert error["unmapped"]["client.address"] == "not-an-ip"
    assert error["api"]["response"] == {"error": "redis.exceptions.ResponseError",
                                        "error_message": SAMPLES[8]["attributes"]["audit.error"]}


def _values(tree: Any) -> list[Any]:
    if isinstance(tree, dict):
        return [v for x in tree.values() for v in _values(x)]
    if isinstance(tree, list):
        return [v for x in tree for v in _values(x)]
    return [tree]


def test_every_field_of_a_record_is_in_its_event():
    """Each attribute is either mapped (its exact value appears in the event) or kept in unmapped, and so
    are the body, trace, span, time, severity and resource: nothing of the record is silently lost."""
    for record in SAMPLES:
        event = ocsf.event(record)
        values = _values({k: v for k, v in event.items() if k != "unmapped"})
        for key, value in record["attributes"].items():
            if key not in event["unmapped"]:
                assert value in values, (record["event_name"], key)
                assert type(value) in (str, int), (record["event_name"], key)
            else:
                assert event["unmapped"][key] == value
        assert event["message"] == record["body"]
        assert event["metadata"]["event_code"] == record["event_name"]
        assert event["metadata"]["original_time"] == record["time_unix_nano"]
        assert event["unmapped"]["otlp.severity_number"] == record["severity_number"]
        assert event["metadata"]["log_level"] == record["severity_text"]
        assert event["unmapped"]["otlp.resource"] == record["resource"]
        assert event["metadata"].get("correlation_uid", "") == record["trace_id"]
        assert event["unmapped"].get("otlp.span_id", "") == record["span_id"]
        assert event["metadata"]["log_provider"] == record["scope_name"]


def test_hashed_names_stay_hashed():
    for record in SAMPLES[:9]:
        text = ocsf.json_line(record)
        assert "db-password" not in text
        assert HASHED in text


def test_the_collectors_ottl_makes_the_same_events_as_python():
    """transform/ocsf, run by a stand-in OTTL evaluator (tests/ottl_eval.py; no collector with the
    transform processor runs here), builds each record's body exactly as secret_audit.ocsf.event."""
    statements = ocsf_statements()
    for record in SAMPLES:
        ctx = ottl_eval.run(statements, record)
        assert ctx["log"]["body"] == ocsf.event(record), record["event_name"]
        assert ctx["log"]["attributes"] == record["attributes"]  # the record's fields stay as they were


def test_the_ottl_guards_every_set_and_uses_ocsf_ip_pattern():
    """A set() from a missing attribute writes null, which OCSF refuses; and the IP check is OCSF's own."""
    schema_ip = get_ocsf_schema(version=ocsf.OCSF_VERSION)["types"]["ip_t"]["regex"]
    assert ocsf.IP_PATTERN == schema_ip
    joined = "\n".join(ocsf_statements())
    assert '"' + schema_ip.replace("\\", "\\\\") + '"' in joined
    bare = {"event_name": "secret.access", "attributes": {}, "time_unix_nano": "1", "severity_number": 9}
    body = ottl_eval.run(ocsf_statements(), bare)["log"]["body"]
    assert None not in _values(body)
    assert body == ocsf.event(bare)


def test_query_lines_are_sorted_json():
    line = ocsf.json_line(SAMPLES[0])
    assert orjson.loads(line) == ocsf.event(SAMPLES[0])
    keys = re.findall(r'\{"([a-z_]+)"', line)
    assert keys[0] == "activity_id"  # keys sorted: two copies of one trail compare byte for byte
    assert list(ocsf.events(SAMPLES[:2])) == [ocsf.event(r) for r in SAMPLES[:2]]


def test_the_mapping_page_accounts_for_every_documented_field_and_names_the_versions():
    """docs/ocsf.md names every attribute of docs/semantic-conventions.md's record tables, every attribute
    the store writes into its own records, and every field of the store's events."""
    page = (ROOT / "docs/ocsf.md").read_text()
    conventions = (ROOT / "docs/semantic-conventions.md").read_text()
    records = conventions.split("## The audit span")[0]
    attributes = set(re.findall(r"^\| `((?:secret|audit|error|enduser|client)\.[a-z_.]+)` \|", records, re.M))
    # the store's own records (its metrics' attributes are not record attributes)
    store = "".join(p.read_text() for p in (ROOT / "src/secret_audit/store").glob("*.py") if p.name != "_metrics.py")
    attributes |= {a for a in re.findall(r'"(audit\.[a-z_]+\.[a-z_.]+)"', store) if not a.endswith(".")}
    assert len(attributes) >= 40
    assert not {a for a in attributes if f"`{a}`" not in page}
    # the store's event fields: its columns (typed ones are copies of attributes) and what it adds
    fields = set(re.findall(r'^\s+"([a-z_]+)": .*row\[', (ROOT / "src/secret_audit/store/_rows.py").read_text(), re.M))
    assert {"id", "received_at", "integrity", "scope_name", "observed_unix_nano"} <= fields
    assert not {f for f in fields if f"`{f}`" not in page}
    assert f"mapping version | **{ocsf.MAPPING_VERSION}**" in page
    assert f"OCSF version | **{ocsf.OCSF_VERSION}**" in page
    assert f'"version": "{ocsf.OCSF_VERSION}"' in "\n".join(ocsf_statements())
