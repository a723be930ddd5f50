"""Alerts from the store: real producers, a real store, a local webhook receiver checking signatures."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from conftest import retire_pipeline
from secret_audit import AuditUnavailableError, audit_context
from secret_audit._internal.config import ConfigurationError, load_settings
from secret_audit.redis import RedisSecretAuditInstrumentor
from secret_audit.store._webhooks import Sender, sign
from secret_audit.store.config import AlertSettings, Webhook, load_store_config
from secret_audit.store.service import Store
from webhook_receiver import new_secret, webhook_receiver

from .conftest import opened_store, serve
from .records import chained, to_protobuf

PB = {"Content-Type": "application/x-protobuf"}
ENV = "OTEL_PYTHON_SECRET_AUDIT_STORE_"


def alert_env(rx: Any, **extra: str) -> dict[str, str]:
    return {ENV + "ALERT_WEBHOOK_URL": rx.url, ENV + "ALERT_WEBHOOK_SECRET": rx.secret,
            ENV + "ALERT_BURST_THRESHOLD": "3", ENV + "ALERT_RETRIES": "3", **extra}


@contextlib.contextmanager
def alerting_store(db_url: str, env: dict[str, str], wrap: Any = None) -> Iterator[tuple[Store, str]]:
    config = load_store_config({ENV + "POOL_SIZE": "4", **env})
    with opened_store(config, db_url) as store, serve(store, wrap) as url:
        yield store, url


@contextlib.contextmanager
def producer(url: str, token: str, **extra: str) -> Iterator[Any]:
    """A real Redis instrumentation exporting to the store; yields its pipeline."""
    from secret_audit._internal.pipeline import peek_pipeline

    env = {"OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT": url + "/v1/logs",
           "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_HEADERS": "authorization=" + urllib.parse.quote(f"Bearer {token}"),
           "OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS": "20",
           "OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR": "off",  # a failed export is a loss, as the alerts expect
           **extra}
    inst = RedisSecretAuditInstrumentor()
    inst.instrument(settings=load_settings(env))
    try:
        yield peek_pipeline()
    finally:
        inst.uninstrument()
        retire_pipeline()


def sent_counts(store: Store, kind: str, count: int) -> dict[str, Any]:
    """The alert stats once ``count`` alerts of ``kind`` are counted sent: the receiver sees a 200 before the sender counts it."""
    deadline = time.monotonic() + 10
    while store.alerts.stats()["sent"].get(kind, 0) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return store.alerts.stats()


def failing_ingest(count: int) -> Any:
    """An ASGI wrapper answering the first ``count`` OTLP requests with 503, as a store restart would."""
    left = [count]

    def wrap(app: Any) -> Any:
        async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"] == "/v1/logs" and left[0] > 0:
                left[0] -= 1
                await send({"type": "http.response.start", "status": 503, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            await app(scope, receive, send)

        return asgi

    return wrap


def test_a_burst_is_alerted_signed_and_retried_until_delivered(db_url, tokens, redis_url):
    canary = "canary-" + secrets.token_hex(16)
    with webhook_receiver() as rx, alerting_store(db_url, alert_env(rx)) as (store, url):
        rx.fail_next = 2  # the receiver is briefly down: the first two attempts get 503
        with producer(url, tokens["ingest"]) as pipeline:
            client = redis.Redis.from_url(redis_url)
            client.set("secret:canary-burst", canary)
            with audit_context(enduser="bob@example.com"):
                assert client.get("secret:canary-burst") == canary.encode()
            with audit_context(enduser="mallory@example.net", client_address="192.0.2.66"):
                for i in range(4):
                    assert client.get(f"secret:guess-{i}") is None
            assert pipeline.flush(10)
        by_user = rx.wait_for("burst", by="principal")
        by_address = rx.wait_for("burst", by="client.address")
        stats = sent_counts(store, "burst", 2)  # the receiver sees the 200 before the sender counts it
    (alert,) = by_user
    assert alert["details"]["principal"] == "mallory@example.net"
    assert alert["details"]["count"] == 3
    assert alert["details"]["threshold"] == 3
    assert alert["details"]["outcomes"] == {"not_found": 3}
    assert alert["details"]["secrets"] == ["secret:guess-0", "secret:guess-1", "secret:guess-2"]
    assert alert["severity"] == "high"
    assert alert["type"] == "secret_audit.alert"
    assert by_address[0]["details"]["client.address"] == "192.0.2.66"
    # one alert per window: the fourth guess did not alert again
    assert len(rx.wait_for("burst", count=3, timeout=1)) == 2
    attempts = [a for a in rx.attempts if a["headers"]["webhook-id"] == alert["id"]]
    others = [a for a in rx.attempts if a["headers"]["webhook-id"] != alert["id"]]
    assert [a["status"] for a in attempts][-1] == 200
    assert all(a["verified"] for a in rx.attempts)  # every attempt, retries included, is signed
    assert len(attempts) + len(others) == len(rx.attempts)
    assert sum(a["status"] == 503 for a in rx.attempts) == 2
    for a in attempts:
        assert abs(int(a["headers"]["webhook-timestamp"]) - time.time()) < 60
    # no alert ever carries a value, though the canary's own read was alerted on (first seen)
    assert rx.wait_for("first_seen", **{"secret.name": "secret:canary-burst"})
    assert canary.encode() not in rx.raw()
    assert stats["sent"]["burst"] == 2
    assert not stats["failed"]
    assert not stats["dropped"]


def test_a_tampered_body_or_a_wrong_key_does_not_verify(db_url, tokens):
    with webhook_receiver() as rx:
        key = new_secret()
        with webhook_receiver(key) as good:
            pass
        body = b'{"kind": "burst"}'
        headers = {"webhook-id": "a1", "webhook-timestamp": str(int(time.time()))}
        from secret_audit.store.config import _signing_key

        headers["webhook-signature"] = sign(_signing_key("k", key), "a1", int(headers["webhook-timestamp"]), body)
        assert good.verifier.verify(body, headers) == {"kind": "burst"}
        with pytest.raises(Exception, match="signature"):
            good.verifier.verify(body.replace(b"burst", b"quiet"), headers)
        with pytest.raises(Exception, match="signature"):
            rx.verifier.verify(body, headers)  # signed with another key
    # a receiver that refuses the signature (401) is not retried: the alert is counted as failed
    with webhook_receiver() as rx:
        hook = Webhook(rx.url, _signing_key("k", new_secret()))
        sender = Sender(AlertSettings(webhooks=(hook,), retries=3))
        sender.send("burst", "m1", b"{}")
        sender.close()
        assert [a["status"] for a in rx.attempts] == [401]
        assert sender.stats()["failed"] == {"burst": 1}


def test_a_full_alert_queue_drops_and_counts(db_url):
    with webhook_receiver() as rx:
        rx.fail_next = 10**6
        from secret_audit.store.config import _signing_key

        hook = Webhook(rx.url, _signing_key("k", rx.secret))
        sender = Sender(AlertSettings(webhooks=(hook,), retries=20, queue_size=1))
        for i in range(5):
            sender.send("loss", f"m{i}", b"{}")
        stats = sender.stats()
        sender.close(timeout=1)
    assert stats["dropped"]["loss"] >= 3  # one in flight (retrying), one queued, the rest dropped


def lose_first_batch(url: str, token: str, redis_url: str) -> str:
    """Against a store that refuses the first request (failing_ingest(1)): a producer that does not
    retry loses it, and reports the loss in its next one. Returns the producer's stream id."""
    with producer(url, token, OTEL_PYTHON_SECRET_AUDIT_EXPORT_RETRY_TIMEOUT_MS="0") as pipeline:
        client = redis.Redis.from_url(redis_url)
        client.get("secret:lost-one")
        assert pipeline.flush(10)
        client.get("secret:kept-one")
        assert pipeline.flush(10)
        return str(pipeline.stream_id)


def test_losses_gaps_and_refusals_reported_by_producers_are_alerted(db_url, tokens, redis_url):
    with webhook_receiver() as rx, alerting_store(db_url, alert_env(rx), failing_ingest(1)) as (store, url):
        stream = lose_first_batch(url, tokens["ingest"], redis_url)
        (loss,) = rx.wait_for("loss")
        (gap,) = rx.wait_for("integrity")
    assert loss["details"]["audit.dropped.reason"] == "export_failed"
    assert loss["details"]["audit.dropped.first_sequence"] == 1
    assert loss["details"]["stream_id"] == stream
    assert gap["details"]["stream_id"] == stream
    assert gap["severity"] == "critical"
    assert [f["kind"] for f in gap["details"]["findings"]] == ["gap"]

    with webhook_receiver() as rx, alerting_store(db_url, alert_env(rx), failing_ingest(3)) as (store, url):
        with producer(url, tokens["ingest"], OTEL_PYTHON_SECRET_AUDIT_FAILURE_MODE="closed",
                      OTEL_PYTHON_SECRET_AUDIT_EXPORT_RETRY_TIMEOUT_MS="0",
                      OTEL_PYTHON_SECRET_AUDIT_PRINCIPAL="payments@prod"):
            client = redis.Redis.from_url(redis_url)
            with pytest.raises(AuditUnavailableError):
                client.get("secret:held-back")
            deadline = time.monotonic() + 20
            while not rx.wait_for("refusal", timeout=0.2) and time.monotonic() < deadline:
                with contextlib.suppress(AuditUnavailableError):
                    client.get("secret:held-back")  # once the store answers again, reads go through
        refusals = rx.wait_for("refusal")
    assert refusals[0]["details"]["principal"] == "payments@prod"
    assert refusals[0]["details"]["audit.refused.reason"] in ("not_durable", "unavailable")
    assert "refused" in refusals[0]["summary"]


def test_an_agent_that_died_is_alerted_with_the_streams_it_joins(db_url, tokens):
    """A producer's audit agent died: its app's new stream starts with audit.stream.continued, which the
    store alerts on (signed), naming both streams and where the dead one ends."""
    from .test_store_succession import post_to, successor_of

    before = chained(6)
    after = successor_of(before, 4, 2, 1)
    with webhook_receiver() as rx, alerting_store(db_url, alert_env(rx)) as (store, url):
        post_to(url, tokens["ingest"], before + after)
        (alert,) = rx.wait_for("agent_died")
        stats = sent_counts(store, "agent_died", 1)
    details = alert["details"]
    assert (details["audit.stream.predecessor.id"], details["audit.stream.predecessor.sequence"]) == (
        before[0]["attributes"]["audit.stream.id"], 4)
    assert details["stream_id"] == after[0]["attributes"]["audit.stream.id"]
    assert alert["severity"] == "high"
    assert "audit agent died" in alert["summary"]
    assert all(a["verified"] for a in rx.attempts)
    assert stats["sent"]["agent_died"] == 1


def test_first_seen_pairs_survive_a_restart_through_the_database(db_url, tokens, redis_url):
    def reads(url: str, *names: str) -> None:
        with producer(url, tokens["ingest"]) as pipeline:
            client = redis.Redis.from_url(redis_url)
            with audit_context(enduser="alice@example.com"):
                for name in names:
                    client.get(name)
            assert pipeline.flush(10)

    r = redis.Redis.from_url(redis_url)
    r.set("secret:first-a", "x")
    r.set("secret:first-b", "y")
    with webhook_receiver() as rx:
        with alerting_store(db_url, alert_env(rx, **{ENV + "ALERT_KINDS": "first_seen"})) as (store, url):
            reads(url, "secret:first-a", "secret:first-a")
            assert len(rx.wait_for("first_seen")) == 1
        # a new store process remembers nothing; the database does
        with alerting_store(db_url, alert_env(rx, **{ENV + "ALERT_KINDS": "first_seen"})) as (store, url):
            reads(url, "secret:first-a", "secret:first-b")
            seen = rx.wait_for("first_seen", count=3, timeout=3)
    assert [(a["details"]["enduser.id"], a["details"]["secret.name"]) for a in seen] == [
        ("alice@example.com", "secret:first-a"), ("alice@example.com", "secret:first-b")]


def test_a_head_mismatch_found_by_verify_is_alerted(db_url, tokens, owner):
    with webhook_receiver() as rx, alerting_store(db_url, alert_env(rx)) as (store, url):
        import httpx

        recs = chained(4)
        assert httpx.post(f"{url}/v1/logs", content=to_protobuf(recs),
                          headers={**PB, **tokens.header("ingest")}).status_code == 200
        owner.execute("SET session_replication_role = replica")
        owner.execute("DELETE FROM audit_events WHERE sequence = 4")  # a superuser cuts the tail
        owner.execute("SET session_replication_role = origin")
        resp = httpx.post(f"{url}/api/verify", headers=tokens.header("auditor"))
        assert resp.json()["ok"] is False
        (alert,) = rx.wait_for("integrity", source="verify")
    assert alert["details"]["kinds"] == {"head_mismatch": 1}


def test_store_denials_burst_by_principal(db_url, tokens):
    with webhook_receiver() as rx, alerting_store(db_url, alert_env(rx)) as (store, url):
        import httpx

        for _ in range(3):  # an ingest token trying to read the trail: 403, audited as denied
            assert httpx.get(f"{url}/api/audit-logs", headers=tokens.header("ingest")).status_code == 403
        (alert,) = rx.wait_for("burst", by="principal")
        sent_counts(store, "burst", 2)
        stats = httpx.get(f"{url}/stats", headers=tokens.header("auditor")).json()["alerts"]
    assert alert["details"]["outcomes"] == {"denied": 3}
    assert stats["sent"] == {"burst": 2}  # by principal and by client address
    assert (stats["failed"], stats["dropped"], stats["unchecked_records"]) == ({}, {}, 0)


@pytest.mark.parametrize(("env", "variable"), [
    ({ENV + "ALERT_WEBHOOK_URL": "http://127.0.0.1:9/x"}, "ALERT_WEBHOOK_URL"),
    ({ENV + "ALERT_WEBHOOK_URL": "ftp://x", ENV + "ALERT_WEBHOOK_SECRET": "k" * 16}, "ALERT_WEBHOOK_URL"),
    ({ENV + "ALERT_WEBHOOK_URL": "http://x", ENV + "ALERT_WEBHOOK_SECRET": "short"}, "ALERT_WEBHOOK_SECRET"),
    ({ENV + "ALERT_KINDS": "burst,fun"}, "ALERT_KINDS"),
    ({ENV + "ALERT_BURST_THRESHOLD": "0"}, "ALERT_BURST_THRESHOLD"),
    ({ENV + "ALERT_FILE": "/nonexistent/alerts.json"}, "ALERT_FILE"),
    ({ENV + "METRICS": "statsd"}, "METRICS"),
    ({ENV + "METRICS": "otlp"}, "METRICS"),  # no endpoint: it would post to the store's own port
])
def test_bad_alert_and_metrics_settings_stop_start_up(env, variable):
    with pytest.raises(ConfigurationError) as info:
        load_store_config(env)
    assert info.value.variable == ENV + variable
    assert "short" not in str(info.value) or variable != "ALERT_WEBHOOK_SECRET"


def test_alert_file_configures_several_webhooks(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(new_secret())
    path = tmp_path / "alerts.json"
    path.write_text(json.dumps({"webhooks": [
        {"url": "https://siem.example/hook", "secret_file": str(key_file), "kinds": ["integrity", "loss"]},
        {"url": "http://127.0.0.1:8080/chat", "secret": "a-chat-key-of-16+bytes"},
    ]}))
    config = load_store_config({ENV + "ALERT_FILE": str(path), ENV + "ALERT_BURST_WINDOW_S": "300",
                                ENV + "ALERT_TIMEOUT_MS": "2500", ENV + "ALERT_QUEUE_SIZE": "50",
                                ENV + "ALERT_WEBHOOK_URL": "https://pager.example/in",
                                ENV + "ALERT_WEBHOOK_SECRET_FILE": str(key_file)})
    pager, first, second = config.alerts.webhooks
    assert pager.secret == first.secret
    assert pager.kinds == config.alerts.kinds
    assert (first.url, first.kinds) == ("https://siem.example/hook", ("integrity", "loss"))
    assert second.kinds == ("integrity", "loss", "burst", "refusal", "first_seen", "agent_died")
    assert len(first.secret) == 24
    assert second.secret == b"a-chat-key-of-16+bytes"
    assert (config.alerts.burst_window_s, config.alerts.timeout_ms, config.alerts.queue_size) == (300, 2500, 50)
    assert load_store_config({ENV + "ALERT_KINDS": "none"}).alerts.kinds == ()
    assert "a-chat-key" not in repr(config)
