"""The CLI: tokens, migrate, query through the API; hash-name still works."""

from __future__ import annotations

import orjson
import pytest

from secret_audit.cli import main

from .records import chained, to_protobuf


@pytest.fixture
def env(db_url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", db_url)


def test_hash_name_still_works(capsys, monkeypatch):
    monkeypatch.setenv("OTEL_PYTHON_SECRET_AUDIT_HMAC_KEY", "k" * 32)
    assert main(["hash-name", "db-password"]) == 0
    assert "hmac-sha256:" in capsys.readouterr().out


def test_migrate(env, capsys):
    assert main(["store", "migrate"]) == 0
    assert "schema at version" in capsys.readouterr().out


def test_tokens_create_list_revoke(env, capsys, owner):
    assert main(["tokens", "create", "--name", "siem", "--role", "auditor", "--tenant", "acme"]) == 0
    captured = capsys.readouterr()
    raw = captured.out.strip()
    assert raw.startswith("sat_")
    assert "cannot be shown again" in captured.err
    token_id = raw.split("_")[1]
    assert main(["tokens", "list"]) == 0
    listing = capsys.readouterr().out
    assert token_id in listing
    assert "acme" in listing
    assert raw.split("_", 2)[2] not in listing
    assert main(["tokens", "revoke", token_id]) == 0
    assert main(["tokens", "revoke", token_id]) == 2


def test_bad_role_is_refused_by_argparse(env):
    with pytest.raises(SystemExit):
        main(["tokens", "create", "--name", "x", "--role", "root"])


def test_query_through_the_api(server_url, tokens, monkeypatch, capsys):
    import httpx

    monkeypatch.setenv("COLUMNS", "300")
    recs = chained(3, secret="api-key")
    httpx.post(f"{server_url}/v1/logs", content=to_protobuf(recs),
               headers={"Content-Type": "application/x-protobuf", **tokens.header("ingest")})
    monkeypatch.setenv("OTEL_PYTHON_SECRET_AUDIT_STORE_TOKEN", tokens["auditor"])
    assert main(["query", "--url", server_url, "--secret", "api-key", "--json"]) == 0
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["sequence"] for e in lines] == [3, 2, 1]
    assert main(["query", "--url", server_url, "--secret", "api-key", "--limit", "1", "--all", "--format", "table"]) == 0
    table = capsys.readouterr().out
    assert table.count("api-key") == 3
    monkeypatch.setenv("OTEL_PYTHON_SECRET_AUDIT_STORE_TOKEN", tokens["ingest"])
    assert main(["query", "--url", server_url]) == 2
    assert "403" in capsys.readouterr().err


def test_query_without_token_names_the_variable(monkeypatch, capsys):
    monkeypatch.delenv("OTEL_PYTHON_SECRET_AUDIT_STORE_TOKEN", raising=False)
    assert main(["query"]) == 2
    assert "OTEL_PYTHON_SECRET_AUDIT_STORE_TOKEN" in capsys.readouterr().err


def test_retention_apply_cli(env, owner, tmp_path, capsys):
    from secret_audit.store._ingest import Ingestor
    from secret_audit.store._otlp import decode_protobuf

    from .records import rehash

    old = chained(3)
    prev = "0" * 64
    for i, r in enumerate(old):
        r["time_unix_nano"] = 1_500_000_000_000_000_000 + i  # July 2017
        r["attributes"]["audit.chain.prev"] = prev
        prev = rehash(r)
    assert Ingestor().ingest(owner, decode_protobuf(to_protobuf(old))).accepted == 3
    archive = tmp_path / "arch"
    assert main(["retention", "apply", "--days", "30", "--archive-dir", str(archive), "--dry-run"]) == 0
    assert "would archive and drop audit_events_p201707" in capsys.readouterr().out
    assert owner.execute("SELECT count(*) FROM audit_events").fetchone()[0] == 3
    assert main(["retention", "apply", "--days", "30", "--archive-dir", str(archive)]) == 0
    assert "archived and dropped audit_events_p201707" in capsys.readouterr().out
    assert owner.execute("SELECT count(*) FROM audit_events").fetchone()[0] == 0
    assert main(["verify", "--archive", str(archive / "audit_events_p201707.jsonl.gz")]) == 0
    assert main(["verify"]) == 0  # the stream's rows all went to the archive: nothing is missing
    assert main(["retention", "apply", "--days", "30", "--archive-dir", str(archive)]) == 0
    assert "nothing older than 30 days" in capsys.readouterr().out


# Each filter flag with a value only some of the posted events have: the CLI must return just those.
FILTERS = [
    ("--secret", "secret_name", "flt-secret-b", {"secret": "flt-secret-b"}),
    ("--source", "secret_source", "gcp_secret_manager", {"secret.source": "gcp_secret_manager"}),
    ("--principal", "principal", "svc-billing", {"audit.principal": "svc-billing"}),
    ("--enduser", "enduser_id", "bob@example.com", {"enduser.id": "bob@example.com"}),
    ("--client-address", "client_address", "198.51.100.9", {"client.address": "198.51.100.9"}),
    ("--tenant", "tenant", "acme", {"tenant": "acme"}),
]


@pytest.mark.parametrize(("flag", "column", "value", "extra"), FILTERS, ids=[f[0] for f in FILTERS])
def test_query_and_tail_select_by_each_filter(server_url, tokens, monkeypatch, capsys, flag, column, value,
                                              extra):
    import threading
    import uuid

    import httpx

    tag = uuid.uuid4().hex[:8]  # --stream-id narrows each check to this test's own streams
    base = {"secret": f"flt-{tag}", **({} if "secret" not in extra else {"secret": extra["secret"] + tag})}
    attrs = {k: v for k, v in extra.items() if "." in k}
    tenant = extra.get("tenant")
    picked = chained(2, stream=f"pick-{tag}", tenant=tenant, **base, **attrs)
    other = chained(2, stream=f"other-{tag}", secret=f"flt-{tag}")
    want = value + tag if flag == "--secret" else value
    header = {"Content-Type": "application/x-protobuf", **tokens.header("ingest")}
    monkeypatch.setenv("AUDITOR_TOKEN", tokens["auditor"])
    client = ["--url", server_url, "--token-env", "AUDITOR_TOKEN", "--json"]
    for recs in (picked, other):
        assert httpx.post(f"{server_url}/v1/logs", content=to_protobuf(recs), headers=header).status_code == 200
    for stream in (f"pick-{tag}", f"other-{tag}"):
        assert main(["query", *client, flag, want, "--stream-id", stream]) == 0
        got = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [e[column] for e in got] == ([want, want] if stream.startswith("pick") else []), got
    # tail: the live stream delivers the next event that matches, and only that one
    codes: list[int] = []
    follower = threading.Thread(target=lambda: codes.append(
        main(["tail", *client, flag, want, "--max-events", "1"])))
    follower.start()
    deadline = 0
    while not httpx.get(f"{server_url}/stats", headers=tokens.header("admin")).json()["live_streams"]:
        deadline += 1
        assert deadline < 200, "tail never subscribed"
        threading.Event().wait(0.05)
    later_other = chained(1, stream=f"other-{tag}", start_seq=3, prev=other[-1]["attributes"]["audit.chain.hash"],
                          secret=f"flt-{tag}")
    later = chained(1, stream=f"pick-{tag}", start_seq=3, prev=picked[-1]["attributes"]["audit.chain.hash"],
                    tenant=tenant, **base, **attrs)
    for recs in (later_other, later):
        assert httpx.post(f"{server_url}/v1/logs", content=to_protobuf(recs), headers=header).status_code == 200
    follower.join(30)
    assert codes == [0]
    tailed = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e[column], e["sequence"], e["stream_id"]) for e in tailed] == [(want, 3, f"pick-{tag}")]
