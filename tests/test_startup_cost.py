"""Start-up and memory (issue 19): what an instrumented process and the audit agent import, and
what the agent keeps per app.

Each import case runs in a fresh interpreter, since this test session has imported everything.
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
# What only the first Secret Manager client, a spool or the agent's own spans need.
NOT_AT_START = ("secret_audit._internal.gcp_source", "secret_audit._internal.spool", "sqlite3")


def _loaded(code: str, env: dict[str, str], *, launcher: bool) -> dict[str, bool]:
    argv = [sys.executable, "-c", code]
    if launcher:
        argv = [str(BIN / "opentelemetry-instrument"), *argv]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_an_app_that_uses_redis_only_imports_neither_the_gcp_wrappers_nor_the_spool_at_start(redis_url, tmp_path):
    env = launcher_env("http://127.0.0.1:9", redis_url, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=GRPC,
                       OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR=str(tmp_path / "spool"))
    code = ("import json, sys, redis\n"
            f"print(json.dumps({{m: m in sys.modules for m in {NOT_AT_START!r} + ('secret_audit.redis',)}}))\n")
    loaded = _loaded(code, env, launcher=True)
    assert loaded == {**dict.fromkeys(NOT_AT_START, False), "secret_audit.redis": True}


# With the agent (the default), what only the in-process pipeline needs: imported only where the agent
# cannot serve the app. And the agent itself starts at the first hand-off, not at start.
# The Redis command table (its key specifications' JSON): read at the first command an app sends.
IN_PROCESS = ("secret_audit._internal.pipeline", "secret_audit._internal.delivery",
              "secret_audit._internal.senders", "secret_audit._internal.ring_stream",
              "secret_audit._internal.redis_keyspecs")
_CHILDREN = ("import os\n"
             "def children():\n"
             "    out = []\n"
             "    for pid in filter(str.isdigit, os.listdir('/proc')):\n"
             "        try:\n"
             "            with open(f'/proc/{pid}/stat') as f:\n"
             "                if int(f.read().rsplit(')', 1)[1].split()[1]) == os.getpid():\n"
             "                    out.append(pid)\n"
             "        except OSError:\n"
             "            pass\n"
             "    return len(out)\n")


def test_an_app_that_audits_nothing_starts_no_agent_and_imports_no_in_process_pipeline(redis_url, tmp_path):
    """Before, ``instrument()`` started the agent (its interpreter's start-up beside the app's on this
    2-core machine), imported the in-process pipeline's modules, built the Redis command table, and
    exit waited for the agent's answer."""
    env = launcher_env("http://127.0.0.1:9", redis_url, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=GRPC,
                       OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR=str(tmp_path / "spool"))
    code = (_CHILDREN + "import json, sys, redis\n"
            f"print(json.dumps({{'children': children(), **{{m: m in sys.modules for m in {IN_PROCESS!r}}}}}))\n")
    assert _loaded(code, env, launcher=True) == {"children": 0, **dict.fromkeys(IN_PROCESS, False)}


def test_a_process_that_forks_builds_the_command_table_first_for_its_children_to_share(redis_url, tmp_path):
    """Built lazily, the table was built by each gunicorn worker at its first command, 8 private copies
    where the master's one was shared: about 10 MiB more for 8 workers (bench_memory.py)."""
    env = launcher_env("http://127.0.0.1:9", redis_url, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=GRPC,
                       OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR=str(tmp_path / "spool"), OTEL_PYTHON_SECRET_AUDIT_AGENT="off")
    code = ("import json, os, sys, redis\n"
            "m = sys.modules['secret_audit._internal.redis_commands']\n"
            "before = 'COMMANDS' in vars(m)\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os._exit(0 if 'COMMANDS' in vars(m) else 3)\n"
            "_, status = os.waitpid(pid, 0)\n"
            "print(json.dumps({'before': before, 'child': os.waitstatus_to_exitcode(status)}))\n")
    assert _loaded(code, env, launcher=True) == {"before": False, "child": 0}


def test_the_agent_starts_with_the_pipeline_where_a_first_call_must_not_wait_for_it(redis_url, tmp_path):
    """Fail-closed: a first call would otherwise wait for the agent's interpreter to start. (A leftover
    spool starts it too: tests/test_spool.py, replayed by a process that audits nothing.)"""
    env = launcher_env("http://127.0.0.1:9", redis_url, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=GRPC,
                       OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR=str(tmp_path / "spool"),
                       OTEL_PYTHON_SECRET_AUDIT_FAILURE_MODE="closed", OTEL_PYTHON_SECRET_AUDIT_SHUTDOWN_TIMEOUT_MS="500")
    code = _CHILDREN + "import json, redis\nprint(json.dumps({'children': children()}))\n"
    assert _loaded(code, env, launcher=True) == {"children": 1}


def test_a_leftover_spool_is_still_found_at_start_without_importing_the_spool_first(redis_url, tmp_path):
    from secret_audit._internal.spool import Spool
    from secret_audit._internal.spooldir import SPOOL_FILE

    assert Spool.FILENAME == SPOOL_FILE  # the name start-up looks for is the spool's own


def test_the_agent_imports_neither_the_sdk_trace_package_unless_it_makes_spans_nor_asyncio():
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    code = ("import json, sys\nimport secret_audit._internal.agent\n"
            "print(json.dumps({m: m in sys.modules for m in ('opentelemetry.sdk.trace', 'asyncio', "
            "'opentelemetry.sdk.resources', 'psutil')}))\n")
    assert not any(_loaded(code, env, launcher=False).values())


# What the agent runs (its streams, the fast sink's sender, the engine, our span shipper) without the API:
# the agent's environment drops the launcher's sitecustomize, so nothing instrumented is loaded into it.
_AGENT_RUNS = """
import json, sys
import secret_audit._internal.agent
from secret_audit._internal.agent_span_otlp import SpanShipper
from secret_audit._internal.config import load_settings
from secret_audit._internal.export import PlainResource
from secret_audit._internal.ring_stream import SlotPipeline
stream = SlotPipeline(load_settings({}), {"service.name": "w"}, records_resource=PlainResource({"service.name": "w"}))
stream._prepare()
SpanShipper.shared()
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("opentelemetry", "urllib3")
                        or m in ("urllib.request", "importlib.metadata", "subprocess", "secret_audit.context"))))
"""


def test_the_agent_runs_without_the_opentelemetry_api_urllib3_or_urllib_request():
    """About 3.5 MiB of the agent's private memory (section 20 of docs/design/pipeline.md): the OTel API
    (context, trace, metrics, logs, baggage) was imported only for types, a context key no instrumentation
    in the agent reads, and meters it never registers; urllib3 (with importlib.metadata through its HTTP/2
    probe) for a connection pool; urllib.request only to read ``*_proxy`` variables; subprocess to spawn."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and not k.lower().endswith("_proxy")}
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"
    proc = subprocess.run([sys.executable, "-c", _AGENT_RUNS], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_the_agents_plain_resource_makes_the_records_bytes_the_sdk_resource_made():
    """The agent names an app's resource without the SDK's Resource (whose module imports psutil): the
    records' requests are the same bytes, and a resource without an instance id gets one as merge adds it."""
    from opentelemetry.sdk.resources import Resource

    from secret_audit._internal.export import PlainResource, audit_resource
    from secret_audit._internal.otlp import RecordData
    from secret_audit._internal.sinks import FastSink

    attrs = {"service.name": "w", "service.instance.id": "i", "process.pid": 7, "process.command_args": ["a", "b"],
             "x.ratio": 0.5, "x.flag": True, "telemetry.sdk.language": "python"}
    record = RecordData(1, 2, 9, "INFO", "body", {"a": "b"}, 3, 4, 1, "secret.access")

    class Keep:
        endpoint, problem = "keep", None

        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def send(self, body: bytes) -> str:
            self.sent.append(body)
            return "ok"

    def sent(resource: object) -> bytes:
        sender = Keep()
        sink = FastSink(resource, "secret_audit", "1", sender)  # type: ignore[arg-type]
        sink.add(record)
        sink.send(sink.seal())
        return sender.sent[0]

    assert sent(PlainResource(attrs)) == sent(Resource(attrs)) != b""
    no_id = {k: v for k, v in attrs.items() if k != "service.instance.id"}
    plain, sdk = audit_resource(None, PlainResource(no_id)), audit_resource(None, Resource(no_id))
    assert list(plain.attributes)[:-1] == list(sdk.attributes)[:-1] == list(no_id)
    assert list(plain.attributes)[-1] == list(sdk.attributes)[-1] == "service.instance.id"


_MAKERS = """
import json, sys
from secret_audit._internal.agent_spans import SpanMaker
makers = [SpanMaker.for_resource({"service.name": "w", "service.instance.id": str(i)}) for i in range(8)]
processors = {id(p) for m in makers for p in m.provider._active_span_processor._span_processors}
for i, maker in enumerate(makers):
    maker.context(1000 + i, 2000 + i, 1, 0)
    maker.provider.get_tracer("t").start_span("audit").end()
makers[0].flush(5000)
print(json.dumps({"providers": len({id(m.provider) for m in makers}), "processors": len(processors)}))
"""


def test_the_agent_exports_every_apps_spans_through_one_batch_processor_with_each_apps_resource():
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_TRACES_EXPORTER"] = "console"
    proc = subprocess.run([sys.executable, "-c", _MAKERS], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"providers": 8, "processors": 1}
    # each span went out with its own app's resource and the ids that app chose
    for i in range(8):
        assert f'"service.instance.id": "{i}"' in proc.stdout
        assert f'"span_id": "0x{2000 + i:016x}"' in proc.stdout
