"""``verify --public-key`` and ``--against`` case by case: keys, signatures, streams the store made, the copy.

The attacks of issue 18 are in test_attacks_signed.py; these are the other findings and the command's
own rules.
"""

from __future__ import annotations

import gzip
import json

from secret_audit.signing import generate_key, load_signer
from secret_audit.store.retention import apply_retention

from . import attacks
from .conftest import serve
from .records import backdate, chained, checkpoint_after, to_protobuf, write_copy
from .signed import kinds, produce

PB = {"Content-Type": "application/x-protobuf"}


def test_a_key_the_trail_was_not_signed_with(teed, tokens, redis_url, signing_key, tmp_path, run):
    stream = produce(teed[0], tokens["ingest"], redis_url, signing_key)
    generate_key(tmp_path / "other.key")
    code, doc = run("--public-key", str(tmp_path / "other.key.pub"))
    assert code == 1
    found = kinds(doc)
    assert {b["stream_id"] for b in found["unknown_key"]} == {stream}
    assert found["unsigned_stream"][0]["stream_id"] == stream
    keyring = tmp_path / "keyring.pem"  # both public keys in one file: the trail verifies
    keyring.write_text((tmp_path / "other.key.pub").read_text() + (tmp_path / "audit.key.pub").read_text())
    code, doc = run("--public-key", str(keyring), "--strict")
    assert code == 0, doc
    assert len(doc["signed"]["keys"]) == 2


def test_a_changed_signed_field_breaks_the_signature(teed, tokens, redis_url, signing_key, forced, run):
    stream = produce(teed[0], tokens["ingest"], redis_url, signing_key)
    (seq,) = forced.execute("SELECT min(sequence) FROM audit_events WHERE stream_id = %s AND "
                            "event_name = 'audit.checkpoint'", (stream,)).fetchone()
    forced.execute("UPDATE audit_events SET attributes = jsonb_set(attributes, '{audit.checkpoint.final}', 'true') "
                   "WHERE stream_id = %s AND sequence = %s", (stream, seq))
    code, doc = run("--public-key", f"{signing_key}.pub")
    assert code == 1
    assert [b["sequence"] for b in kinds(doc)["bad_signature"]] == [seq]


def test_stripping_every_checkpoint_leaves_an_unsigned_stream(teed, tokens, redis_url, signing_key, forced, run):
    stream = produce(teed[0], tokens["ingest"], redis_url, signing_key)
    forced.execute("DELETE FROM audit_events WHERE stream_id = %s AND event_name = 'audit.checkpoint'", (stream,))
    rows = attacks.rows(forced, stream)
    prev = "0" * 64
    for seq, row in enumerate(rows, 1):  # renumber and re-chain, as a thorough attacker would
        old = row["sequence"]
        row.update(sequence=seq, event_id=f"{stream}:{seq}", chain_prev=prev)
        row["chain_hash"] = prev = attacks.chain_hash(attacks.canonical_of_row(row))
        forced.execute("UPDATE audit_events SET sequence = %s, event_id = %s, chain_prev = %s, chain_hash = %s "
                       "WHERE stream_id = %s AND sequence = %s",
                       (seq, row["event_id"], row["chain_prev"], row["chain_hash"], stream, old))
    attacks.set_head(forced, stream, rows[-1], len(rows))
    code, doc = run()
    assert doc["breaks"] == 0  # the unkeyed chain is whole
    code, doc = run("--public-key", f"{signing_key}.pub")
    assert code == 1
    (found,) = kinds(doc)["unsigned_stream"]
    assert found["stream_id"] == stream


def test_an_unsigned_producer_is_a_break_and_the_stores_own_streams_are_not(teed, tokens, redis_url, signing_key, run):
    url, _ = teed
    signed = produce(url, tokens["ingest"], redis_url, signing_key)
    run("--public-key", f"{signing_key}.pub")  # writes an audit.query record on the store's own stream
    code, doc = run("--public-key", f"{signing_key}.pub", "--strict")
    assert code == 0, doc
    assert doc["streams"] == 2
    assert doc["signed"]["streams"] == 1
    unsigned = produce(url, tokens["ingest"], redis_url, None)
    code, doc = run("--public-key", f"{signing_key}.pub")
    assert code == 1
    assert [b["stream_id"] for b in kinds(doc)["unsigned_stream"]] == [unsigned]
    assert signed not in json.dumps(doc["signed"]["details"])


def test_an_altered_record_is_named_exactly_when_its_successor_still_links(teed, tokens, redis_url, signing_key, forced, run):
    stream = produce(teed[0], tokens["ingest"], redis_url, signing_key)
    row = attacks.rows(forced, stream)[2]
    row["secret_name"] = "innocent"  # altered and re-hashed, the next record left alone
    forced.execute("UPDATE audit_events SET secret_name = 'innocent', chain_hash = %s WHERE stream_id = %s AND "
                   "sequence = 3", (attacks.chain_hash(attacks.canonical_of_row(row)), stream))
    code, doc = run("--public-key", f"{signing_key}.pub")
    assert code == 1
    assert 3 in [b["sequence"] for b in kinds(doc)["forged"]]


def test_a_record_whose_own_link_was_changed_is_told_from_its_innocent_predecessor(teed, tokens, redis_url, signing_key,
                                                                                   forced, run):
    stream = produce(teed[0], tokens["ingest"], redis_url, signing_key)
    row = attacks.rows(forced, stream)[2]
    row["chain_prev"] = "f" * 64
    forced.execute("UPDATE audit_events SET chain_prev = %s, chain_hash = %s WHERE stream_id = %s AND sequence = 3",
                   (row["chain_prev"], attacks.chain_hash(attacks.canonical_of_row(row)), stream))
    code, doc = run("--public-key", f"{signing_key}.pub")
    assert code == 1
    details = {b["sequence"]: b["detail"] for b in kinds(doc)["forged"]}
    assert details[3].startswith("record 3 is not the one its successor names")
    assert details[2].startswith("records 2 and 3 do not link: one of them")


def test_an_inserted_twin_inside_a_signed_range_is_named(teed, tokens, redis_url, signing_key, forced, run):
    stream = produce(teed[0], tokens["ingest"], redis_url, signing_key)
    twin = attacks.rows(forced, stream)[1]
    twin.update(secret_name="twin", event_id=f"{stream}:2:twin")
    twin["chain_hash"] = attacks.chain_hash(attacks.canonical_of_row(twin))
    attacks.insert(forced, twin)
    code, doc = run("--public-key", f"{signing_key}.pub")
    assert code == 1
    (found,) = [b for b in kinds(doc)["forged"] if b["sequence"] == 2]
    assert "inserted" in found["detail"]


def test_a_loss_the_producer_reported_is_not_a_cut(store, tokens, redis_url, signing_key, run):
    class RefuseSecond:
        """The store refuses one export request (400): the producer reports those records lost."""

        def __init__(self, app):
            self.app, self.seen = app, 0

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http" and scope["path"] == "/v1/logs":
                self.seen += 1
                if self.seen == 2:
                    await send({"type": "http.response.start", "status": 400, "headers": []})
                    await send({"type": "http.response.body", "body": b""})
                    return
            await self.app(scope, receive, send)

    with serve(store, wrap=RefuseSecond) as url:
        stream = produce(url, tokens["ingest"], redis_url, signing_key, accesses=12)
    code, doc = run("--public-key", f"{signing_key}.pub")
    assert code == 0, doc
    assert doc["signed"]["reported_losses"] >= 1
    (tail,) = [w for w in kinds(doc)["unattested"] if "reported lost" in w["detail"]]
    assert tail["stream_id"] == stream
    code, doc = run("--public-key", f"{signing_key}.pub", "--strict")
    assert code == 1


def test_a_start_archived_by_retention_is_not_a_cut(client, tokens, owner, tmp_path, signing_key, run):
    signer = load_signer(signing_key)
    old = chained(4, secret="old")
    backdate(old, 1_579_000_000_000_000_000)  # January 2020
    first = checkpoint_after(old, signer, prev="0" * 64, covered=0)
    stream = old[0]["attributes"]["audit.stream.id"]
    newer = chained(2, stream=stream, start_seq=6, prev=first["attributes"]["audit.chain.hash"], secret="new")
    checkpoint_after(newer, signer, prev=first["attributes"]["audit.chain.hash"], covered=4, final=True)
    assert client.post("/v1/logs", content=to_protobuf(old + newer), headers={**PB, **tokens.header("ingest")}
                       ).status_code == 200
    code, doc = run("--public-key", f"{signing_key}.pub", "--strict")
    assert code == 0, doc
    assert [p.name for p in apply_retention(owner, 365, tmp_path)] == ["audit_events_p202001"]
    code, doc = run("--public-key", f"{signing_key}.pub", "--strict")
    assert code == 0, doc
    assert (doc["signed"]["archived_starts"], doc["signed"]["attested"]) == (1, 3)


def test_the_copy_names_what_differs_and_what_is_missing_on_either_side(teed, tokens, redis_url, signing_key, forced,
                                                                         tmp_path, run):
    url, tee = teed
    stream = produce(url, tokens["ingest"], redis_url, signing_key, accesses=12)
    copy = write_copy(tmp_path / "secret-audit.jsonl.1.gz", tee.bodies, gz=True)
    code, doc = run("--public-key", f"{signing_key}.pub", "--against", str(copy), "--strict")
    assert code == 0, doc
    assert doc["against"]["matched"] == doc["against"]["copy_records"] >= 12
    for window in (["--end", "2000-01-01T00:00:00Z"], ["--tenant", "another-tenant"]):
        code, doc = run("--against", str(copy), *window)  # only the copy's records in the window or tenant
        assert code == 0, doc
        assert doc["against"]["copy_records"] == doc["rows"] == 0
    code, doc = run("--public-key", f"{signing_key}.pub", "--tenant", "another-tenant")
    assert code == 1
    assert kinds(doc)["no_signed_stream"]
    forced.execute("UPDATE audit_events SET enduser_id = 'mallory' WHERE stream_id = %s AND sequence = 2", (stream,))
    forced.execute("DELETE FROM audit_events WHERE stream_id = %s AND sequence = 4", (stream,))
    lines = gzip.decompress(copy.read_bytes()).decode().splitlines()
    last = max(int(a["value"]["intValue"]) for line in lines for rl in json.loads(line)["resourceLogs"]
               for sl in rl["scopeLogs"] for lr in sl["logRecords"] for a in lr["attributes"]
               if a["key"] == "audit.sequence")
    dropped = []
    for line in lines:  # the copy lost sequence 6 and its last record
        doc = json.loads(line)
        for rl in doc["resourceLogs"]:
            for sl in rl["scopeLogs"]:
                keep = []
                for lr in sl["logRecords"]:
                    seq = next(int(a["value"]["intValue"]) for a in lr["attributes"] if a["key"] == "audit.sequence")
                    (dropped if seq in (6, last) else keep).append(lr)
                sl["logRecords"] = keep
        (tmp_path / "trimmed.jsonl").open("a").write(json.dumps(doc) + "\n")
    assert len(dropped) == 2
    code, doc = run("--against", str(tmp_path / "trimmed.jsonl"))
    assert code == 1
    found = kinds(doc, "against")
    assert [(b["kind"], b["sequence"]) for b in found["differs"]] == [("differs", 2)]
    assert [(b["kind"], b["sequence"]) for b in found["missing_from_store"]] == [("missing_from_store", 4)]
    assert [b["sequence"] for b in found["not_in_copy"]] == [6]
    assert [b["sequence"] for b in found["outside_copy"]] == [last]
    code, text = run("--against", str(tmp_path / "trimmed.jsonl"), json_out=False)
    assert "BREAK differs: stream" in text
    assert "warning outside_copy" in text


def test_the_commands_own_rules(signing_key, tmp_path, run):
    code, text = run("--strict", json_out=False)
    assert code == 2
    assert "--public-key or --against" in text
    code, text = run("--public-key", f"{signing_key}.pub", "--start", "2026-01-01T00:00:00Z", json_out=False)
    assert code == 2
    assert "signed checks cover whole streams" in text
    code, text = run("--public-key", str(signing_key), json_out=False)  # the private key by mistake
    assert code == 2
    assert "holds a private key" in text
    assert "PRIVATE" not in text.replace("holds a private key", "")
    code, text = run("--against", str(tmp_path / "nope.jsonl"), json_out=False)
    assert code == 2
    assert "an existing file" in text
    (tmp_path / "bad.jsonl").write_text("not json\n")
    code, text = run("--against", str(tmp_path / "bad.jsonl"), json_out=False)
    assert code == 2
    assert "bad.jsonl:1: not an OTLP/JSON logs request" in text
    code, doc = run("--public-key", f"{signing_key}.pub")  # an empty store proves nothing
    assert code == 1
    assert kinds(doc)["no_signed_stream"]
    code, doc = run("--public-key", f"{signing_key}.pub", "--allow-empty")
    assert code == 0
