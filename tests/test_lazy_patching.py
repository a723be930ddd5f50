"""Lazy patching: the instrumentors wrap redis and google-cloud-secret-manager when the app imports
them (wrapt post-import hooks), and never import either themselves.

Each case runs in a fresh interpreter, since this test session has imported both libraries long ago.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_launcher_e2e import launcher_env

BIN = Path(sys.executable).parent
GRPC = "grpc_client,grpc_server,grpc_aio_client,grpc_aio_server"
HEAVY = ("redis", "google.cloud.secretmanager_v1", "grpc", "google.api_core")


_OURS_IN = """
from secret_audit._internal.patching import _ours
def ours_in(obj):
    # ours is innermost: another instrumentation's proxy (the official redis one) may sit on top
    for _ in range(64):
        if obj is None or _ours(obj) is not None:
            return obj is not None
        obj = getattr(obj, "__wrapped__", None)
    return False
"""


def _run(code: str, env: dict[str, str] | None = None, *, launcher: bool = False) -> dict[str, object]:
    argv = [sys.executable, "-c", _OURS_IN + code]
    if launcher:
        argv = [str(BIN / "opentelemetry-instrument"), *argv]
    proc = subprocess.run(
        argv, env=env or {**os.environ, "OTEL_PYTHON_SECRET_AUDIT_EXPORTER": "none"},
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_a_process_under_the_launcher_that_uses_neither_library_imports_neither(redis_url):
    # The grpc instrumentation imports grpc itself, and the official redis one imports redis: an app
    # that uses neither library would have neither installed. Ours stay on.
    env = launcher_env("http://127.0.0.1:9", redis_url, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=GRPC + ",redis")
    code = "import json, sys; print(json.dumps({m: m in sys.modules for m in HEAVY}))"
    loaded = _run(code.replace("HEAVY", repr(HEAVY)), env, launcher=True)
    assert loaded == dict.fromkeys(HEAVY, False)


def test_an_app_that_imports_redis_under_the_launcher_gets_it_wrapped_and_still_no_gcp(redis_url):
    env = launcher_env("http://127.0.0.1:9", redis_url, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=GRPC)
    code = (
        "import json, sys, redis\n"
        "wrapped = ours_in(redis.client.Redis.__dict__['execute_command'])\n"
        "print(json.dumps({'wrapped': wrapped, 'gcp': 'google.cloud.secretmanager_v1' in sys.modules,"
        " 'grpc': 'grpc' in sys.modules}))\n"
    )
    assert _run(code, env, launcher=True) == {"wrapped": True, "gcp": False, "grpc": False}


_BEFORE = """
import json, os, sys
import secret_audit
from secret_audit.gcp import GcpSecretManagerSecretAuditInstrumentor
from secret_audit.redis import RedisSecretAuditInstrumentor
ours = RedisSecretAuditInstrumentor(), GcpSecretManagerSecretAuditInstrumentor()
for inst in ours:
    inst.instrument()
out = {"imported by instrument()": [m for m in HEAVY if m in sys.modules]}
import redis
from google.cloud.secretmanager_v1.services.secret_manager_service import (
    SecretManagerServiceAsyncClient, SecretManagerServiceClient)
def state():
    return {
        "redis": ours_in(redis.client.Redis.__dict__["execute_command"]),
        "redis.asyncio": ours_in(redis.asyncio.client.Redis.__dict__["execute_command"]),
        "gcp": ours_in(SecretManagerServiceClient.__dict__["access_secret_version"]),
        "gcp async": ours_in(SecretManagerServiceAsyncClient.__dict__["access_secret_version"]),
    }
out["after import"] = state()
client = redis.Redis.from_url(os.environ["REDIS_URL"])
client.get("secret:lazy")
assert secret_audit.flush(30)
out["records"] = secret_audit.stats()["sequence"]
for inst in ours:
    inst.uninstrument()
out["after uninstrument"] = state()
print(json.dumps(out))
""".replace("HEAVY", repr(HEAVY))


def test_instrumenting_before_the_import_wraps_at_the_import_and_uninstrument_restores(redis_url):
    out = _run(_BEFORE, {**os.environ, "OTEL_PYTHON_SECRET_AUDIT_EXPORTER": "none", "REDIS_URL": redis_url})
    assert out["imported by instrument()"] == []
    assert out["after import"] == {"redis": True, "redis.asyncio": True, "gcp": True, "gcp async": True}
    assert out["records"] == 1  # the wrapper made at import time audits for real
    assert out["after uninstrument"] == {"redis": False, "redis.asyncio": False, "gcp": False, "gcp async": False}


def test_instrumenting_after_the_import_still_wraps_and_uninstrument_before_the_import_disarms():
    code = """
import json, sys
from secret_audit.gcp import GcpSecretManagerSecretAuditInstrumentor
from secret_audit.redis import RedisSecretAuditInstrumentor
import redis  # imported before instrument(): wrapped at once
r, g = RedisSecretAuditInstrumentor(), GcpSecretManagerSecretAuditInstrumentor()
r.instrument()
g.instrument()
g.uninstrument()  # before google-cloud-secret-manager is imported: nothing may be wrapped later
from google.cloud.secretmanager_v1.services.secret_manager_service import SecretManagerServiceClient
print(json.dumps({
    "redis": ours_in(redis.client.Redis.__dict__["execute_command"]),
    "gcp": ours_in(SecretManagerServiceClient.__dict__["access_secret_version"]),
}))
"""
    assert _run(code) == {"redis": True, "gcp": False}
