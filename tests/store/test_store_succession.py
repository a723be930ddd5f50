"""A stream that continues one whose audit agent died (``audit.stream.continued``), as the store verifies it.

Real store, real PostgreSQL: the predecessor and its successor are posted over OTLP as an app and its
agent would have sent them. ``verify`` must tell the predecessor's end from a cut tail (even with its
head set back), count the successor's rebuilt copies of records the agent sent unacknowledged, and
refuse a link that names another producer's stream.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from secret_audit import contract
from secret_audit.store.verify import verify

from .attacks import cut_tail
from .records import chained, rehash, to_protobuf

PB = {"Content-Type": "application/x-protobuf"}


def successor_of(before: list[dict[str, Any]], last: int, rebuilt: int, new: int, **resource: str,
                 ) -> list[dict[str, Any]]:
    """The app's stream after its agent died: the link, copies of ``before``'s records after ``last``
    (``rebuilt`` of them: the same accesses, as the ring held them), then ``new`` accesses of its own."""
    stream = str(uuid.uuid4())
    head = before[0]
    link_attrs = {contract.OUTCOME: "error", contract.PREDECESSOR_ID: head["attributes"]["audit.stream.id"],
                  contract.PREDECESSOR_SEQUENCE: last}
    link = {**head, "event_name": contract.EVENT_CONTINUED, "severity_number": 17, "severity_text": "ERROR",
            "body": "Audit stream continues", "trace_id": "", "span_id": "", "attributes": link_attrs,
            "resource": {**head["resource"], **resource}}
    copies = [{**r, "attributes": dict(r["attributes"]), "resource": link["resource"]}
              for r in before[last:last + rebuilt]]
    fresh = chained(new, secret="after")
    out = [link, *copies, *({**r, "resource": link["resource"]} for r in fresh)]
    prev = contract.GENESIS
    for seq, rec in enumerate(out, 1):
        attrs = rec["attributes"]
        attrs.update({"audit.event.id": f"{stream}:{seq}", "audit.stream.id": stream, "audit.sequence": seq,
                      "audit.chain.prev": prev})
        prev = rehash(rec)
    return out


def post(client: Any, tokens: Any, records: list[dict[str, Any]]) -> None:
    resp = client.post("/v1/logs", content=to_protobuf(records), headers={**PB, **tokens.header("ingest")})
    assert resp.status_code == 200, resp.text
    assert "partialSuccess" not in resp.text or '"rejectedLogRecords"' not in resp.text, resp.text


def post_to(url: str, token: str, records: list[dict[str, Any]]) -> None:
    """The same over HTTP, to a store served on ``url``."""
    import httpx

    resp = httpx.post(f"{url}/v1/logs", content=to_protobuf(records),
                      headers={**PB, "Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text


def kinds(report: Any) -> list[tuple[str, str, int | None]]:
    return [(b.kind, b.stream_id, b.sequence) for b in report.breaks]


@pytest.mark.parametrize(("sent", "acknowledged", "rebuilt"), [(8, 5, 3), (6, 6, 0)])
def test_a_successor_explains_the_end_and_its_rebuilt_copies_are_counted(client, tokens, owner, sent, acknowledged,
                                                                         rebuilt):
    """``sent`` records sent, ``acknowledged`` of them when the agent died: the app rebuilt the rest."""
    before = chained(sent)
    post(client, tokens, before)
    post(client, tokens, successor_of(before, acknowledged, rebuilt, 2))
    report = verify(owner)
    assert report.ok, kinds(report)
    assert (report.streams, report.rebuilt) == (2, rebuilt)


@pytest.mark.parametrize("count", [1, 3])
def test_a_cut_tail_with_its_head_set_back_is_caught(client, tokens, owner, count):
    """The superuser's attack the head check alone misses: the rows and the head agree, the link does not."""
    before = chained(8)
    stream = before[0]["attributes"]["audit.stream.id"]
    post(client, tokens, before)
    post(client, tokens, successor_of(before, 8, 0, 2))
    assert verify(owner).ok
    owner.execute("SET session_replication_role = replica")
    cut_tail(owner, stream, count)
    owner.execute("SET session_replication_role = origin")
    report = verify(owner)
    assert kinds(report) == [("cut", stream, 9 - count)]
    assert report.breaks[0].detail.startswith(f"sequence {9 - count}..8 missing")


def test_a_link_naming_another_producers_stream_is_forged(client, tokens, owner):
    """An ingest client cannot make another producer's stream look cut by naming it."""
    victim = chained(4)
    post(client, tokens, victim)
    forged = successor_of(victim, 100, 0, 1, **{"service.instance.id": "i-elsewhere"})
    post(client, tokens, forged)
    report = verify(owner)
    assert kinds(report) == [("bad_link", forged[0]["attributes"]["audit.stream.id"], 1)]


@pytest.mark.parametrize("foreign", [False, True])
def test_a_signed_successor_explains_the_end_unless_it_is_another_producers(client, tokens, signing_key, run,
                                                                             foreign):
    """Signed: the dead stream's end is ``continued``, not ``not_final``; a successor signed with the same key
    by another producer (a key shared by several apps) names it in vain: ``bad_link``, and the end stays open."""
    from secret_audit.signing import load_signer

    from .records import checkpoint_after
    from .signed import kinds as findings

    signer = load_signer(signing_key)
    before = chained(4)
    checkpoint_after(before, signer, prev=contract.GENESIS, covered=0)
    after = successor_of(before, 5, 0, 2, **({"service.instance.id": "i-elsewhere"} if foreign else {}))
    checkpoint_after(after, signer, prev=contract.GENESIS, covered=0, final=True)
    post(client, tokens, before)
    post(client, tokens, after)
    code, doc = run("--public-key", f"{signing_key}.pub")
    found = findings(doc)
    if foreign:
        assert code == 1, doc
        assert [(b["stream_id"], b["sequence"]) for b in found["bad_link"]] == [(after[0]["attributes"]["audit.stream.id"], 1)]
        assert [w["stream_id"] for w in found["not_final"]] == [before[0]["attributes"]["audit.stream.id"]]
    else:
        assert code == 0, doc
        assert (doc["signed"]["continued"], doc["signed"]["breaks"], "not_final" in found) == (1, 0, False)
