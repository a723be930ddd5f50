"""Command families beyond the basics, classified against the real server's behaviour."""

from __future__ import annotations

import pytest
import redis

from conftest import instrumented
from secret_audit._internal import redis_commands
from secret_audit._internal.pipeline import peek_pipeline
from secret_audit._internal.redis_commands import Command
from servers import valkey_server


def recs(audit):
    return [
        (x["secret.name"], x["audit.operation"], x["audit.action"], x["audit.outcome"], x.get("audit.result"))
        for x in audit.attrs()
    ]


def test_expire_conditions_do_not_claim_not_found(audit, r, key):
    r.set(key, "v", ex=100)
    audit.clear()
    assert r.expire(key, 50, nx=True) is False  # has a TTL already: condition not met
    assert r.expire(key, 500, gt=True) is True
    assert r.expire(key + ":missing", 50) is False
    assert r.pexpire(key, 400_000, lt=True) is True
    assert [g[3:] for g in recs(audit)] == [
        ("success", None),
        ("success", "updated"),
        ("not_found", None),
        ("success", "updated"),
    ]


def test_restore_with_and_without_replace(audit, r, key):
    r.set(key, "v")
    payload = r.dump(key)
    audit.clear()
    r.restore(key + ":new", 0, payload)
    r.restore(key + ":new", 0, payload, replace=True)
    assert [g[2:] for g in recs(audit)] == [("RESTORE", "success", "created"), ("RESTORE", "success", None)]


def test_set_ifeq_and_delifeq(audit, r, key):
    r.set(key, "v1")
    audit.clear()
    assert r.execute_command("SET", key, "v2", "IFEQ", "v1") is True
    assert r.execute_command("SET", key, "v3", "IFEQ", "nope") is None
    assert r.execute_command("DELIFEQ", key, "nope") == 0
    assert r.execute_command("DELIFEQ", key, "v2") == 1
    assert [g[1:] for g in recs(audit)] == [
        ("write", "SET", "success", "updated"),
        ("write", "SET", "success", "unchanged"),
        ("delete", "DELIFEQ", "success", "unchanged"),
        ("delete", "DELIFEQ", "success", "deleted"),
    ]


def test_msetex_names_only_its_keys(audit, r, key):
    assert r.execute_command("MSETEX", 2, key + ":a", "1", "plain:" + key.split(":")[1], "2", "EX", 100)
    assert [g[:3] for g in recs(audit)] == [(key + ":a", "write", "MSETEX")]


def test_bitmap_commands(audit, r, key):
    r.setbit(key, 7, 1)
    r.getbit(key, 7)
    r.bitcount(key)
    r.bitpos(key, 1)
    r.bitfield(key).set("u8", 0, 1).execute()
    r.bitfield_ro(key, "u8", 0)
    r.set(key + ":b", "x")
    r.bitop("AND", key + ":dest", key, key + ":b")
    assert [g[1:3] for g in recs(audit)] == [
        ("write", "SETBIT"),
        ("read", "GETBIT"),
        ("read", "BITCOUNT"),
        ("read", "BITPOS"),
        ("write", "BITFIELD"),
        ("read", "BITFIELD_RO"),
        ("write", "SET"),
        ("write", "BITOP"),
        ("read", "BITOP"),
        ("read", "BITOP"),
    ]


def test_bitop_names_destination_and_sources(audit, r, key):
    r.set(key + ":a", "x")
    r.set(key + ":b", "y")
    audit.clear()
    r.bitop("OR", key + ":dest", key + ":a", "plain:" + key.split(":")[1], key + ":b")
    assert [g[:2] for g in recs(audit)] == [
        (key + ":dest", "write"),
        (key + ":a", "read"),
        (key + ":b", "read"),
    ]


def test_sort_reads_and_stores(audit, r, key):
    r.rpush(key, 3, 1, 2)
    audit.clear()
    assert r.sort(key) == [b"1", b"2", b"3"]
    assert r.sort(key, store=key + ":sorted") == 3
    assert r.execute_command("SORT_RO", key) == [b"1", b"2", b"3"]
    assert [g[:3] for g in recs(audit)] == [
        (key, "read", "SORT"),
        (key, "read", "SORT"),
        (key + ":sorted", "write", "SORT"),
        (key, "read", "SORT_RO"),
    ]


def test_hash_field_expiry_commands(audit, r, key):
    r.hset(key, mapping={"a": "1", "b": "2"})
    audit.clear()
    r.hexpire(key, 100, "a")
    r.hpexpire(key, 100_000, "b")
    r.httl(key, "a")
    r.hpttl(key, "a")
    r.hexpiretime(key, "a")
    r.hpexpiretime(key, "a")
    r.hpersist(key, "a")
    r.hexpireat(key, 4_000_000_000, "a")
    r.hpexpireat(key, 4_000_000_000_000, "b")
    assert [g[1:3] for g in recs(audit)] == [
        ("write", "HEXPIRE"),
        ("write", "HPEXPIRE"),
        ("metadata", "HTTL"),
        ("metadata", "HPTTL"),
        ("metadata", "HEXPIRETIME"),
        ("metadata", "HPEXPIRETIME"),
        ("write", "HPERSIST"),
        ("write", "HEXPIREAT"),
        ("write", "HPEXPIREAT"),
    ]


def test_migrate_to_another_real_server_is_a_read(audit, r, key):
    r.set(key + ":a", "v")
    r.set(key + ":b", "v")
    audit.clear()
    with valkey_server() as (host, port):
        r.migrate(host, port, key + ":a", 0, 5000, copy=True)
        r.migrate(host, port, [key + ":b", "plain:" + key.split(":")[1]], 0, 5000)
        other = redis.Redis(host, port)
        assert other.get(key + ":a") == b"v"
        assert other.get(key + ":b") == b"v"
        other.close()
    assert r.exists(key + ":b") == 0
    assert [g[:3] for g in recs(audit)][:2] == [
        (key + ":a", "read", "MIGRATE"),
        (key + ":b", "read", "MIGRATE"),
    ]


class TestEveryKeyAudited:
    """With ``*`` every key is a secret: option words must not be mistaken for keys."""

    @pytest.fixture
    def audit_env(self):
        return {
            "OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS": "20",
            "OTEL_PYTHON_SECRET_AUDIT_REDIS_KEY_PATTERNS": "*",
        }

    def test_lcs_options_are_not_keys(self, audit, r, key):
        r.mset({key + ":a": "ohmytext", key + ":b": "mynewtext"})
        audit.clear()
        r.lcs(key + ":a", key + ":b", len=True)
        r.lcs(key + ":a", key + ":b", idx=True, minmatchlen=2, withmatchlen=True)
        got = recs(audit)
        assert [g[0] for g in got] == [key + ":a", key + ":b"] * 2
        assert {g[1] for g in got} == {"read"}


def _unknown_env(**extra):
    return {"OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS": "20", "OTEL_PYTHON_SECRET_AUDIT_SPANS": "all", **extra}


def test_a_command_outside_the_table_is_audited_as_unknown_on_its_first_argument():
    """A server whose HGETALL is renamed VAULT.READ: the command works, the table does not know it."""
    from secret_audit.redis import RedisSecretAuditInstrumentor

    with valkey_server("--rename-command", "HGETALL", "VAULT.READ") as (host, port):
        with instrumented(_unknown_env(), RedisSecretAuditInstrumentor()) as audit:
            client = redis.Redis(host, port)
            client.hset("secret:vault", "f", "v")
            audit.clear()
            assert client.execute_command("VAULT.READ", "secret:vault") in ([b"f", b"v"], {b"f": b"v"})
            client.execute_command("VAULT.READ", "plain:cache")
            with pytest.raises(redis.exceptions.ResponseError, match="unknown command"):
                client.execute_command("MYMODULE.GET", "secret:other", "secret:value-looking-arg")
            client.close()
            records = audit.records()
            spans = audit.spans()
    assert [
        (x.attributes["secret.name"], x.attributes["audit.operation"], x.attributes["audit.action"],
         x.attributes["audit.outcome"]) for x in records
    ] == [
        ("secret:vault", "unknown", "VAULT.READ", "success"),
        ("secret:other", "unknown", "MYMODULE.GET", "error"),
    ]
    assert records[0].body.startswith("Secret touched by an unclassified command: secret:vault in redis (")
    assert records[1].body.startswith("Secret access failed: secret:other in redis: unknown command")
    assert {s.name for s in spans} == {"secret.unknown"}


def test_unknown_commands_can_be_ignored(redis_url):
    from secret_audit.redis import RedisSecretAuditInstrumentor

    env = _unknown_env(OTEL_PYTHON_SECRET_AUDIT_REDIS_UNKNOWN_COMMANDS="ignore")
    with instrumented(env, RedisSecretAuditInstrumentor()) as audit:
        client = redis.Redis.from_url(redis_url)
        with pytest.raises(redis.exceptions.ResponseError):
            client.execute_command("MYMODULE.GET", "secret:other")
        client.get("secret:still-audited")
        client.close()
        assert [x["audit.action"] for x in audit.attrs()] == ["GET"]


class TestKeylessAndListing:
    """With ``*`` every key is a secret, yet a command that names no key records nothing."""

    @pytest.fixture
    def audit_env(self):
        return _unknown_env(OTEL_PYTHON_SECRET_AUDIT_REDIS_KEY_PATTERNS="*")

    def test_keyless_commands_are_never_audited(self, audit, r, key):
        r.ping()
        r.echo(key)
        r.publish(key, "message")
        r.execute_command("SPUBLISH", key, "message")
        r.client_setname("secret-name")
        r.config_get("maxmemory")
        r.execute_command("CLIENT", "SETNAME", "other")
        assert r.command_getkeys("GET", key) == [key]
        r.dbsize()
        with pytest.raises(redis.exceptions.ResponseError):  # not a Sentinel: refused, but keyless
            r.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", key)
        with pytest.raises(redis.exceptions.AuthenticationError):
            r.execute_command("AUTH", "user", key)
        assert audit.attrs() == []


def test_listing_commands_audit_only_the_secret_names_they_return(audit, redis_url, key):
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/7")
    plain = "cache:" + key.split(":")[1]
    try:
        client.flushdb()
        client.set(key, "v")
        client.set(plain, "v")
        audit.clear()
        assert sorted(client.keys("*")) == sorted([key.encode(), plain.encode()])
        _cursor, names = client.scan(0, count=1000)
        assert sorted(names) == sorted([key.encode(), plain.encode()])
        client.delete(plain)
        assert client.randomkey() == key.encode()
        client.delete(key)
        assert client.randomkey() is None
        assert client.keys("*") == []
    finally:
        client.close()
    got = [(x["secret.name"], x["audit.operation"], x["audit.action"], x.get("audit.result")) for x in audit.attrs()]
    assert got == [
        (key, "metadata", "KEYS", "found"),
        (key, "metadata", "SCAN", "found"),
        (key, "metadata", "RANDOMKEY", "found"),
        (key, "delete", "DEL", "deleted"),
    ]


def test_a_failing_classification_never_breaks_the_call(audit, r, key, monkeypatch):
    """Key extraction, reply reading and name listing that raise: the caller sees redis-py's reply."""

    def boom(*_args):
        raise RuntimeError("classification exploded")

    r.rpush(key, "a", "b")
    table = dict(redis_commands.COMMANDS)
    table["LPOP"] = Command(boom, table["LPOP"].result)
    table["RPOP"] = Command(table["RPOP"].keys, boom)
    table["KEYS"] = table["KEYS"]._replace(result=boom)
    monkeypatch.setattr(redis_commands, "COMMANDS", table)
    before = peek_pipeline().stats()["call_errors"]
    audit.clear()
    assert r.lpop(key) == b"a"
    assert r.rpop(key) == b"b"
    assert r.keys(key) == []
    with r.pipeline() as pipe:
        pipe.lpush(key, "c").rpop(key).keys(key)
        assert pipe.execute() == [1, b"c", []]
    assert peek_pipeline().stats()["call_errors"] == before + 1
    got = [(x["audit.action"], x["audit.outcome"], x.get("audit.result")) for x in audit.attrs()]
    assert got == [("RPOP", "success", None), ("LPUSH", "success", "created"), ("RPOP", "success", None)]


def test_commands_that_wipe_every_key_are_audited_on_each_pattern(redis_url):
    # FLUSHALL, FLUSHDB and SWAPDB name no key but remove or move every secret: one record per
    # configured pattern, sync, in a pipeline and async; a private server, since FLUSHALL wipes all
    import asyncio

    import redis.asyncio as aredis

    from secret_audit.redis import RedisSecretAuditInstrumentor

    env = {"OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS": "20",
           "OTEL_PYTHON_SECRET_AUDIT_REDIS_KEY_PATTERNS": "secret:*,vault/*"}
    with valkey_server() as (host, port), instrumented(env, RedisSecretAuditInstrumentor()) as audit:
        client = redis.Redis(host=host, port=port, db=3)
        client.set("secret:a", "v")
        audit.clear()
        assert client.flushdb() is True
        assert client.get("secret:a") is None
        assert client.swapdb(3, 4) is True
        pipe = client.pipeline()
        pipe.flushall()
        assert pipe.execute() == [True]
        client.dbsize()  # keyless and touching nothing: never audited

        async def flush_async() -> None:
            aclient = aredis.Redis(host=host, port=port)
            assert await aclient.flushdb() is True
            await aclient.aclose()

        asyncio.run(flush_async())
        patterns = ("secret:*", "vault/*")
        expected = [(p, "delete", "FLUSHDB", "success", "deleted") for p in patterns]
        expected += [("secret:a", "read", "GET", "not_found", None)]
        expected += [(p, "write", "SWAPDB", "success", "updated") for p in patterns]
        expected += [(p, "delete", "FLUSHALL", "success", "deleted") for p in patterns]
        expected += [(p, "delete", "FLUSHDB", "success", "deleted") for p in patterns]
        assert recs(audit) == expected
        client.close()


def test_a_failed_flush_is_audited_as_an_error_on_each_pattern(audit, redis_url):
    with valkey_server("--rename-command", "FLUSHDB", "") as (host, port):
        client = redis.Redis(host=host, port=port)
        with pytest.raises(redis.exceptions.ResponseError):
            client.flushdb()
        client.close()
    rows = recs(audit)
    assert [r[:3] for r in rows] == [(p, "delete", "FLUSHDB") for p in audit.settings.redis_key_patterns]
    assert {r[3] for r in rows} == {"error"}
    assert {r[4] for r in rows} == {None}
