"""The paths a newcomer takes keep every record: protocols, exit, console, launcher errors (issue 16)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from otlp_receiver import otlp_receiver
from secret_audit import ConfigurationError
from secret_audit._internal.config import load_settings
from secret_audit.redis import RedisSecretAuditInstrumentor

BIN = Path(sys.executable).parent

THREE_LINES = """\
import os, redis
from secret_audit.redis import RedisSecretAuditInstrumentor
RedisSecretAuditInstrumentor().instrument()
redis.Redis.from_url(os.environ["REDIS_URL"]).set(os.environ["KEY"], os.environ["VALUE"])
"""

WITH_SDK = """\
import os, redis
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
trace.set_tracer_provider(TracerProvider(resource=Resource.create({"service.name": "with-sdk"})))
from secret_audit.redis import RedisSecretAuditInstrumentor
RedisSecretAuditInstrumentor().instrument()
client = redis.Redis.from_url(os.environ["REDIS_URL"])
client.set(os.environ["KEY"], os.environ["VALUE"])
client.get(os.environ["KEY"])
"""

UNDER_LAUNCHER = """\
import os, redis
client = redis.Redis.from_url(os.environ["REDIS_URL"])
client.set(os.environ["KEY"], os.environ["VALUE"])
client.get(os.environ["KEY"])
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTEST_"))}
    env.update(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none")
    env.update(extra)
    return env


def run(tmp_path: Path, code: str, *, launcher: bool = False, timeout: float = 60,
        **env: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / f"app_{secrets.token_hex(3)}.py"
    script.write_text(textwrap.dedent(code))
    argv = [sys.executable, str(script)]
    if launcher:
        argv = [str(BIN / "opentelemetry-instrument"), *argv]
    return subprocess.run(argv, env=clean_env(**env), capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture
def app_env(redis_url: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "KEY": "secret:exit:" + secrets.token_hex(4),
            "VALUE": "canary-" + secrets.token_hex(12)}


# ---- point 2: records made just before exit are exported, whatever the exit path ------------------


@pytest.mark.parametrize(("code", "launcher", "actions"), [
    pytest.param(THREE_LINES, False, ["SET"], id="three-lines-no-sdk"),
    pytest.param(WITH_SDK, False, ["SET", "GET"], id="programmatic-with-sdk-provider"),
    pytest.param(UNDER_LAUNCHER, True, ["SET", "GET"], id="launcher-with-distro"),
])
def test_records_made_just_before_exit_are_exported(tmp_path, app_env, code, launcher, actions):
    with otlp_receiver() as rx:
        proc = run(tmp_path, code, launcher=launcher,
                   OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT=rx.url + "/v1/logs", **app_env)
        assert proc.returncode == 0, proc.stderr
        records = rx.audit_records()
        raw = b"".join(rx.raw)
    assert [r["attributes"]["audit.action"] for r in records] == actions, proc.stderr
    assert "Traceback" not in proc.stderr
    assert app_env["VALUE"].encode() not in raw


# ---- point 1: the audit endpoint's protocol ---------------------------------------------------------


def test_distro_grpc_default_does_not_apply_to_our_endpoint(tmp_path, app_env):
    """The distro sets OTEL_EXPORTER_OTLP_PROTOCOL=grpc; our own OTLP/HTTP endpoint still gets HTTP."""
    with otlp_receiver() as rx:
        proc = run(tmp_path, UNDER_LAUNCHER, launcher=True, OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
                   OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT=rx.url + "/v1/logs", **app_env)
        assert proc.returncode == 0, proc.stderr
        assert [r["attributes"]["audit.action"] for r in rx.audit_records()] == ["SET", "GET"]


def test_settings_resolve_protocol_per_endpoint():
    ours = "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT"
    assert load_settings({ours: "http://h:4318/v1/logs", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
                         ).otlp_protocol == "http/protobuf"
    # the generic endpoint follows the generic protocol, as the SDK's exporter does
    assert load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4317",
                          "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}).otlp_protocol == "grpc"
    assert load_settings({ours: "http://h:4317", "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_PROTOCOL": "grpc"}
                         ).otlp_protocol == "grpc"


@pytest.mark.parametrize("env", [
    {"OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT": "http://h:4318/v1/logs",
     "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_PROTOCOL": "grpc"},
    {"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://h:4318/v1/logs", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    {"OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT": "http://h:4318"},
])
def test_a_protocol_the_endpoint_cannot_speak_stops_start_up(env):
    with pytest.raises(ConfigurationError) as info:
        load_settings(env)
    assert "ENDPOINT" in info.value.variable


def test_grpc_sent_to_an_http_endpoint_says_what_it_saw(tmp_path, app_env):
    with otlp_receiver() as rx:
        proc = run(tmp_path, THREE_LINES, OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT=rx.url,
                   OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_PROTOCOL="grpc", **app_env)
    assert proc.returncode == 0, proc.stderr
    assert "answered HTTP/1.1 to a gRPC request" in proc.stderr
    assert "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_PROTOCOL=http/protobuf" in proc.stderr
    # and the record waits in the default spool instead of being lost
    assert "1 audit record wait in the spool" in proc.stderr
    assert app_env["VALUE"] not in proc.stderr


def test_http_sent_to_a_grpc_endpoint_says_what_it_saw(tmp_path, app_env):
    server = grpc.server(futures.ThreadPoolExecutor(1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        proc = run(tmp_path, THREE_LINES,
                   OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}/v1/logs",
                   **app_env)
    finally:
        server.stop(0)
    assert proc.returncode == 0, proc.stderr
    assert "HTTP/2 frames" in proc.stderr
    assert "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_PROTOCOL=grpc" in proc.stderr


# ---- point 3: the console exporter ----------------------------------------------------------------------


def test_console_exporter_prints_every_record(tmp_path, app_env):
    proc = run(tmp_path, WITH_SDK, OTEL_PYTHON_SECRET_AUDIT_EXPORTER="console", **app_env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    decoder = json.JSONDecoder()
    text, records = proc.stdout, []
    while text.strip():
        record, end = decoder.raw_decode(text.lstrip())
        records.append(record)
        text = text.lstrip()[end:]
    assert [r["attributes"]["audit.action"] for r in records] == ["SET", "GET"]
    assert {r["event_name"] for r in records} == {"secret.access"}
    assert records[1]["attributes"]["audit.chain.prev"] == records[0]["attributes"]["audit.chain.hash"]
    assert app_env["VALUE"] not in proc.stdout


# ---- point 4 and 8: bad settings stop start-up with one line -------------------------------------------


@pytest.mark.parametrize("raw", ["open,gcp_secret_manger=closed", "gcp=closed", "closed,reddis=open"])
def test_unknown_source_names_are_refused_with_the_valid_ones(raw):
    with pytest.raises(ConfigurationError) as info:
        load_settings({"OTEL_PYTHON_SECRET_AUDIT_FAILURE_MODE": raw})
    assert "redis, gcp_secret_manager" in str(info.value)


def test_a_configuration_error_under_the_launcher_is_one_line_and_status_1(tmp_path, app_env):
    proc = run(tmp_path, UNDER_LAUNCHER, launcher=True,
               OTEL_PYTHON_SECRET_AUDIT_FAILURE_MODE="open,gcp=closed", **app_env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("otel-secret-audit: refusing to start: OTEL_PYTHON_SECRET_AUDIT_FAILURE_MODE=")
    assert "Fatal Python error" not in proc.stderr


# ---- point 12: logger_provider ------------------------------------------------------------------------


def test_logger_provider_is_refused_with_a_clear_error():
    from opentelemetry.sdk._logs import LoggerProvider

    with pytest.raises(ConfigurationError) as info:
        RedisSecretAuditInstrumentor().instrument(logger_provider=LoggerProvider())
    assert "audit_exporter" in str(info.value)
    assert not RedisSecretAuditInstrumentor().is_instrumented_by_opentelemetry
