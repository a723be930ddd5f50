"""Command families beyond the basics, classified against the real server's behaviour."""

from __future__ import annotations

import pytest
import redis

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
    r.bitfield(key).get("u8", 0).execute()
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
