"""Issue 18's attacks on a real store, each one detected with a signing key and named by ``verify``.

The trail is made for real (Redis instrumentation, signing key, OTLP/HTTP into a running store). Each
attack keeps the unkeyed chain consistent; the signed checks, and the reconciliation with the
collector's file copy, must still name it. Before signed checkpoints, `secret-audit verify` said OK
after every one of these.
"""

from __future__ import annotations

import re

import pytest

from . import attacks
from .records import write_copy
from .signed import kinds, produce


@pytest.fixture
def trail(teed, tokens, redis_url, signing_key):
    """A finished signed stream: 10 accesses, checkpoints every 4 records, a final one at shutdown."""
    url, _ = teed
    return produce(url, tokens["ingest"], redis_url, signing_key)


def test_the_clean_signed_trail_verifies_strictly(trail, signing_key, run, owner):
    rows = owner.execute("SELECT count(*), max(sequence) FROM audit_events WHERE stream_id = %s", (trail,)).fetchone()
    code, doc = run("--public-key", f"{signing_key}.pub", "--strict")
    assert code == 0, doc
    signed = doc["signed"]
    assert (signed["streams"], signed["attested"], signed["unattested"]) == (1, rows[0], 0)
    assert signed["checkpoints"] >= 3  # every 4 records, and the final one
    assert signed["breaks"] == signed["warnings"] == 0


def test_app_role_appends_a_chained_forgery_after_the_final_checkpoint(trail, signing_key, store, run):
    with store.connection() as app:  # secret_audit_app: no trigger touched
        forged = attacks.append_forged(app, trail)
    code, doc = run("--public-key", f"{signing_key}.pub")
    assert code == 1
    (found,) = kinds(doc)["after_final"]
    assert (found["stream_id"], found["sequence"]) == (trail, forged["sequence"])


def test_app_role_append_to_a_live_stream_is_unattested_and_fails_strict(teed, tokens, redis_url, signing_key, store, run):
    url, _ = teed
    stream = produce(url, tokens["ingest"], redis_url, signing_key, close=False)
    try:
        with store.connection() as app:
            forged = attacks.append_forged(app, stream)
        code, doc = run("--public-key", f"{signing_key}.pub")
        assert code == 0  # a live producer's newest records are not signed yet: said, not failed
        (tail,) = kinds(doc)["unattested"]
        assert tail["stream_id"] == stream
        assert str(forged["sequence"]) in tail["detail"]
        code, doc = run("--public-key", f"{signing_key}.pub", "--strict")
        assert code == 1
        assert {"unattested", "not_final"} <= set(kinds(doc))
    finally:
        from conftest import retire_pipeline

        retire_pipeline()


def test_superuser_cuts_the_tail_and_sets_the_head_back(trail, signing_key, forced, run):
    attacks.cut_tail(forced, trail, 3)
    code, doc = run("--public-key", f"{signing_key}.pub", "--strict")
    assert code == 1
    assert kinds(doc)["not_final"][0]["stream_id"] == trail
    code, doc = run("--public-key", f"{signing_key}.pub")  # without --strict it is named, as a killed producer's is
    assert "not_final" in kinds(doc)


def test_superuser_deletes_records_a_checkpoint_signed(trail, signing_key, forced, run, owner):
    last = owner.execute("SELECT max(sequence) FROM audit_events WHERE stream_id = %s", (trail,)).fetchone()[0]
    forced.execute("DELETE FROM audit_events WHERE stream_id = %s AND sequence IN (%s, %s)", (trail, last - 2, last - 1))
    code, doc = run("--public-key", f"{signing_key}.pub")
    assert code == 1
    (cut,) = kinds(doc)["cut"]
    assert (cut["stream_id"], cut["sequence"]) == (trail, last - 2)
    assert f"{last - 2}..{last - 1}" in cut["detail"]


def test_superuser_changes_a_record_and_rechains_everything_after_it(trail, signing_key, forced, run):
    attacks.alter_and_rechain(forced, trail, 2, secret_name="innocent")
    code, doc = run()  # the unkeyed chain is consistent again
    assert doc["breaks"] == 0
    code, doc = run("--public-key", f"{signing_key}.pub")
    assert code == 1
    first = kinds(doc)["forged"][0]  # the range that holds record 2, named with the checkpoint that signed it
    assert first["stream_id"] == trail
    low, high = map(int, re.search(r"records (\d+)\.\.(\d+) do not reproduce", first["detail"]).groups())
    assert low <= 2 <= high


def test_superuser_deletes_a_whole_stream_the_copy_still_holds(teed, trail, signing_key, forced, run, tmp_path, tokens, redis_url):
    url, tee = teed
    other = produce(url, tokens["ingest"], redis_url, signing_key)  # a second producer's stream stays
    copy = write_copy(tmp_path / "secret-audit.jsonl", tee.bodies)
    attacks.delete_stream(forced, trail)
    code, doc = run("--public-key", f"{signing_key}.pub")
    assert code == 0  # what is left is signed and whole: only the copy knows the stream existed
    code, doc = run("--public-key", f"{signing_key}.pub", "--against", str(copy))
    assert code == 1
    (missing,) = kinds(doc, "against")["stream_missing"]
    assert missing["stream_id"] == trail
    assert "signed by key" in missing["detail"]
    assert other not in str(doc["against"]["details"])
