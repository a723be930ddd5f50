"""`secret-audit spool replay` into the real store: a spool left by a real app whose store was down
arrives whole, each record once, and verifies."""

from __future__ import annotations

from secret_audit.cli import main
from test_spool_commands import cli, spool_by_apps_whose_endpoint_was_down


def test_replay_into_the_store_then_verify(tmp_path, redis_url, server_url, tokens, owner, db_url, monkeypatch,
                                           capsys):
    spool = tmp_path / "spool"
    spool_by_apps_whose_endpoint_was_down(spool, redis_url, 20, 7)
    proc = cli("spool", "replay", str(spool), endpoint=f"{server_url}/v1/logs",
               OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_HEADERS=f"authorization=Bearer {tokens['ingest']}")
    assert proc.returncode == 0, proc.stderr
    rows = owner.execute(
        "SELECT stream_id, array_agg(sequence ORDER BY sequence), count(DISTINCT event_id), count(*) "
        "FROM audit_events WHERE event_name = 'secret.access' GROUP BY stream_id").fetchall()
    assert sorted(len(seqs) for _, seqs, _, _ in rows) == [7, 20]
    for _, seqs, distinct, count in rows:
        assert seqs == list(range(1, len(seqs) + 1))
        assert distinct == count == len(seqs)
    assert owner.execute("SELECT count(*) FROM audit_findings").fetchone()[0] == 0
    monkeypatch.setenv("DATABASE_URL", db_url)
    assert main(["verify"]) == 0
    assert "OK, every chain verifies" in capsys.readouterr().out
