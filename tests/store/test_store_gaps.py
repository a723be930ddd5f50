"""Gaps found on ingest: their missing range as numbers, late records that fill them, what stays open."""

from __future__ import annotations

import orjson
import psycopg
import pytest

from secret_audit.cli import main

from .records import chained, rehash, store_legacy, to_protobuf

PB = {"Content-Type": "application/x-protobuf"}


def post(client, tokens, records):
    resp = client.post("/v1/logs", content=to_protobuf(records), headers={**PB, **tokens.header("ingest")})
    assert resp.status_code == 200
    return resp


def findings(owner, kind=None):
    return owner.execute(
        "SELECT kind, sequence, range_first, range_last, expected, actual FROM audit_findings "
        + ("WHERE kind = %s " if kind else "") + "ORDER BY id",
        (kind,) if kind else (),
    ).fetchall()


def stats(client, tokens, stream):
    doc = client.get("/stats", headers=tokens.header("auditor")).json()
    return doc, next(s for s in doc["streams"] if s["stream_id"] == stream)


def api_findings(client, tokens, **params):
    resp = client.get("/api/integrity-findings", params=params, headers=tokens.header("auditor"))
    assert resp.status_code == 200
    return resp.json()["findings"]


def sid(recs):
    return recs[0]["attributes"]["audit.stream.id"]


def test_gap_has_a_numeric_range_and_a_full_fill_closes_it(client, tokens, owner):
    recs = chained(6)
    stream = sid(recs)
    post(client, tokens, recs[:2] + recs[4:])  # 3 and 4 lost
    assert findings(owner) == [("gap", 5, 3, 4, None, None)]
    doc, s = stats(client, tokens, stream)
    assert doc["integrity_findings"] == {"gap": 1}
    assert doc["open_gaps"] == {"gaps": 1, "missing": 2}
    assert s["open_gaps"] == [[3, 4]]
    assert s["missing"] == 2
    [gap] = api_findings(client, tokens)
    assert (gap["kind"], gap["range_first"], gap["range_last"], gap["open"], gap["open_ranges"]) == (
        "gap", 3, 4, True, [[3, 4]])

    post(client, tokens, recs[2:4])  # the late records arrive
    assert findings(owner) == [("gap", 5, 3, 4, None, None), ("gap_filled", 3, 3, 4, None, None)]
    assert dict(owner.execute("SELECT sequence, integrity FROM audit_events").fetchall()) == {
        1: "ok", 2: "ok", 3: "ok", 4: "ok", 5: "gap_before", 6: "ok"}
    doc, s = stats(client, tokens, stream)
    assert doc["integrity_findings"] == {}  # nothing is an open problem any more
    assert doc["findings_recorded"] == {"gap": 1, "gap_filled": 1}  # the history stays
    assert doc["open_gaps"] == {"gaps": 0, "missing": 0}
    assert s["open_gaps"] == []
    assert s["missing"] == 0
    assert s["findings"] == 1
    gap, filled = api_findings(client, tokens)
    assert (gap["open"], gap["open_ranges"]) == (False, [])
    assert (filled["kind"], filled["range_first"], filled["range_last"], filled["open"]) == (
        "gap_filled", 3, 4, False)
    assert api_findings(client, tokens, open="true") == []
    assert [f["kind"] for f in api_findings(client, tokens, open="false")] == ["gap", "gap_filled"]


def test_partial_fills_leave_exactly_the_rest_open(client, tokens, owner, db_url, monkeypatch, capsys):
    recs = chained(10)
    stream = sid(recs)
    post(client, tokens, [recs[0], recs[8], recs[9]])  # 2..8 missing
    post(client, tokens, [recs[2], recs[3], recs[5]])  # 3, 4 and 6 arrive: two runs
    assert findings(owner) == [
        ("gap", 9, 2, 8, None, None), ("gap_filled", 3, 3, 4, None, None), ("gap_filled", 6, 6, 6, None, None)]
    doc, s = stats(client, tokens, stream)
    assert doc["integrity_findings"] == {"gap": 1}
    assert doc["open_gaps"] == {"gaps": 1, "missing": 4}
    assert s["open_gaps"] == [[2, 2], [5, 5], [7, 8]]
    assert s["missing"] == 4
    assert [(f["kind"], f["open_ranges"]) for f in api_findings(client, tokens, open="true")] == [
        ("gap", [[2, 2], [5, 5], [7, 8]])]

    monkeypatch.setenv("DATABASE_URL", db_url)
    assert main(["verify", "--json"]) == 1  # the rows are still missing
    report = orjson.loads(capsys.readouterr().out)
    assert [(g["stream_id"], g["ranges"], g["missing"]) for g in report["open_gaps"]] == [
        (stream, [[2, 2], [5, 5], [7, 8]], 4)]
    assert main(["verify"]) == 1
    out = capsys.readouterr().out
    assert "open gaps found on ingest: 1 (4 records missing)" in out
    assert f"{stream}: 2, 5, 7..8" in out

    post(client, tokens, [recs[1], recs[4], recs[6], recs[7]])
    doc, s = stats(client, tokens, stream)
    assert doc["integrity_findings"] == {}
    assert s["open_gaps"] == []
    assert s["missing"] == 0
    assert main(["verify", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["open_gaps"] == []


@pytest.mark.parametrize("forgery", ["rehashed", "hash_left"])
def test_a_wrong_late_record_fills_the_gap_but_its_break_stays_open(client, tokens, owner, forgery):
    recs = chained(4)
    stream = sid(recs)
    post(client, tokens, [recs[0], recs[1], recs[3]])
    late = dict(recs[2], attributes=dict(recs[2]["attributes"], **{"secret.name": "other-secret"}))
    if forgery == "rehashed":
        rehash(late)  # valid on its own, but the successor's audit.chain.prev names the original
    post(client, tokens, [late])
    kinds = [f[:4] for f in findings(owner)]
    if forgery == "rehashed":
        assert kinds == [("gap", 4, 3, 3), ("chain_break", 4, None, None), ("gap_filled", 3, 3, 3)]
        assert findings(owner, "chain_break")[0][4:] == (
            late["attributes"]["audit.chain.hash"], recs[3]["attributes"]["audit.chain.prev"])
        problem = "chain_break"
    else:
        assert kinds == [("gap", 4, 3, 3), ("hash_mismatch", 3, None, None), ("gap_filled", 3, 3, 3)]
        problem = "hash_mismatch"
    doc, s = stats(client, tokens, stream)
    assert doc["integrity_findings"] == {problem: 1}
    assert s["open_gaps"] == []
    assert s["missing"] == 0
    assert s["findings"] == 2
    assert [f["kind"] for f in api_findings(client, tokens, open="true")] == [problem]


def test_a_retried_filling_batch_adds_no_findings(client, tokens, owner):
    recs = chained(8)
    stream = sid(recs)
    post(client, tokens, [recs[0], recs[7]])
    fill = [recs[1], recs[2], recs[4]]
    post(client, tokens, fill)
    before = findings(owner)
    assert before == [("gap", 8, 2, 7, None, None), ("gap_filled", 2, 2, 3, None, None),
                      ("gap_filled", 5, 5, 5, None, None)]
    post(client, tokens, fill)  # the exporter retries the same batch
    post(client, tokens, fill[1:] + [recs[5]])  # and one overlapping with a new late record
    assert findings(owner) == [*before, ("gap_filled", 6, 6, 6, None, None)]
    doc, s = stats(client, tokens, stream)
    assert doc["duplicates"] == 5
    assert s["open_gaps"] == [[4, 4], [7, 7]]
    assert s["missing"] == 2
    assert s["records"] == 6


def test_late_records_in_the_same_batch_as_new_ones(client, tokens, owner):
    recs = chained(7)
    post(client, tokens, [recs[0], recs[3]])  # 2..3 missing
    post(client, tokens, [recs[1], recs[2], recs[4], recs[6]])  # fills 2..3, goes on, loses 6
    assert [f[:4] for f in findings(owner)] == [("gap", 4, 2, 3), ("gap", 7, 6, 6), ("gap_filled", 2, 2, 3)]
    _, s = stats(client, tokens, sid(recs))
    assert s["open_gaps"] == [[6, 6]]


def test_tenant_scoped_auditor_sees_only_its_gaps(client, tokens):
    acme, other = chained(3, tenant="acme"), chained(3)
    post(client, tokens, [acme[0], acme[2]])
    post(client, tokens, [other[0], other[2]])
    resp = client.get("/stats", headers=tokens.header("acme-auditor")).json()
    assert resp["open_gaps"] == {"gaps": 1, "missing": 1}
    assert [s["stream_id"] for s in resp["streams"]] == [sid(acme)]
    resp = client.get("/api/integrity-findings", params={"open": "true"},
                      headers=tokens.header("acme-auditor")).json()
    assert [(f["stream_id"], f["open_ranges"]) for f in resp["findings"]] == [(sid(acme), [[2, 2]])]


def test_upgrade_keeps_old_gap_findings_and_records_fills_they_already_had(bare_db_url, monkeypatch):
    """A schema 1 database: gap ranges only in `detail`, late records already stored without a trace."""
    from secret_audit.store import migrations

    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
        assert migrations.migrate(conn) == [1]
        recs = chained(8)
        stream = sid(recs)
        store_legacy(conn, recs)
        # what schema 1 left behind: 2..4 was a gap (2 filled late since), 6 too (filled since)
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM audit_events WHERE sequence IN (3, 4)")
        conn.execute("SET session_replication_role = origin")
        conn.execute(
            "INSERT INTO audit_findings (stream_id, kind, sequence, detail) VALUES "
            "(%s, 'gap', 5, 'sequence 2..4 missing before this record'), "
            "(%s, 'gap', 7, 'sequence 6..6 missing before this record')",
            (stream, stream),
        )
        monkeypatch.undo()
        assert migrations.migrate(conn) == [2, 3, 4, 5, 6, 7]
        rows = conn.execute(
            "SELECT kind, sequence, range_first, range_last FROM audit_findings ORDER BY id"
        ).fetchall()
        assert rows == [("gap", 5, None, None), ("gap", 7, None, None),
                        ("gap_filled", 2, 2, 2), ("gap_filled", 6, 6, 6)]
        from secret_audit.store._gaps import open_gaps

        assert [(g.first, g.last, g.ranges) for g in open_gaps(conn)] == [(2, 4, [(3, 4)])]
        assert migrations.migrate(conn) == []  # and again: nothing more
        assert conn.execute("SELECT count(*) FROM audit_findings").fetchone() == (4,)
