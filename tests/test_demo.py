"""The demo end to end: real Redis, real store on embedded PostgreSQL, the app under the launcher.

`demo.run()` in process (and every example of examples/queries.md against the data it made), and
`bash scripts/demo.sh` as a user runs it (slow).
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import demo  # noqa: E402

EXAMPLE_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def queries_md() -> tuple[list[str], list[str]]:
    text = (ROOT / "examples" / "queries.md").read_text()
    sql = re.findall(r"```sql\n(.*?)```", text, re.S)
    bash = [line.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]
    return sql, [line.split("  #")[0].strip() for line in bash if line.startswith("secret-audit ")]


def closed(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), 0.5):
            return False
    except OSError:
        return True


def endpoint_address(value: str) -> str:
    if "://" in value:
        u = urlparse(value)
        return f"{u.hostname}:{u.port}"
    return value


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("demo")
    seen: dict[str, Any] = {"sql": [], "cli": []}
    sql, cli = queries_md()

    def inspect(store: demo.Store) -> None:
        with store.owner_connection() as conn:
            trace = conn.execute(
                "SELECT trace_id FROM audit_events WHERE secret_source = 'gcp_secret_manager' "
                "AND enduser_id = 'alice@example.com' LIMIT 1").fetchone()[0]
            seen["trace"] = trace
            for statement in sql:
                cur = conn.execute(statement.replace(EXAMPLE_TRACE, trace))
                seen["sql"].append((statement, cur.fetchall(), [d.name for d in cur.description or []]))
        # each CLI start costs about a second: run the examples side by side
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:
            procs = pool.map(lambda line: store.cli(*shlex.split(line.replace(EXAMPLE_TRACE, seen["trace"]))[1:]), cli)
            seen["cli"] = list(zip(cli, procs, strict=True))

    started = time.monotonic()
    result = demo.run(workdir, quiet=True, inspect=inspect)
    seen["result"] = result
    seen["seconds"] = time.monotonic() - started
    seen["workdir"] = workdir
    return seen


def test_demo_makes_one_verified_trail_across_cache_and_vault(demo_run):
    result = demo_run["result"]
    events = result.events
    assert result.mode == "stand-in"
    assert [s for _, s in result.requests] == [200, 200, 200, 404, 201]
    assert result.verify_rc == 0, result.verify_output
    assert "OK, every chain verifies" in result.verify_output
    # signed by the app, checked with the public key only: every record attested, the stream closed
    signed = re.search(r"^signed: 1 producer streams, (\d+) checkpoints verified \(keys [0-9a-f]{16}\), "
                       r"(\d+) records attested, 0 unattested: OK \(0 breaks, 0 warnings, --strict\)$",
                       result.verify_output, re.M)
    assert signed, result.verify_output
    checkpoints = result.checkpoints
    assert int(signed.group(1)) == len(checkpoints) >= 1
    assert int(signed.group(2)) == len(events) + len(checkpoints)
    assert checkpoints[-1]["attributes"]["audit.checkpoint.final"] is True  # the app's clean exit
    assert result.public_key.name == "audit.key.pub"
    assert {e["integrity"] for e in events} == {"ok"}
    # one stream, no gap: the accesses and the checkpoints between them
    assert sorted(e["sequence"] for e in events + checkpoints) == list(range(1, len(events) + len(checkpoints) + 1))
    assert len({e["stream_id"] for e in events + checkpoints}) == 1

    internal = [e for e in events if e["access_path"] == "internal"]
    # the baseline's requests; the watch's come after (test_demo_watch_...)
    external = [e for e in events if e["access_path"] == "external" and e["time"] < result.watched.quiet_from]
    # start-up: two cold reads (cache miss, vault read, cache fill each) by server code, no end user
    assert [(e["secret_source"], e["action"], e["outcome"]) for e in internal[:6]] == [
        ("redis", "GET", "not_found"), ("gcp_secret_manager", "AccessSecretVersion", "success"),
        ("redis", "SET", "success")] * 2
    assert all(e["enduser_id"] is None and e["client_address"] is None for e in internal)
    assert all(e["principal"] == "secret-service@demo" for e in events)
    assert len(internal) >= 7  # plus at least one background refresh (a cache hit)
    assert any(e["result"] == "found" and e["secret_source"] == "redis" for e in internal[6:])

    by_user: dict[str, list[tuple[str, str, str]]] = {}
    for e in external:
        by_user.setdefault(e["enduser_id"], []).append((e["client_address"], e["action"], e["outcome"]))
    assert by_user == {
        "alice@example.com": [("203.0.113.7", "GET", "not_found"), ("203.0.113.7", "AccessSecretVersion", "success"),
                              ("203.0.113.7", "SET", "success"), ("203.0.113.7", "GET", "success")],
        "bob@example.com": [("198.51.100.23", "GET", "success")],
        "mallory@example.net": [("192.0.2.66", "GET", "not_found"), ("192.0.2.66", "AccessSecretVersion", "not_found")],
        "carol@example.com": [("203.0.113.9", "AddSecretVersion", "success"), ("203.0.113.9", "SET", "success")],
    }
    # each request (and each internal read) is one trace; every traced record's span reached the receiver
    traces = {e["trace_id"] for e in events}
    assert "" not in traces
    # the 2 cold start-up reads are 3 records each
    assert len(traces) == len(result.requests) + len(result.watched.requests) + len(internal) - 4
    assert traces <= set(result.spans_by_trace)
    # no secret value anywhere in the stored trail or the echo lines
    trail = result.trail_file.read_text()
    echo = result.echo_file.read_text()
    for value in [*demo.SEED.values(), b"rotated-demo-value"]:
        assert value.decode() not in trail
        assert value.decode() not in echo
    assert trail.count("\n") == len(events)
    # the JSON-lines copy reads like a log: oldest first
    written = [json.loads(line) for line in trail.splitlines()]
    # (the stream's checkpoints sit between its accesses: contiguity with them is checked above).
    # Oldest first is by the access's start; the sequence follows the hand-off at its end, so two
    # threads' overlapping accesses may stand in either order (the request and the background refresh)
    assert sorted(e["sequence"] for e in written) == sorted(e["sequence"] for e in events)
    assert [e["time"] for e in written] == sorted(e["time"] for e in written)
    assert written[0]["time"] == min(e["time"] for e in events)
    assert echo.count("[AUDIT]") == len(events)


def test_demo_writes_an_ocsf_copy_of_the_whole_trail_and_every_event_is_valid_ocsf(demo_run):
    """audit-trail.ocsf.jsonl: one OCSF event per stored record (every event name), each valid against the
    official OCSF schema (the targeted 1.1.0 and the newest packaged), none holding a value."""
    import ottl_eval
    from ocsf_schema import VERSIONS, problems
    from secret_audit import ocsf
    from test_ocsf import ocsf_statements

    result = demo_run["result"]
    assert result.ocsf_file == result.trail_file.parent / "audit-trail.ocsf.jsonl"
    text = result.ocsf_file.read_text()
    events = [json.loads(line) for line in text.splitlines()]
    stored = [json.loads(line) for line in result.full_trail_file.read_text().splitlines()]
    # the same trail: every record the demo produced, the store's own audit.query records of the
    # demo's reads included, plus the reads the OCSF query itself made on the way
    by_uid = {e["metadata"]["uid"]: e for e in events}
    assert len(by_uid) == len(events)
    assert {e["attributes"]["audit.event.id"] for e in stored} <= set(by_uid)
    for record in stored:
        assert by_uid[record["attributes"]["audit.event.id"]] == ocsf.event(record)
    names = {e["metadata"]["event_code"] for e in events}
    assert names >= {"secret.access", "audit.checkpoint", "audit.query"}
    assert {e["class_uid"] for e in events} == {6003, 0}
    for version in VERSIONS:
        assert [(e["metadata"]["uid"], p) for e in events for p in problems(e, version)] == []
    # oldest first, like the other copies
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)
    # never a value
    for value in [*demo.SEED.values(), b"rotated-demo-value"]:
        assert value.decode() not in text
    # the collector's transform/ocsf makes the same events from the same records
    statements = ocsf_statements()
    for record in stored:
        plain = {k: v for k, v in record.items() if k not in ("received_at", "integrity")}
        assert ottl_eval.run(statements, plain)["log"]["body"] == ocsf.event(plain)


def test_demo_stops_everything_it_started(demo_run):
    result = demo_run["result"]
    assert set(result.endpoints) >= {"redis", "store", "app", "jaeger_stand_in", "secret_manager_stand_in"}
    for name, value in result.endpoints.items():
        assert closed(endpoint_address(value)), f"{name} still listening at {value}"
    workdir = str(demo_run["workdir"])
    import psutil

    left = [p.info for p in psutil.process_iter(["pid", "cmdline"])
            if any(workdir in part for part in (p.info["cmdline"] or []))]
    assert left == []
    assert not (demo_run["workdir"] / "pgdata").exists()


def test_demo_is_well_under_a_minute(demo_run):
    assert demo_run["seconds"] < 60


def test_every_sql_example_of_queries_md_runs_on_the_real_schema(demo_run):
    results = {statement.split("\n", 1)[0]: (rows, cols) for statement, rows, cols in demo_run["sql"]}
    sql, _ = queries_md()
    assert len(demo_run["sql"]) == len(sql) >= 12
    by_first_line = {s.split("\n", 1)[0]: s for s in sql}

    def rows_of(fragment: str) -> list[Any]:
        (key,) = [k for k, s in by_first_line.items() if fragment in s]
        return results[key][0]

    # alice x2 and once more in the watch's quiet window, carol's rotation
    assert len(rows_of("IN ('secret:twilio-credentials', 'twilio-credentials')")) == 7
    assert len(rows_of("enduser_id = 'alice@example.com'")) == 5
    assert [r[2] for r in rows_of(f"trace_id = '{EXAMPLE_TRACE}'")] == ["redis", "gcp_secret_manager", "redis"]
    # mallory's missing secret, then her six guesses in the watch
    assert [r[7] for r in rows_of("outcome IN ('denied', 'error')")] == ["not_found"] * 7
    assert rows_of("WHERE integrity <> 'ok'") == []
    assert rows_of("FROM audit_findings") == []
    assert rows_of("event_name = 'audit.query'")  # the demo's own query and verify were audited
    hits = {r[0]: r for r in rows_of("hit_ratio")}
    assert hits["secret:ses-credentials"][1] >= 2
    assert hits["secret:ses-credentials"][2] == 2  # bob, and bob again in the watch's quiet window
    assert {r[3] for r in rows_of("operation IN ('write', 'delete')")} == {"redis", "gcp_secret_manager"}
    assert {r[0] for r in rows_of("resource->>'deployment.environment'")} == {
        "203.0.113.7", "198.51.100.23", "192.0.2.66", "203.0.113.9", "198.51.100.99"}
    # the watch's questions (docs/monitoring.md): the same answers as the Sigma rules
    assert [r[0] for r in rows_of("PARTITION BY coalesce(enduser_id, principal)")] == ["mallory@example.net"]
    assert [r[0] for r in rows_of("PARTITION BY client_address")] == ["192.0.2.66"]
    assert [(r[0], r[1]) for r in rows_of("count(DISTINCT secret_name) AS names_not_found")] == [
        ("mallory@example.net", 14)]  # each guess twice: its cache key and its vault id
    assert ("bob@example.com", "secret:db-password") in {(r[0], r[1]) for r in rows_of("AS first_read")}
    assert ("bob@example.com", "198.51.100.99") in {(r[0], r[1]) for r in rows_of("AS first_use")}
    assert rows_of("event_name IN ('audit.dropped', 'audit.refused')") == []


def test_every_secret_audit_query_example_runs_against_the_store(demo_run):
    ran = dict(demo_run["cli"])
    _, cli = queries_md()
    assert len(ran) == len(cli) >= 8
    for line, proc in ran.items():
        assert proc.returncode == 0, f"{line}: {proc.stderr}"
    assert "secret:twilio-credentials" in ran["secret-audit query --secret secret:twilio-credentials"].stdout
    trace_line = f"secret-audit query --trace-id {EXAMPLE_TRACE}"
    assert "gcp_secret_manager" in ran[trace_line].stdout
    assert "missing-secret" in ran["secret-audit query --outcome not_found --source gcp_secret_manager"].stdout
    assert '"client_address":"203.0.113.7"' in ran["secret-audit query --client-address 203.0.113.7 --json"].stdout
    assert "OK" in ran["secret-audit verify"].stdout
    assert "prod-root-token" in ran["secret-audit query --enduser mallory@example.net --outcome not_found --all"].stdout
    assert ran["secret-audit query --event-name audit.dropped --all --json"].stdout == ""


def test_demo_watch_shows_metrics_an_alert_for_mallory_and_the_matching_rules(demo_run):
    watched = demo_run["result"].watched
    assert [s for _, s in watched.requests] == [200, 200] + [404] * 6 + [200]
    # the app's metrics, from its own MeterProvider over OTLP: every record made was exported
    created = [line for line in watched.app_metrics if line.startswith("secret_audit.record.created{")]
    exported = [line for line in watched.app_metrics if line.startswith("secret_audit.record.exported{")]
    assert created
    assert sorted(line.split("{", 1)[1] for line in created) == sorted(line.split("{", 1)[1] for line in exported)
    assert any(line.startswith("secret_audit.export.duration{} count=") for line in watched.app_metrics)
    assert any(line.startswith('secret_audit_store_record_received_total{audit_ingest_result="accepted"')
               for line in watched.store_metrics)
    # the store's alert for mallory's burst reached the local webhook, signed (the receiver verified it)
    bursts = {a["details"]["by"]: a for a in watched.alerts if a["kind"] == "burst"}
    assert bursts["principal"]["details"]["principal"] == "mallory@example.net"
    assert bursts["client.address"]["details"]["client.address"] == "192.0.2.66"
    assert "prod-root-token" in bursts["principal"]["details"]["secrets"]
    for value in demo.SEED.values():
        assert value.decode() not in repr(watched.alerts)
    # the Sigma rules: the attack matches exactly those the committed demo trail does (tests/test_detections.py)
    from test_detections import ATTACK, OFF_HOURS

    assert set(watched.matched) - {OFF_HOURS} == set(ATTACK)
    assert set(watched.quiet_matched) <= {OFF_HOURS}  # only if the demo runs at night


@pytest.mark.slow
def test_demo_sh_as_a_user_runs_it(tmp_path):
    started = time.monotonic()
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], capture_output=True, text=True, timeout=300,
                          check=False, env={**demo._clean_env(), "SECRET_AUDIT_DEMO_DIR": str(tmp_path)})
    took = time.monotonic() - started
    out = proc.stdout
    logs = "".join(f"\n--- {p.name}\n" + p.read_text(errors="replace")[-3000:] for p in sorted(tmp_path.glob("*.log")))
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr[-5000:]}{logs}"
    assert "LOCAL STAND-IN" in out
    assert "OK, every chain verifies" in out
    assert re.search(r"secret-audit verify --public-key \S+audit\.key\.pub --strict`, exit 0", out)
    assert re.search(r"^  signed: 1 producer streams, \d+ checkpoints verified .*: OK \(0 breaks", out, re.M)
    assert re.search(r"Audit trail in the store \((\d+) secret.access records", out)
    assert re.search(r"^  [0-9a-f]{32}  \d+ spans", out, re.M)
    assert str(tmp_path / "audit-trail.jsonl") in out
    assert (tmp_path / "audit-trail.jsonl").stat().st_size > 0
    assert "secret_audit.record.created{event.name=secret.access" in out
    assert re.search(r"\[high\] burst: \d+ denied or not-found accesses by principal mallory@example.net", out)
    assert "Secret enumeration by one principal  (enduser.id=mallory@example.net)" in out
    assert took < 60, f"demo.sh took {took:.1f}s"
    print(f"scripts/demo.sh took {took:.1f}s")


def test_a_port_taken_between_pick_and_bind_is_retried(tmp_path, monkeypatch):
    """Parallel tests can grab a port the demo picked as free; the server then fails to bind and another is tried."""
    from servers import free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = iter([busy])
        monkeypatch.setattr(demo, "free_port", lambda: next(ports, None) or free_port())
        with demo.audit_store(tmp_path) as store:
            assert not store.url.endswith(f":{busy}")
            assert store.cli("verify", "--allow-empty").returncode == 0
    assert "address already in use" in (tmp_path / "store.log").read_text().lower()
    assert not (tmp_path / "pgdata").exists()


def test_real_gcp_only_with_a_project_and_usable_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    assert demo._real_gcp() is None
    # a project but credentials that cannot be loaded (a missing key file: no network is tried)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "some-project")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing-key.json"))
    assert demo._real_gcp() is None
    with demo.secret_manager() as vault:
        assert vault.mode == "stand-in"
        assert vault.grpc_target is not None
        assert vault.names == list(demo.SEED)


def test_real_gcp_is_chosen_with_a_project_and_loadable_credentials(monkeypatch, tmp_path):
    """Loading a service-account key needs no network; the demo then reads real GCP (not run here)."""
    import json as _json

    rsa = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    from cryptography.hazmat.primitives import serialization

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {"type": "service_account", "project_id": "some-project", "private_key_id": "0" * 40,
            "private_key": pem, "client_email": "demo@some-project.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token"}
    path = tmp_path / "key.json"
    path.write_text(_json.dumps(info))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "some-project")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    monkeypatch.setenv("SECRET_AUDIT_DEMO_SECRETS", "api-key,db-password")
    assert demo._real_gcp() == "some-project"
    with demo.secret_manager() as vault:
        assert (vault.mode, vault.project, vault.grpc_target, vault.names) == (
            "gcp", "some-project", None, ["api-key", "db-password"])
