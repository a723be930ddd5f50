"""The audit agent (OTEL_PYTHON_SECRET_AUDIT_AGENT=process): what it guarantees, against a real Redis.

Each test runs tests/apps/agent_app.py under opentelemetry-instrument with records exported over
OTLP/HTTP to a receiver in this process. Nothing the app handed off is lost when it is killed with
-9, or terminated with its agent's help; forked children share the agent with streams of their
own; an agent that dies is reported and the app falls back (or refuses, fail-closed); no value
crosses the ring or the agent's socket; audit spans stay in the caller's trace and sampler.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from otlp_receiver import Receiver, otlp_grpc_receiver, otlp_receiver
from store.attacks import cut_tail
from test_faults import assert_clean, fault_pg, store  # noqa: F401 - fixtures: a real store on PostgreSQL
from test_faults import contiguous as store_contiguous
from test_launcher_e2e import BIN, HERE, launcher_env

P = "OTEL_PYTHON_SECRET_AUDIT_"
APP = str(HERE / "apps" / "agent_app.py")


def env_for(rx: Receiver, redis_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return launcher_env(
        rx.url, redis_url, OTEL_SERVICE_NAME="agent-test", OTEL_LOGS_EXPORTER="none",
        XDG_STATE_HOME=str(tmp_path / "state"), OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="redis",
        **{P + "AGENT": "process", **extra},
    )


def run(rx: Receiver, redis_url: str, tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "opentelemetry-instrument"), sys.executable, APP, *args],
                          env=env_for(rx, redis_url, tmp_path, **extra), capture_output=True, text=True, timeout=120)


def records_when(rx: Receiver, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The receiver's audit records once ``n`` arrived (the agent sends after the app is gone)."""
    deadline = time.monotonic() + timeout
    while len(rx.audit_records()) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # and nothing more than n comes
    return rx.audit_records()


def said(out: str, what: str) -> list[Any]:
    return [json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith(what + " ")]


def contiguous(records: list[dict[str, Any]]) -> dict[str, list[int]]:
    streams: dict[str, list[int]] = {}
    for r in records:
        streams.setdefault(r["attributes"]["audit.stream.id"], []).append(r["attributes"]["audit.sequence"])
    for seqs in streams.values():
        assert sorted(seqs) == list(range(1, len(seqs) + 1))
    return streams


def test_kill_9_right_after_handing_off_loses_nothing(redis_url, tmp_path):
    """In-process, the records queued and not yet sent die with the process; the agent sends them."""
    key = "secret:k9:" + secrets.token_hex(4)
    with otlp_receiver() as rx:
        proc = run(rx, redis_url, tmp_path, key, "3000", "kill9", **{P + "SCHEDULE_DELAY_MS": "60000"})
        records = records_when(rx, 3001)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(records) == 3001, proc.stderr
    assert Counter(r["attributes"]["audit.action"] for r in records) == {"GET": 3000, "SET": 1}
    assert len(contiguous(records)) == 1


def test_an_app_started_with_its_stdin_closed_still_reaches_its_agent(redis_url, tmp_path):
    """With fd 0 closed (a daemon, ``<&-``) the agent's socket took fd 0, and the pipe that hands the
    agent its settings replaced it in the child: the agent died with a traceback and the app fell
    back in-process. The socket is now passed above the standard descriptors."""
    key = "secret:stdin:" + secrets.token_hex(4)
    with otlp_receiver() as rx:
        proc = subprocess.run(["sh", "-c", 'exec "$@" <&-', "sh", str(BIN / "opentelemetry-instrument"),
                               sys.executable, APP, key, "50", "exit"],
                              env=env_for(rx, redis_url, tmp_path), capture_output=True, text=True, timeout=120)
        records = records_when(rx, 51)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "agent is gone" not in proc.stderr, proc.stderr
    assert len(records) == 51
    assert len(contiguous(records)) == 1


@pytest.mark.parametrize("ending", ["exit", "sigterm", "sigterm-handled", "sigterm-group"])
def test_exit_and_sigterm_deliver_everything_handed_off(redis_url, tmp_path, ending):
    """With SIGTERM left to its default action (HANDLE_SIGTERM=false: in-process, that loses what is
    queued, see test_lifecycle.py), the agent still delivers, as with HANDLE_SIGTERM=true; a signal to
    the app's whole process group (a container stop, Ctrl-C) does not reach the agent, which runs in its
    own session. The records arrive within records_when's 30 s, before the 60 s schedule: the agent
    exports a departed app's last batch at once."""
    key = "secret:term:" + secrets.token_hex(4)
    extra = {P + "SCHEDULE_DELAY_MS": "60000", P + "BATCH_SIZE": "100000", P + "QUEUE_SIZE": "200000",
             P + "HANDLE_SIGTERM": "true" if ending == "sigterm-handled" else "false"}
    with otlp_receiver() as rx:
        if ending == "exit":
            proc = run(rx, redis_url, tmp_path, key, "500", "exit", **extra)
            assert proc.returncode == 0, proc.stderr
        else:
            app = subprocess.Popen([str(BIN / "opentelemetry-instrument"), sys.executable, APP, key, "500", "wait"],
                                   env=env_for(rx, redis_url, tmp_path, **extra), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
            try:
                assert app.stdout is not None
                assert app.stdout.readline().strip() == "done"
                if ending in ("sigterm", "sigterm-handled"):
                    app.send_signal(signal.SIGTERM)
                else:
                    os.killpg(app.pid, signal.SIGTERM)
                app.wait(30)
            finally:
                if app.poll() is None:
                    app.kill()
                    app.wait(5)
            assert app.returncode == -signal.SIGTERM
        records = records_when(rx, 501)
    assert [r["attributes"]["audit.sequence"] for r in records] == list(range(1, 502))


def test_forked_children_share_the_agent_with_streams_of_their_own(redis_url, tmp_path):
    """gunicorn-style pre-fork: each child registers a ring of its own with the parent's agent at its
    first access, and leaves with os._exit (no atexit, no flush): the agent drains every ring."""
    key = "secret:fork:" + secrets.token_hex(4)
    with otlp_receiver() as rx:
        proc = run(rx, redis_url, tmp_path, key, "200", "fork", "3")
        records = records_when(rx, 201 + 3 * 200 + 1)
    assert proc.returncode == 0, proc.stderr
    parent, children = said(proc.stdout, "parent")[0], said(proc.stdout, "child")
    assert len(children) == 3
    assert {c["agent"]["pid"] for c in children} == {parent["agent"]["pid"]}  # one agent for the tree
    assert len({c["stream_id"] for c in children} | {parent["stream_id"]}) == 4
    streams = contiguous(records)
    assert sorted(len(s) for s in streams.values()) == [200, 200, 200, 202]
    by_stream = {r["attributes"]["audit.stream.id"]: r["attributes"]["secret.name"] for r in records
                 if ":child" in r["attributes"]["secret.name"]}
    assert sorted(by_stream.values()) == [f"{key}:child{i}" for i in range(3)]


@pytest.mark.parametrize("spans_via", ["app", "agent"])
def test_what_a_killed_agent_had_not_settled_is_delivered_by_the_app(redis_url, tmp_path, spans_via):
    """The agent reads accesses but settles none (a long schedule delay), is stopped, more accesses
    are handed off, and it is killed with -9: the app still holds every unsettled slot in its ring
    and hands them to the in-process pipeline that takes over, so each access reaches the sink,
    with its audit span (made in the app, or with the ids the app chose), none reported lost."""
    key = "secret:killed:" + secrets.token_hex(4)
    value = "canary-" + secrets.token_hex(16)
    with otlp_receiver() as rx:
        proc = run(rx, redis_url, tmp_path, key, "40", "agent-killed", value,
                   **{P + "SCHEDULE_DELAY_MS": "60000", P + "BATCH_SIZE": "10000", P + "SPANS": "all",
                      P + "SPANS_VIA": spans_via})
        records = records_when(rx, 83)
        time.sleep(0.5)  # spans are exported on their processor's schedule
        dropped = [r for r in rx.logs if r["event_name"] == "audit.dropped"]
        links = [r["attributes"] for r in rx.logs if r["event_name"] == "audit.stream.continued"]
        spans = {s["span_id"] for s in rx.spans if s["name"].startswith("secret.")}
        raw = b"".join(rx.raw)
    assert proc.returncode == 0, proc.stderr
    read = said(proc.stdout, "read")[0]
    assert (read["handed_off"], read["queued"], read["settled"]) == (41, 0, 0)  # read, none settled
    assert proc.stderr.count("the audit agent is gone") == 1, proc.stderr
    assert "killed by SIGKILL" in proc.stderr
    assert "81 handed-off accesses not yet durable are handed to this process" in proc.stderr, proc.stderr
    assert dropped == []
    names = Counter(r["attributes"]["secret.name"] for r in records)
    assert names == {key: 1, key + ":read": 40, key + ":unread": 40, key + ":after": 2}
    # all in the stream of the app that took over, after its first record: the agent's stream, which
    # settled nothing (sequence 0), ends there
    (stream,) = contiguous([*records, *({"attributes": a} for a in links)])
    assert [(a["audit.stream.id"], a["audit.sequence"], a["audit.stream.predecessor.sequence"]) for a in links] == [
        (stream, 1, 0)]
    assert {r["span_id"] for r in records} <= spans
    assert said(proc.stdout, "stats")[0]["agent"]["mode"] == "in-process"
    for seen in (raw, proc.stdout.encode(), proc.stderr.encode()):
        assert value.encode() not in seen


def test_an_agent_that_dies_is_reported_and_the_app_falls_back(redis_url, tmp_path):
    """The agent is stopped before it reads what is handed off, then killed: the app says so once,
    builds the slots the agent never read from its ring, and runs the pipeline in-process."""
    key = "secret:dies:" + secrets.token_hex(4)
    with otlp_receiver() as rx:
        proc = run(rx, redis_url, tmp_path, key, "5", "agent-dies")
        records = records_when(rx, 8)
        dropped = [r for r in rx.logs if r["event_name"] == "audit.dropped"]
        links = [r for r in rx.logs if r["event_name"] == "audit.stream.continued"]
    assert proc.returncode == 0, proc.stderr
    # the stderr line: what happened, what became of what was handed off, what runs now, and the fix
    assert proc.stderr.count("the audit agent is gone") == 1, proc.stderr
    assert "it died (agent pid" in proc.stderr
    assert "killed by SIGKILL" in proc.stderr
    assert "5 handed-off accesses not yet durable are handed to this process" in proc.stderr, proc.stderr
    assert "Fix: " in proc.stderr
    assert said(proc.stdout, "after") == ["read"]
    stats = said(proc.stdout, "stats")[0]
    assert stats["agent"]["mode"] == "in-process"
    assert dropped == []  # nothing lost: the ring kept every slot the agent had not settled
    names = Counter(r["attributes"]["secret.name"] for r in records)
    assert names == {key: 6, key + ":unsettled": 5, key + ":after": 2}
    streams = contiguous(records + links)
    fallback = {r["attributes"]["audit.stream.id"] for r in records if r["attributes"]["secret.name"] != key}
    assert len(streams) == 2  # the agent's (what it settled), the app's since the agent died
    assert fallback == {stats["stream_id"]}
    # the new stream names where the dead agent's ended: its id and its last settled sequence, in its
    # first record (so a verifier can tell that end from a cut tail), in stats() and on stderr
    (dead,) = set(streams) - fallback
    (link,) = links
    assert (link["attributes"]["audit.stream.id"], link["attributes"]["audit.sequence"]) == (stats["stream_id"], 1)
    assert link["attributes"]["audit.stream.predecessor.id"] == dead
    assert link["attributes"]["audit.stream.predecessor.sequence"] == max(streams[dead]) == 6
    assert link["severity_number"] == 17
    assert dead in link["body"]
    assert stats["agent"]["predecessor"] == {"stream_id": dead, "last_sequence": max(streams[dead])}
    assert (f"(stream {stats['stream_id']}, taking up where the agent's stream {dead} ends, at its sequence "
            f"{max(streams[dead])})") in proc.stderr, proc.stderr


def test_a_slot_the_app_cannot_build_when_its_agent_dies_is_reported_lost(redis_url, tmp_path):
    """A slot reserved and never committed (a thread stopped between the two) stalls the agent's
    reader; when the agent dies the app builds every slot around it and reports that one lost."""
    key = "secret:gap:" + secrets.token_hex(4)
    with otlp_receiver() as rx:
        proc = run(rx, redis_url, tmp_path, key, "10", "agent-dies-gap", **{P + "SCHEDULE_DELAY_MS": "60000"})
        records = records_when(rx, 11)
        dropped = [r for r in rx.logs if r["event_name"] == "audit.dropped"]
    assert proc.returncode == 0, proc.stderr
    assert said(proc.stdout, "gap") == [1]
    assert "12 handed-off accesses not yet durable are handed to this process" in proc.stderr, proc.stderr
    assert "1 of them could not be built and are reported lost" in proc.stderr
    assert [(d["attributes"]["audit.dropped.reason"], d["attributes"]["audit.dropped.count"]) for d in dropped] == [
        ("agent_died", 1)]
    assert Counter(r["attributes"]["secret.name"] for r in records) == {key: 1, key + ":behind": 10}
    assert {r["attributes"]["audit.stream.id"] for r in records + dropped} == {said(proc.stdout, "stats")[0][
        "stream_id"]}


def test_fail_closed_refuses_once_its_agent_is_gone(redis_url, tmp_path):
    """Fail-closed calls wait on the ring's settled watermark: they pass while the agent settles them,
    are refused while it is stopped (not durable in time), and once it is gone."""
    key = "secret:closed:" + secrets.token_hex(4)
    with otlp_receiver() as rx:
        proc = run(rx, redis_url, tmp_path, key, "3", "agent-dies",
                   **{P + "FAILURE_MODE": "closed", P + "FAIL_CLOSED_TIMEOUT_MS": "300",
                      P + "SPOOL_DIR": str(tmp_path / "spool")})
        records_when(rx, 4)
        refused = [r for r in rx.logs if r["event_name"] == "audit.refused"]
        secrets_read = Counter(r["attributes"]["secret.name"] for r in rx.audit_records())
    assert proc.returncode == 0, proc.stderr
    assert said(proc.stdout, "during") == [["refused"] * 3]  # the stopped agent settles nothing in time
    assert "fail-closed calls are refused from now on" in proc.stderr, proc.stderr
    after = said(proc.stdout, "after")
    assert len(after) == 1, proc.stdout + proc.stderr
    assert after[0].startswith("refused:"), proc.stdout + proc.stderr
    reasons = Counter()
    for r in refused:
        reasons[r["attributes"]["audit.refused.reason"]] += r["attributes"]["audit.refused.count"]
    assert reasons["not_durable"] == 3
    assert reasons["unavailable"] >= 1
    # before the agent was stopped, fail-closed reads passed: the agent settled them
    assert secrets_read[key] == 4  # the SET and three GETs


def test_no_value_crosses_the_ring_or_the_agents_socket(redis_url, tmp_path):
    key = "secret:canary:" + secrets.token_hex(4)
    value = "canary-" + secrets.token_hex(16)
    with otlp_receiver() as rx:
        proc = run(rx, redis_url, tmp_path, key, "20", "canary", value)
        records_when(rx, 20)
        raw = b"".join(rx.raw)
    assert proc.returncode == 0, proc.stderr
    ring, sock = (bytes.fromhex(said(proc.stdout, what)[0]) for what in ("ring", "socket"))
    assert ring.count(b"\0") < len(ring)  # the ring was written to
    assert key.encode() in sock  # names travel (once per shape), values never
    for seen in (ring, sock, raw, proc.stdout.encode(), proc.stderr.encode()):
        assert value.encode() not in seen


@pytest.mark.parametrize("via", ["app", "agent", "auto"])
@pytest.mark.parametrize("sampler", ["parentbased_always_on", "parentbased_always_off"])
def test_audit_spans_stay_in_the_callers_trace_and_sampler(redis_url, tmp_path, sampler, via):
    """The audit span is made in the app through its tracer provider (SPANS_VIA=app), or by the agent
    with the ids the app chose (SPANS_VIA=agent; ``auto`` under the SDK's default sampler): either way
    a child of the request span, sampled as the request is, and the record carries its ids, as
    in-process. Under another sampler the spans stay in the app, said only when ``agent`` was asked."""
    got = {}
    for agent in ("off", "process"):
        with otlp_receiver() as rx:
            env = env_for(rx, redis_url, tmp_path, **{P + "AGENT": agent, P + "SPANS_VIA": via},
                          OTEL_TRACES_SAMPLER=sampler)
            proc = subprocess.run([str(BIN / "opentelemetry-instrument"), sys.executable,
                                   str(HERE / "apps" / "settings_app.py"), secrets.token_hex(4), "v"],
                                  env=env, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
            records = records_when(rx, 5)
            time.sleep(0.5)  # the app's span processor exports on its own schedule
            spans = list(rx.spans)
        said_sampler = "needs the SDK's default sampler" in proc.stderr
        assert said_sampler == (agent == "process" and via == "agent" and sampler != "parentbased_always_on")
        in_trace = [r for r in records if r["trace_id"].strip("0")]
        assert len(in_trace) == 1
        audit = [s for s in spans if s["name"].startswith("secret.")]
        request = [s for s in spans if s["name"] == "request"]
        if sampler == "parentbased_always_on":
            assert len(audit) == 1
            assert audit[0]["parent_span_id"] == request[0]["span_id"]
            assert (in_trace[0]["trace_id"], in_trace[0]["span_id"]) == (audit[0]["trace_id"], audit[0]["span_id"])
        else:
            assert audit == []
            assert request == []
        got[agent] = (len(audit), sorted(r["attributes"]["audit.action"] for r in records))
    assert got["off"] == got["process"]


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_the_agents_own_spans_arrive_in_the_callers_trace_with_no_value(redis_url, tmp_path, protocol):
    """With the traces exporter OTLP (over HTTP, or gRPC: the SDK's default protocol) the agent encodes
    the audit span itself (no SDK span, stats() counts its dropped spans): the span the receiver
    decodes is the request span's child, in its trace, flagged as having a remote parent, with the
    app's resource, and the record carries its ids; no secret value is in any byte sent."""
    key, value = secrets.token_hex(4), "s3cr3t-agent-span-canary-" + secrets.token_hex(4)
    with otlp_receiver() as rx, (otlp_grpc_receiver() if protocol == "grpc" else contextlib.nullcontext(rx)) as trx:
        env = env_for(rx, redis_url, tmp_path, **{P + "SPANS_VIA": "agent"},
                      OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=protocol,
                      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=trx.url + ("/v1/traces" if protocol != "grpc" else ""))
        proc = subprocess.run([str(BIN / "opentelemetry-instrument"), sys.executable,
                               str(HERE / "apps" / "settings_app.py"), key, value],
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        records = records_when(rx, 5)
        deadline = time.monotonic() + 10
        while len([s for s in trx.spans if s["name"].startswith("secret.")]) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        spans, raw = list(trx.spans), b"".join(rx.raw + (trx.raw if trx is not rx else []))
    assert rx.spans == [] or trx is rx
    stats = said(proc.stdout, "stats")[0]
    assert stats["spans_dropped"] == 0  # the agent's own span path (the SDK's has no such count)
    audit = [s for s in spans if s["name"].startswith("secret.")]
    request = [s for s in spans if s["name"] == "request"]
    assert len(audit) == 1
    assert len(request) == 1
    span = audit[0]
    assert (span["trace_id"], span["parent_span_id"]) == (request[0]["trace_id"], request[0]["span_id"])
    assert span["flags"] == 0x300  # the parent's remoteness known, and remote: as the SDK's span says
    assert span["resource"]["service.name"] == "agent-test"
    assert span["resource"]["service.instance.id"] == request[0]["resource"]["service.instance.id"]
    assert span["attributes"]["audit.action"] == "GET"
    assert span["attributes"]["secret.name"] == f"secret:{key}"
    in_trace = [r for r in records if r["trace_id"].strip("0")]
    assert [(r["trace_id"], r["span_id"]) for r in in_trace] == [(span["trace_id"], span["span_id"])]
    assert in_trace[0]["flags"] & 1  # sampled, as its parent
    assert value.encode() not in raw
    assert value not in proc.stdout + proc.stderr


def test_settings_given_to_instrument_are_the_agents(redis_url, tmp_path):
    """The agent gets the settings the app checked (here an endpoint set nowhere but in them), not
    the environment read again; retiring the pipeline settles what was handed off and lets it go."""
    import redis

    import secret_audit
    from conftest import retire_pipeline
    from secret_audit._internal.config import load_settings
    from secret_audit.redis import RedisSecretAuditInstrumentor

    key = "secret:given:" + secrets.token_hex(4)
    with otlp_receiver() as rx:
        settings = load_settings({P + "EXPORTER_OTLP_ENDPOINT": rx.url + "/v1/logs", P + "AGENT": "process",
                                  P + "SPOOL_DIR": str(tmp_path / "spool")})
        instrumentor = RedisSecretAuditInstrumentor()
        instrumentor.instrument(settings=settings)
        try:
            client = redis.Redis.from_url(redis_url)
            for _ in range(3):
                client.get(key)
            assert secret_audit.flush(10)
            stats = secret_audit.stats()
            agent = stats["agent"]["pid"]
        finally:
            instrumentor.uninstrument()
            retire_pipeline()
        records = records_when(rx, 3)
    assert stats["agent"]["mode"] == "process"
    assert stats["handed_off"] == stats["settled"] == 3
    assert [r["attributes"]["secret.name"] for r in records] == [key] * 3
    deadline = time.monotonic() + 10
    while Path(f"/proc/{agent}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(agent, os.WNOHANG)
    assert not Path(f"/proc/{agent}").exists()  # the agent left once its only app was gone


def test_an_agent_that_cannot_start_leaves_the_app_audited_in_process(redis_url, tmp_path):
    """The agent exits at start (a sitecustomize only it loads): the app says so once, runs the
    pipeline in-process and its records arrive."""
    key = "secret:nostart:" + secrets.token_hex(4)
    fails = str(HERE / "data" / "agent_fails")
    with otlp_receiver() as rx:
        env = env_for(rx, redis_url, tmp_path, PYTHONPATH=fails)
        proc = subprocess.run([str(BIN / "opentelemetry-instrument"), sys.executable, "-c",
                               "import os, sys, time, redis, secret_audit\n"
                               "time.sleep(2)\n"  # the agent has exited by now
                               "c = redis.Redis.from_url(os.environ['REDIS_URL'])\n"
                               f"[c.get({key!r}) for _ in range(3)]\n"
                               "secret_audit.flush(10)\n"
                               "print('stats', __import__('json').dumps(secret_audit.stats(), default=str))\n"],
                              env=env, capture_output=True, text=True, timeout=60)
        records = records_when(rx, 3)
    assert proc.returncode == 0, proc.stderr
    assert "agent_fails: this agent exits at start" in proc.stderr
    assert proc.stderr.count("the audit agent is gone: it exited before serving this process") == 1, proc.stderr
    assert "exited with status 3" in proc.stderr
    assert said(proc.stdout, "stats")[0]["agent"]["mode"] == "in-process"
    assert [r["attributes"]["secret.name"] for r in records] == [key] * 3


def test_records_name_the_apps_resource_and_stats_name_the_agent_at_once(redis_url, tmp_path):
    """The agent's records carry the resource of the app's tracer provider (set in code here, so the
    agent could not read it from the environment), and stats() right after start names the agent."""
    key = "secret:resource:" + secrets.token_hex(4)
    code = (
        "import json, os, redis, secret_audit\n"
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.resources import Resource\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "trace.set_tracer_provider(TracerProvider(resource=Resource({'service.name': 'named-in-code',"
        " 'service.instance.id': 'instance-7'})))\n"
        "from secret_audit.redis import RedisSecretAuditInstrumentor\n"
        "RedisSecretAuditInstrumentor().instrument()\n"
        "print('stats', json.dumps(secret_audit.stats(), default=str), flush=True)\n"
        f"redis.Redis.from_url(os.environ['REDIS_URL']).get({key!r})\n"
    )
    with otlp_receiver() as rx:
        env = {k: v for k, v in env_for(rx, redis_url, tmp_path).items() if not k.startswith("OTEL_SERVICE")}
        env[P + "EXPORTER_OTLP_ENDPOINT"] = rx.url + "/v1/logs"
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        records = records_when(rx, 1)
    assert proc.returncode == 0, proc.stderr
    stats = said(proc.stdout, "stats")[0]
    assert stats["agent"]["mode"] == "process"
    assert isinstance(stats["agent"]["pid"], int)
    assert isinstance(stats["stream_id"], str)
    assert len(records) == 1
    assert records[0]["resource"]["service.name"] == "named-in-code"
    assert records[0]["resource"]["service.instance.id"] == "instance-7"
    assert records[0]["attributes"]["audit.stream.id"] == stats["stream_id"]


def test_the_ring_reuses_a_slot_only_once_settled_and_takes_none_once_sealed():
    """The app's bound is what its agent has not settled (not what it has read), so the slots a
    dead agent had read are still there to build; once sealed, no slot is handed out."""
    from secret_audit._internal.ring import SEALED, SETTLED, SLOTS, TAIL, Ring, open_ring

    fd, mm = open_ring()
    os.close(fd)
    app, agent = Ring(mm), Ring(mm)
    for i in range(SLOTS):
        idx = app.reserve()
        app.write(idx, 0, i, i + 1, 0, 0, 0, (i % 7,))
    while agent.read() is not None:
        pass
    agent.set_word(TAIL, agent.next)  # everything read, nothing settled
    assert agent.next == SLOTS
    assert app.reserve() == -1  # full: before, the tail freed every slot here
    assert app.slot(0) == (0, 0, 0, 1, 0, 0, 0, (0,), 0)
    agent.set_word(SETTLED, 1)
    assert app.reserve() == SLOTS  # one settled, one slot free
    assert app.reserve() == -1
    assert app.seal() == SLOTS + 1
    agent.set_word(SETTLED, SLOTS)
    assert app.reserve() == SEALED
    assert app.reserve_within(0.01, None) == SEALED
    assert app.slot(SLOTS) is None  # reserved, never committed
    mm.close()


def test_a_store_verifies_both_streams_of_an_app_whose_agent_died(redis_url, tmp_path, store):  # noqa: F811
    """The real store, a signed trail: the agent's stream ends at what it settled, the app's new stream
    holds the rest and starts with a record naming where the agent's ended; ``secret-audit verify`` finds
    no gap and no other finding in either, and tells that end from a cut tail: a superuser who deletes
    the dead stream's last records and sets its head back (undetectable before) is caught, signed or not."""
    import psycopg

    from secret_audit.signing import generate_key

    key = "secret:verified:" + secrets.token_hex(4)
    service = "agent-test"  # env_for's; the store's database is this test's own
    signing = tmp_path / "signing.pem"
    generate_key(signing)
    store.start()
    with otlp_receiver() as rx:
        proc = run(rx, redis_url, tmp_path, key, "5", "agent-dies",
                   **{P + "EXPORTER_OTLP_ENDPOINT": store.endpoint, P + "EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                      P + "EXPORTER_OTLP_HEADERS": f"authorization=Bearer%20{store.ingest_token}",
                      P + "SIGNING_KEY_FILE": str(signing), P + "CHECKPOINT_RECORDS": "2"})
    assert proc.returncode == 0, proc.stderr
    deadline = time.monotonic() + 30
    while len([r for r in store.rows(service) if r[2] != "audit.checkpoint"]) < 14 and time.monotonic() < deadline:
        time.sleep(0.1)
    rows = store.rows(service)
    accesses = [r for r in rows if r[2] == "secret.access"]
    assert Counter(name for *_, name, _ in accesses) == {key: 6, key + ":unsettled": 5, key + ":after": 2}
    heads = store_contiguous(rows)
    (link,) = [r for r in rows if r[2] == "audit.stream.continued"]
    dead = link[4]["audit.stream.predecessor.id"]
    assert (link[1], link[4]["audit.stream.predecessor.sequence"]) == (1, heads[dead])
    assert_clean(store, heads)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTEST_"))}

    def verify() -> dict[str, Any]:
        done = subprocess.run([str(BIN / "secret-audit"), "verify", "--json", "--public-key", f"{signing}.pub"],
                              env={**env, "DATABASE_URL": store.db_url}, capture_output=True, text=True,
                              timeout=120)
        report: dict[str, Any] = json.loads(done.stdout)
        assert done.returncode == (0 if report["ok"] else 1), done.stderr
        return report

    report = verify()
    assert (report["ok"], report["breaks"], report["open_gaps"], report["reported_losses"]) == (True, 0, [], 0)
    signed = report["signed"]
    assert (signed["ok"], signed["breaks"], signed["streams"], signed["continued"]) == (True, 0, 2, 1), signed
    assert "not_final" not in {w["kind"] for w in signed["warning_details"]}, signed  # its end is explained
    # the attack: a superuser deletes the dead stream's last two records and sets its head back to match
    cut = heads[dead] - 2
    with psycopg.connect(store.db_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        cut_tail(conn, dead, 2)
    report = verify()
    assert not report["ok"]
    unsigned = [(b["kind"], b["stream_id"], b["sequence"]) for b in report["details"]]
    assert unsigned == [("cut", dead, cut + 1)], report
    signed_breaks = [(b["kind"], b["stream_id"], b.get("sequence")) for b in report["signed"]["details"]]
    assert ("cut", dead, cut + 1) in signed_breaks, report["signed"]  # and unsigned_stream when its checkpoint went


def test_an_exit_before_the_agent_made_the_records_durable_is_said(redis_url, tmp_path):
    """An endpoint that takes the connection and never answers holds the agent's send; the app waits
    SHUTDOWN_TIMEOUT_MS at exit, as in-process, then says on stderr what its agent still holds (lost
    if the agent died before making it durable); the agent spools it once the send times out."""
    import socket

    key = "secret:exit-late:" + secrets.token_hex(4)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # connections complete in the backlog; nothing ever answers
    try:
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}/v1/logs"
        with otlp_receiver() as rx:
            started = time.monotonic()
            proc = run(rx, redis_url, tmp_path, key, "50", "exit",
                       **{P + "SHUTDOWN_TIMEOUT_MS": "500", P + "EXPORTER_OTLP_ENDPOINT": endpoint})
            took = time.monotonic() - started
    finally:
        silent.close()
    assert proc.returncode == 0, proc.stderr
    assert "handed-off accesses were not yet durable when this process stopped waiting" in proc.stderr
    assert "SHUTDOWN_TIMEOUT_MS, 500 ms" in proc.stderr
    assert "lost if it dies first" in proc.stderr
    # and the agent, no longer bound by the app's exit timeout, waits out the send, then spools all
    assert "51 audit records wait in the spool" in proc.stderr
    assert "lost" not in proc.stderr.replace("lost if it dies first", "")
    assert took < 40, took


_STATS_APP = """
import json, os, time, redis, secret_audit
client = redis.Redis.from_url(os.environ["REDIS_URL"])
key = os.environ["KEY"]
client.set(key, "s3cr3t-stats-canary")
for _ in range(5):
    client.get(key)
client.mget(key, key + ":missing")
assert secret_audit.flush(30)
stats = secret_audit.stats()
deadline = time.monotonic() + 5  # the ledger counts a batch just after its fail-closed callers are released
while stats["exported"] < stats["sequence"] and time.monotonic() < deadline:
    time.sleep(0.01)
    stats = secret_audit.stats()
print("stats", json.dumps(stats, default=str), flush=True)
"""


def test_stats_carry_the_same_keys_and_counts_with_the_agent_as_in_process(redis_url, tmp_path):
    """stats() of an app served by an agent has every key of the in-process pipeline's, and the stream's
    counts (sequence, exported, per-kind records) are the same for the same accesses."""
    app = tmp_path / "stats_app.py"
    app.write_text(_STATS_APP)
    got = {}
    for mode in ("off", "process"):
        with otlp_receiver() as rx:
            env = env_for(rx, redis_url, tmp_path, KEY="secret:stats:" + secrets.token_hex(4), **{P + "AGENT": mode})
            proc = subprocess.run([str(BIN / "opentelemetry-instrument"), sys.executable, str(app)], env=env,
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
            got[mode] = said(proc.stdout, "stats")[0]
            assert len(records_when(rx, got[mode]["sequence"])) == got[mode]["sequence"]
    local, agent = got["off"], got["process"]
    assert agent["agent"]["mode"] == "process"
    assert set(local) <= set(agent), set(local) - set(agent)
    assert agent["spool"] == local["spool"] == {"batches": 0, "records": 0, "bytes": 0}  # the stream's spool: empty
    assert local["sequence"] == agent["sequence"] >= 8  # SET, 5 GETs, MGET of 2 keys
    for key in ("exported", "lost_export", "internal_errors", "spooled", "checkpoints_signed"):
        assert local[key] == agent[key], key
    assert agent["exported"] == agent["sequence"]

    def by_kind(stats):
        return sorted((json.dumps(row["attributes"], sort_keys=True), row["created"], row["exported"])
                      for row in stats["records"])

    assert by_kind(local) == by_kind(agent) != []
    assert "s3cr3t-stats-canary" not in json.dumps(agent)


_METRICS_APP = """
import json, os, redis, secret_audit
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from secret_audit.redis import RedisSecretAuditInstrumentor
reader = InMemoryMetricReader()
RedisSecretAuditInstrumentor().instrument(meter_provider=MeterProvider(metric_readers=[reader]))
client = redis.Redis.from_url(os.environ["REDIS_URL"])
for _ in range(4):
    client.get(os.environ["KEY"])
assert secret_audit.flush(30)
points = {}
for rm in reader.get_metrics_data().resource_metrics:
    for sm in rm.scope_metrics:
        for m in sm.metrics:
            if m.name.startswith("secret_audit.record."):
                points[m.name] = sorted((json.dumps(dict(p.attributes), sort_keys=True), p.value)
                                        for p in m.data.data_points)
print("metrics", json.dumps(points), flush=True)
"""


def test_the_apps_record_metrics_are_the_same_with_the_agent(redis_url, tmp_path):
    """The app's secret_audit.record.* metrics read stats()'s counts: with the agent they are its stream's."""
    got = {}
    for mode in ("off", "process"):
        env = {**os.environ, "REDIS_URL": redis_url, "KEY": "secret:metrics:" + secrets.token_hex(4),
               P + "AGENT": mode, P + "EXPORTER": "none", "XDG_STATE_HOME": str(tmp_path / "state")}
        proc = subprocess.run([sys.executable, "-c", _METRICS_APP], env=env, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        got[mode] = said(proc.stdout, "metrics")[0]
    assert got["process"] == got["off"]
    assert [value for _, value in got["off"]["secret_audit.record.created"]] == [4]
