"""Live streams across store processes: what one process ingests reaches the others' subscribers."""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest

from secret_audit.store._live import CHANNEL, Announcement, announcements
from secret_audit.store.service import Store

from .conftest import live_stream, opened_store, serve
from .records import chained, to_protobuf

PB = {"Content-Type": "application/x-protobuf"}


@pytest.fixture
def other(db_url, store_config) -> Iterator[Store]:
    """A second store process on the same database (its own pool, bus and origin)."""
    with opened_store(store_config, db_url) as s:
        yield s


def wait_for(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def post(url: str, header: dict[str, str], records: list[dict[str, Any]]) -> None:
    assert httpx.post(f"{url}/v1/logs", content=to_protobuf(records), headers={**PB, **header}).status_code == 200


def test_a_stream_on_one_process_sees_what_every_process_ingests(store, other, tokens):
    with serve(store) as url_a, serve(other) as url_b:
        first, second = chained(2, secret="shared"), chained(2, secret="shared")
        with live_stream(url_b, tokens.header("auditor"), secret="shared", max_events=4) as got:
            wait_for(lambda: store.live is not None and store.live.wanted)
            post(url_a, tokens.header("ingest"), first)  # the other process
            post(url_b, tokens.header("ingest"), second)  # this one
    by_stream: dict[str, list[int]] = {}
    for event in got:
        by_stream.setdefault(event["stream_id"], []).append(event["sequence"])
    assert by_stream == {first[0]["attributes"]["audit.stream.id"]: [1, 2],
                         second[0]["attributes"]["audit.stream.id"]: [1, 2]}
    assert {e["secret_name"] for e in got} == {"shared"}


def test_a_tenant_stream_never_sees_another_tenants_rows_from_elsewhere(store, other, tokens):
    with serve(store) as url_a, serve(other) as url_b:
        with live_stream(url_b, tokens.header("acme-auditor"), max_events=2) as got:
            wait_for(lambda: store.live is not None and store.live.wanted)
            post(url_a, tokens.header("ingest"), chained(3, secret="theirs", tenant="globex"))
            post(url_a, tokens.header("ingest"), chained(2, secret="ours", tenant="acme"))
    assert [(e["tenant"], e["secret_name"]) for e in got] == [("acme", "ours")] * 2


def test_commits_are_announced_only_while_another_process_watches(store, other, tokens, db_url):
    assert store.live is not None
    with psycopg.connect(db_url, autocommit=True) as spy, serve(store) as url_a, serve(other) as url_b:
        spy.execute(f"LISTEN {CHANNEL}")
        wait_for(lambda: store.live is not None and not store.live.wanted)
        post(url_a, tokens.header("ingest"), chained(2, secret="unwatched"))
        assert list(spy.notifies(timeout=0.5)) == []  # nobody watches: no NOTIFY, no commit lock
        with live_stream(url_b, tokens.header("auditor"), secret="watched", max_events=3) as got:
            wait_for(lambda: store.live.wanted)
            post(url_a, tokens.header("ingest"), chained(3, secret="watched"))
            notes = [Announcement(n.payload) for n in spy.notifies(timeout=5, stop_after=1)]
        assert [n.origin for n in notes] == [store.live.origin]
        assert sorted(int(e["id"]) for e in got) == sorted(notes[0].ids)
        wait_for(lambda: not store.live.wanted)  # the stream closed: back to silence
        list(spy.notifies(timeout=0.2))  # drain anything sent while it closed
        post(url_a, tokens.header("ingest"), chained(2, secret="watched"))
        assert list(spy.notifies(timeout=0.5)) == []


def test_announcements_fit_notify_and_name_exactly_the_rows():
    rng = random.Random(7)
    ids = rng.sample(range(1, 10_000_000), 3000) + list(range(50, 1050))  # scattered, then a run
    now = dt.datetime(2026, 11, 25, tzinfo=dt.timezone.utc)
    times = [now + dt.timedelta(seconds=rng.randint(-3600, 3600)) for _ in ids]
    notes = announcements("me", ids, times)
    assert len(notes) > 1
    assert all(len(n.encode()) < 8000 for n in notes)
    read = [Announcement(n) for n in notes]
    assert sorted(i for a in read for i in a.ids) == sorted(ids)
    assert {(a.origin, a.first, a.last) for a in read} == {("me", min(times), max(times))}


def test_the_bus_listens_again_after_losing_its_connection(store, other, tokens, owner):
    with serve(store) as url_a, serve(other) as url_b:
        wait_for(lambda: owner.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'secret-audit-%%'"
        ).fetchone() == (2,))
        # both listening connections die, as in a database restart or a dropped network path
        owner.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name LIKE 'secret-audit-%%'")
        with live_stream(url_b, tokens.header("auditor"), secret="after", max_events=2) as got:
            wait_for(lambda: owner.execute(  # B's new connection announces its subscriber
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'secret-audit-live'"
            ).fetchone() == (1,))
            wait_for(lambda: store.live is not None and store.live.wanted)
            post(url_a, tokens.header("ingest"), chained(2, secret="after"))
    assert [e["sequence"] for e in got] == [1, 2]
