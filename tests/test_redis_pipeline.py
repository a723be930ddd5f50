"""Sync redis-py pipelines, transactional or not, against the real server."""

from __future__ import annotations

import pytest
import redis
import redis.exceptions

FIELDS = ("secret.name", "audit.operation", "audit.action", "audit.outcome", "audit.result")


def pick(rec, *names):
    return tuple(rec.get(n) for n in names)


@pytest.mark.parametrize("transaction", [True, False])
def test_pipeline_exact_records(audit, r, key, transaction):
    r.set(key + ":old", "o")
    audit.clear()
    tracer = audit.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("request") as parent, r.pipeline(transaction=transaction) as pipe:
        pipe.set(key, "v")
        pipe.get(key)
        pipe.get("plain:not-audited")
        pipe.get(key + ":missing")
        pipe.mget([key, "plain:x", key + ":missing"])
        pipe.hset(key + ":h", mapping={"a": "1", "b": "2"})
        pipe.delete(key + ":old")
        replies = pipe.execute()
    assert replies == [True, b"v", None, None, [b"v", None, None], 2, 1]
    recs = audit.attrs()
    assert [pick(r, *FIELDS) for r in recs] == [
        (key, "write", "SET", "success", None),
        (key, "read", "GET", "success", "found"),
        (key + ":missing", "read", "GET", "not_found", None),
        (key, "read", "MGET", "success", "found"),
        (key + ":missing", "read", "MGET", "not_found", None),
        (key + ":h", "write", "HSET", "success", "created"),
        (key + ":old", "delete", "DEL", "success", "deleted"),
    ]
    seqs = [r["audit.sequence"] for r in recs]
    assert seqs == list(range(seqs[0], seqs[0] + len(recs)))
    spans = {s.context.span_id: s for s in audit.spans() if s.name != "request"}
    records = audit.records()
    assert spans
    # every record points at an exported audit span, and every audit span hangs under the request
    assert {rec.span_id for rec in records} <= set(spans)
    assert {s.parent.span_id for s in spans.values()} == {parent.get_span_context().span_id}
    assert {rec.trace_id for rec in records} == {parent.get_span_context().trace_id}


def test_empty_and_non_secret_pipelines_are_not_audited(audit, r):
    with r.pipeline() as pipe:
        assert pipe.execute() == []
        pipe.set("plain:a", "1").get("plain:a")
        assert pipe.execute() == [True, b"1"]
    assert audit.attrs() == []


def test_watch_and_immediate_commands_are_audited(audit, r, key):
    r.set(key, "1")
    audit.clear()
    with r.pipeline() as pipe:
        pipe.watch(key)
        current = pipe.get(key)  # immediate_execute_command while watching
        assert current == b"1"
        pipe.multi()
        pipe.set(key, int(current) + 1)
        pipe.get(key)
        assert pipe.execute() == [True, b"2"]
    recs = audit.attrs()
    assert [pick(r, "secret.name", "audit.action", "audit.outcome", "audit.result") for r in recs] == [
        (key, "WATCH", "success", None),
        (key, "GET", "success", "found"),
        (key, "SET", "success", None),
        (key, "GET", "success", "found"),
    ]
    assert recs[0]["audit.operation"] == "metadata"


def test_watch_error_records_every_queued_secret_command_as_error(audit, r, key, redis_url):
    r.set(key, "1")
    other = redis.Redis.from_url(redis_url)
    audit.clear()
    with r.pipeline() as pipe:
        pipe.watch(key)
        other.set(key, "changed")  # also audited
        pipe.multi()
        pipe.set(key, "mine")
        with pytest.raises(redis.exceptions.WatchError):
            pipe.execute()
    other.close()
    recs = audit.attrs()
    assert [pick(r, "audit.action", "audit.outcome", "error.type") for r in recs] == [
        ("WATCH", "success", None),
        ("SET", "success", None),
        ("SET", "error", "redis.exceptions.WatchError"),
    ]
    assert r.get(key) == b"changed"


@pytest.mark.parametrize("transaction", [True, False])
def test_raise_on_error_false_gives_per_command_outcomes(audit, r, key, transaction):
    r.hset(key + ":h", "f", "v")
    audit.clear()
    with r.pipeline(transaction=transaction) as pipe:
        pipe.set(key, "v")
        pipe.get(key + ":h")  # WRONGTYPE at execution time
        pipe.get(key)
        replies = pipe.execute(raise_on_error=False)
    assert replies[0] is True
    assert isinstance(replies[1], redis.exceptions.ResponseError)
    assert replies[2] == b"v"
    recs = audit.attrs()
    assert [pick(r, "secret.name", "audit.outcome", "audit.result", "error.type") for r in recs] == [
        (key, "success", None, None),
        (key + ":h", "error", None, "redis.exceptions.ResponseError"),
        (key, "success", "found", None),
    ]
    assert recs[1]["audit.error"] == "WRONGTYPE Operation against a key holding the wrong kind of value"


@pytest.mark.parametrize("transaction", [True, False])
def test_exception_path_reraises_unchanged_and_records_the_failure(audit, r, key, transaction):
    r.hset(key + ":h", "f", "v")
    audit.clear()
    with r.pipeline(transaction=transaction) as pipe:
        pipe.set(key, "v")
        pipe.get(key + ":h")  # WRONGTYPE: the server still runs the other commands
        pipe.get(key)
        with pytest.raises(redis.exceptions.ResponseError) as info:
            pipe.execute()
    assert type(info.value) is redis.exceptions.ResponseError
    assert str(info.value).startswith("Command # 2 (GET ")
    assert "WRONGTYPE" in str(info.value)
    assert r.get(key) == b"v"  # the SET before the failure did happen
    [failing] = [x for x in audit.attrs() if x["secret.name"] == key + ":h"]
    assert failing["audit.outcome"] == "error"
    assert failing["error.type"] == "redis.exceptions.ResponseError"
    # the annotated message quotes the command (and so could quote a value): never copied
    assert failing["audit.error"] == "WRONGTYPE Operation against a key holding the wrong kind of value"
    [record] = [x for x in audit.records() if x.attributes["secret.name"] == key + ":h"]
    [span] = [s for s in audit.spans() if s.context.span_id == record.span_id]
    assert span.status.status_code.name == "ERROR"


@pytest.mark.parametrize("transaction", [True, False])
def test_exception_path_blames_only_the_failing_command(audit, r, key, transaction):
    """The server ran every command; the exception names the first failure; each gets its outcome."""
    r.hset(key + ":h", "f", "v")
    r.set(key + ":old", "o")
    audit.clear()
    with r.pipeline(transaction=transaction) as pipe:
        pipe.set(key, "v")
        pipe.get(key + ":h")  # WRONGTYPE
        pipe.get(key + ":old")
        pipe.incr(key + ":old")  # not an integer: a second failure, after the first
        pipe.get(key + ":missing")
        with pytest.raises(redis.exceptions.ResponseError) as info:
            pipe.execute()
    assert str(info.value).startswith("Command # 2 (GET ")
    outcomes = [
        (x["secret.name"], x["audit.action"], x["audit.outcome"], x.get("audit.result"), x.get("audit.error"))
        for x in audit.attrs()
    ]
    assert outcomes == [
        (key, "SET", "success", None, None),
        (key + ":h", "GET", "error", None, "WRONGTYPE Operation against a key holding the wrong kind of value"),
        (key + ":old", "GET", "success", "found", None),
        (key + ":old", "INCRBY", "error", None, "value is not an integer or out of range"),
        (key + ":missing", "GET", "not_found", None, None),
    ]


def test_transaction_aborted_at_queue_time_records_errors_for_all(audit, r, key):
    with r.pipeline(transaction=True) as pipe:
        pipe.set(key, "v")
        pipe.execute_command("GET", key, "extra-arg")  # wrong arity: EXECABORT, nothing runs
        with pytest.raises(redis.exceptions.ResponseError):
            pipe.execute()
    assert r.exists(key) == 0
    recs = [x for x in audit.attrs() if x["audit.action"] != "EXISTS"]
    assert [pick(x, "audit.action", "audit.outcome") for x in recs] == [
        ("SET", "error"),
        ("GET", "error"),
    ]


def test_connection_error_in_pipeline_is_recorded(audit, key):
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from servers import free_port

    client = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    with client.pipeline() as pipe:
        pipe.get(key)
        pipe.set(key, "v")
        with pytest.raises(redis.exceptions.ConnectionError):
            pipe.execute()
    recs = audit.attrs()
    assert [pick(x, "audit.action", "audit.outcome", "error.type") for x in recs] == [
        ("GET", "error", "redis.exceptions.ConnectionError"),
        ("SET", "error", "redis.exceptions.ConnectionError"),
    ]


def test_pipeline_scripts_audit_declared_keys(audit, r, key):
    script = r.register_script("return redis.call('GET', KEYS[1])")
    r.set(key, "v")
    audit.clear()
    with r.pipeline() as pipe:
        script(keys=[key], client=pipe)
        assert pipe.execute() == [b"v"]
    recs = audit.attrs()
    assert [pick(x, "secret.name", "audit.action", "audit.operation") for x in recs] == [
        (key, "EVALSHA", "write"),
    ]
