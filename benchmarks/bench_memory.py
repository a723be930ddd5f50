"""Resident memory of an app under ``opentelemetry-instrument``, with us and without us.

1. One app process doing 20,000 GETs of a secret key (one in ten inside a request span): plain
   python, the launcher with neither our nor the official redis instrumentation, the launcher with
   ours only, and with the official one only. Each run is a fresh process; we read VmRSS and the
   peak (VmHWM) from /proc at its end. Variants alternate, three runs each.
2. A pre-fork server: gunicorn with 8 sync workers and ``--preload`` (the app, and so redis, is
   imported once before the fork in every variant alike), each request making 50 GETs, driven by 8
   client threads; then the proportional set size (PSS, which counts a page shared by n processes
   as 1/n in each) of the 8 workers, summed, and their summed RSS, read once the SDK's batch span
   processor (5 s schedule) has exported each worker's own request spans in every variant alike: read
   sooner, a variant's figure depended on whether its workers' first export (its HTTP client and
   encoder, about 2.5 MiB a worker) had happened yet, which only a slower run's workers reached. The
   goal is judged over the launcher without us, as the issue measures memory ("under the launcher
   ... bare is"); the figure over plain gunicorn (no launcher, no SDK) is printed beside it.
Records and spans go over OTLP/HTTP to a sink in another process. Our package is byte-compiled first, as
installing a wheel does (``_common.as_installed``). With the agent making the spans, the agent's own PSS is
given apart. "launcher + secret-audit (default)" is what ships (the agent, making the audit spans);
the in-process pipeline (``AGENT=off``) and the agent with spans made in the app are measured beside it;
"agent, spans by its SDK path" makes them as before our encoder (SDK span objects and queue:
``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT=128``, the SDK's default, sends the agent down the SDK's path).
The pre-fork rows are measured again with the traces over OTLP/gRPC (the SDK's default protocol: an app
sending to Jaeger or a collector on 4317), the launcher without us likewise.
Run: .venv/bin/python benchmarks/bench_memory.py (``BENCH_MEMORY_PREFORK_ONLY=1``: the gunicorn rows alone)
"""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import (
    as_installed,
    env_flag,
    free_port,
    launcher_env,
    otlp_grpc_sink,
    otlp_sink,
    valkey_server,
    verdict,
    wait_port,
)

TARGET_RSS_MIB = 10.0  # over the launcher without us
TARGET_PREFORK_MIB = 40.0  # all 8 workers together (and the agent), over the launcher without us
# Past the SDK's batch span processor's schedule (OTEL_BSP_SCHEDULE_DELAY, 5 s by default): every
# worker has exported its request spans once, in every variant, before its memory is read.
SETTLE_S = 6.0
BIN = Path(sys.executable).parent
OURS = "secret_audit_redis,secret_audit_gcp_secret_manager"
OFFICIAL = "redis"

_CHILD = r"""
import json, os, sys
import redis
from opentelemetry import trace
client = redis.Redis(port=int(os.environ["BENCH_REDIS_PORT"]))
client.set("secret:mem", b"x" * 64)
tracer = trace.get_tracer("bench")
for i in range(20000):
    if i % 10 == 0:
        with tracer.start_as_current_span("request"):
            client.get("secret:mem")
    else:
        client.get("secret:mem")
def kib(pid, field):
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status") if ":" in line)
    return int(status[field].split()[0]) / 1024
agent = 0.0
if "secret_audit" in sys.modules:  # imported only where instrumented
    sys.modules["secret_audit"].flush(60)
    pid = sys.modules["secret_audit"].stats().get("agent", {}).get("pid")
    agent = kib(pid, "VmRSS") if pid else 0.0  # the audit agent's own RSS, while it still serves us
print(json.dumps({"rss": kib("self", "VmRSS"), "hwm": kib("self", "VmHWM"), "agent": agent}))
"""

_WSGI = r"""
import os
import redis
from opentelemetry import trace

client = redis.Redis(port=int(os.environ["BENCH_REDIS_PORT"]))
tracer = trace.get_tracer("bench")

def app(environ, start_response):
    with tracer.start_as_current_span("request"):
        for _ in range(50):
            client.get("secret:mem")
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
"""


# The gRPC sink's URL, once main has started it: the pre-fork rows with traces over OTLP/gRPC use it.
GRPC_SINK: list[str] = []


def env_for(sink: str, port: int, disabled: str) -> dict[str, str]:
    disabled, _, mode = disabled.partition(":")
    env = launcher_env(sink, disabled, BENCH_REDIS_PORT=str(port))
    if mode == "grpc":  # the app's (and so the agent's) traces over OTLP/gRPC, the distro's default protocol
        env.update(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="grpc", OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=GRPC_SINK[0])
    elif mode == "in-process":
        env["OTEL_PYTHON_SECRET_AUDIT_AGENT"] = "off"
    elif mode == "app-spans":
        env["OTEL_PYTHON_SECRET_AUDIT_SPANS_VIA"] = "app"
    elif mode == "sdk-spans":  # the SDK's default limit, set: the agent makes SDK spans (agent_span_otlp)
        env["OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT"] = "128"
    return env  # no mode: our defaults (the agent, which makes the audit spans too)


OURS_DEFAULT = "launcher + secret-audit (default)"  # the audit agent, its own spans
IN_PROCESS = "launcher + secret-audit, in-process"
AGENT = "launcher + secret-audit, agent, spans in the app"
AGENT_SPANS_SDK = "launcher + secret-audit, agent, spans by its SDK path"
# name -> (under the launcher?, entry points disabled, and ":mode" for a setting away from our defaults)
VARIANTS = {
    "python, no launcher": (False, ""),
    "launcher without us": (True, f"{OURS},{OFFICIAL}"),
    OURS_DEFAULT: (True, OFFICIAL),
    IN_PROCESS: (True, OFFICIAL + ":in-process"),
    AGENT: (True, OFFICIAL + ":app-spans"),
    AGENT_SPANS_SDK: (True, OFFICIAL + ":sdk-spans"),
    "launcher + official": (True, OURS),
}
# Pre-fork only: traces over OTLP/gRPC (the SDK's default protocol, e.g. Jaeger or a collector on 4317),
# both sides alike; the agent sends its spans over gRPC itself.
GRPC_BASE, GRPC_OURS = "launcher without us, traces over gRPC", "launcher + secret-audit (default), traces over gRPC"
GRPC_VARIANTS = {GRPC_BASE: (True, f"{OURS},{OFFICIAL}:grpc"), GRPC_OURS: (True, OFFICIAL + ":grpc")}


_NOT_PREFORK_ONLY = (IN_PROCESS, "launcher + official")  # BENCH_MEMORY_PREFORK_ONLY: the agent's rows


def _argv(launched: bool, *argv: str) -> list[str]:
    return [str(BIN / "opentelemetry-instrument"), *argv] if launched else list(argv)


def one_process(sink: str, port: int) -> dict[str, dict[str, float]]:
    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for _ in range(3):
        for name, (launched, disabled) in VARIANTS.items():
            out = subprocess.run(
                _argv(launched, sys.executable, "-c", _CHILD),
                env=env_for(sink, port, disabled), capture_output=True, text=True, check=True, timeout=300,
            )
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("\none app process, 20,000 GETs (means of 3 runs)")
    means = {}
    for name, runs in results.items():
        rss, hwm = statistics.fmean(r["rss"] for r in runs), statistics.fmean(r["hwm"] for r in runs)
        agent = statistics.fmean(r["agent"] for r in runs)
        means[name] = {"rss": rss, "hwm": hwm, "agent": agent}
        low, high = min(r["rss"] for r in runs), max(r["rss"] for r in runs)
        extra = f"  + the agent's RSS {agent:.1f} MiB" if agent else ""
        print(f"  {name:<26} RSS {rss:6.1f} MiB ({low:.1f}-{high:.1f})  peak {hwm:6.1f}{extra}")
    return means


def _drive(port: int, requests: int, threads: int = 8) -> None:
    left = [requests]
    lock = threading.Lock()

    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                if left[0] <= 0:
                    break
                left[0] -= 1
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"status {resp.status}")
        conn.close()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def prefork(sink: str, port: int, name: str, launched: bool, disabled: str, appdir: str,
            ) -> tuple[float, float, float]:
    """Summed PSS and RSS (MiB) of gunicorn's 8 workers (and the agent) after 800 requests of 50 GETs each,
    and the agent's own PSS."""
    import psutil

    http_port = free_port()
    argv = _argv(launched, str(BIN / "gunicorn"), "-w", "8", "-b", f"127.0.0.1:{http_port}", "--chdir", appdir,
                 "-k", "sync", "--preload", "--graceful-timeout", "5", "bench_wsgi:app")
    proc = subprocess.Popen(argv, env=env_for(sink, port, disabled), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(http_port, proc)
        master = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        while len(master.children()) < 8 and time.monotonic() < deadline:
            time.sleep(0.1)
        _drive(http_port, 800)
        time.sleep(SETTLE_S)  # each worker's exporters have sent their batches, in every variant
        children = master.children()
        # the audit agent is the master's child too: its memory is ours, counted with the workers'
        workers = [c for c in children if "secret_audit._internal.agent" not in " ".join(c.cmdline())]
        if len(workers) != 8:
            raise RuntimeError(f"{name}: {len(workers)} workers")
        infos = [c.memory_full_info() for c in children]
        agent = sum(c.memory_full_info().pss for c in children if c not in workers)
        return sum(i.pss for i in infos) / 2**20, sum(i.rss for i in infos) / 2**20, agent / 2**20
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def main() -> int:
    as_installed()
    prefork_only = env_flag("BENCH_MEMORY_PREFORK_ONLY", "0") == "1"
    with valkey_server() as (_host, port), otlp_sink() as sink, otlp_grpc_sink() as grpc_sink:
        GRPC_SINK.append(grpc_sink)
        one = {} if prefork_only else one_process(sink, port)
        appdir = tempfile.mkdtemp(prefix="sa-bench-wsgi-")
        Path(appdir, "bench_wsgi.py").write_text(_WSGI)
        rows = {name: v for name, v in VARIANTS.items() if not prefork_only or name not in _NOT_PREFORK_ONLY}
        rows.update(GRPC_VARIANTS)
        forked: dict[str, list[tuple[float, float, float]]] = {name: [] for name in rows}
        for _ in range(3):
            for name, (launched, disabled) in rows.items():
                forked[name].append(prefork(sink, port, name, launched, disabled, appdir))
    print("\ngunicorn, 8 sync workers, 800 requests of 50 GETs (means of 3 runs; the 8 workers summed)")
    pf = {}
    for name, runs in forked.items():
        pss, rss = statistics.fmean(r[0] for r in runs), statistics.fmean(r[1] for r in runs)
        pf[name] = pss
        low, high = min(r[0] for r in runs), max(r[0] for r in runs)
        agent = statistics.fmean(r[2] for r in runs)
        extra = f"  (the agent's PSS {agent:.1f}: {', '.join(f'{r[2]:.1f}' for r in runs)})" if agent else ""
        print(f"  {name:<26} PSS {pss:6.1f} MiB ({low:.1f}-{high:.1f})  RSS {rss:6.1f} MiB{extra}")
    for name in (OURS_DEFAULT, AGENT, AGENT_SPANS_SDK):
        over = pf[name] - pf["launcher without us"]
        goal = (f"target <= +{TARGET_PREFORK_MIB:.0f} MiB: {verdict(over, TARGET_PREFORK_MIB)}" if name == OURS_DEFAULT
                else "the target is the default's")
        print(f"pre-fork, 8 gunicorn workers, {name.removeprefix('launcher + secret-audit').strip(', ')}: "
              f"{over:+.1f} MiB PSS (workers and the agent) over the launcher without us ({goal}), "
              f"{pf[name] - pf['python, no launcher']:+.1f} over plain gunicorn (the launcher alone "
              f"{pf['launcher without us'] - pf['python, no launcher']:+.1f})")
    over = pf[GRPC_OURS] - pf[GRPC_BASE]
    print(f"pre-fork, 8 gunicorn workers, traces over OTLP/gRPC (the distro's default protocol), the default: "
          f"{over:+.1f} MiB PSS (workers and the agent) over the launcher without us, traces over gRPC too "
          f"(target <= +{TARGET_PREFORK_MIB:.0f} MiB: {verdict(over, TARGET_PREFORK_MIB)})")
    if prefork_only:
        return 0
    base = one["launcher without us"]
    ours = one[OURS_DEFAULT]
    official = one["launcher + official"]
    added = ours["rss"] - base["rss"]
    print(
        f"app RSS after 20k GETs under the launcher: ours {added:+.1f} MiB over the launcher without us "
        f"(target <= +{TARGET_RSS_MIB:.0f} MiB: {verdict(added, TARGET_RSS_MIB)}; peak {ours['hwm'] - base['hwm']:+.1f}); "
        f"official {official['rss'] - base['rss']:+.1f} MiB; launcher without us {base['rss']:.1f} MiB, "
        f"plain python {one['python, no launcher']['rss']:.1f} MiB; the agent's own RSS {ours['agent']:.1f} MiB"
    )
    in_process = pf[IN_PROCESS] - pf["launcher without us"]
    print(
        f"pre-fork, 8 gunicorn workers, in-process (AGENT=off): {in_process:+.1f} MiB PSS over the launcher "
        f"without us (the target, <= +{TARGET_PREFORK_MIB:.0f} MiB, is the default's, above), "
        f"{pf[IN_PROCESS] - pf['python, no launcher']:+.1f} MiB over plain gunicorn; "
        f"official {pf['launcher + official'] - pf['launcher without us']:+.1f} MiB over the launcher without us"
    )
    for name in (IN_PROCESS, AGENT):
        added = one[name]["rss"] - base["rss"]
        agent = f", and the agent's own RSS {one[name]['agent']:.1f} MiB" if one[name]["agent"] else ""
        print(f"app RSS after 20k GETs under the launcher, {name.removeprefix('launcher + secret-audit, ')}: "
              f"{added:+.1f} MiB over the launcher without us (the target is the default's, above){agent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
