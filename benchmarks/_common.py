"""Shared benchmark plumbing: real servers, a sink process for OTLP, interleaved timing."""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from servers import free_port, valkey_server, wait_port  # noqa: E402

__all__ = [
    "Samples",
    "as_installed",
    "drain",
    "free_port",
    "interleave",
    "launcher_env",
    "otlp_grpc_sink",
    "otlp_sink",
    "report",
    "valkey_server",
    "wait_port",
]

T = TypeVar("T")

_SINK = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


@contextlib.contextmanager
def _sink_process(script: str) -> Iterator[str]:
    """A sink script run in another process (so it costs us no CPU), listening on a free port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", script, str(port)])
    wait_port(port, proc)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(5)


def otlp_sink() -> contextlib.AbstractContextManager[str]:
    """An OTLP/HTTP endpoint in another process that accepts and discards."""
    return _sink_process(_SINK)


_GRPC_SINK = r"""
import sys, time
from concurrent import futures
import grpc
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers([
    grpc.method_handlers_generic_handler(f"opentelemetry.proto.collector.{service}",
                                         {"Export": grpc.unary_unary_rpc_method_handler(lambda body, ctx: b"")})
    for service in ("logs.v1.LogsService", "trace.v1.TraceService")])
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
server.wait_for_termination()
"""


def otlp_grpc_sink() -> contextlib.AbstractContextManager[str]:
    """The same sink over OTLP/gRPC (the SDK's default protocol): Export answered, the request discarded."""
    return _sink_process(_GRPC_SINK)


class Samples(dict[str, list[float]]):
    """Per-operation times by variant (µs), with ``rounds``: each round's mean cost per operation."""

    def __init__(self, names: list[str]) -> None:
        super().__init__((name, []) for name in names)
        self.rounds: dict[str, list[float]] = {name: [] for name in names}


def interleave(
    variants: dict[str, tuple[Callable[[], None], Callable[[], None]]],
    op: Callable[[], object],
    *,
    rounds: int,
    per_round: int,
    settle: Callable[[], None] | None = None,
) -> Samples:
    """Time ``op`` under each variant, rotating variants every round.

    Besides each call's own time, a round's mean cost per operation is its wall time plus the CPU
    this process spends in ``settle`` (flushing what the round left queued), over its operations:
    work a background thread does on the app's GIL shows there, not in the per-call median.
    """
    samples = Samples(list(variants))
    names = list(variants)
    clock = time.perf_counter_ns
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            enter, leave = variants[name]
            enter()
            try:
                for _ in range(per_round // 10):  # warm-up
                    op()
                out = samples[name]
                started = clock()
                for _ in range(per_round):
                    t0 = clock()
                    op()
                    out.append((clock() - t0) / 1000)
                wall = clock() - started
                cpu = time.process_time_ns()
                if settle is not None:
                    settle()
                deferred = time.process_time_ns() - cpu
                samples.rounds[name].append((wall + deferred) / per_round / 1000)
            finally:
                leave()
    return samples


def report(title: str, samples: dict[str, list[float]], baseline: str) -> dict[str, float]:
    """Print, per variant, the median over rounds of the mean cost per op (it leads: that is the
    app's throughput), its ratio to the baseline and the range of the rounds' ratios, then the
    median per op and p99; return the ratios (``name`` mean-based, ``name:median`` per-op) and ``name:us``, the mean in µs."""
    per_round = getattr(samples, "rounds", None) or {n: [statistics.fmean(v)] for n, v in samples.items()}
    base = statistics.median(per_round[baseline])
    base_med = statistics.median(samples[baseline])
    n_rounds = len(per_round[baseline])
    print(f"\n{title}  ({n_rounds} rounds, {len(samples[baseline])} operations per variant)")
    print(
        f"  {'variant':<24} {'mean/op':>9} {'ratio':>6} {'rounds':>11}  {'median':>9} {'ratio':>6}  {'p99':>9}"
    )
    ratios = {}
    for name, values in samples.items():
        mean = statistics.median(per_round[name])
        # each round against the baseline's round of the same index: the machine drifts between rounds
        paired = [m / b for m, b in zip(per_round[name], per_round[baseline], strict=True)]
        med = statistics.median(values)
        p99 = statistics.quantiles(values, n=100)[98]
        ratios[name] = mean / base
        ratios[name + ":median"] = med / base_med
        ratios[name + ":spread"] = max(paired) - min(paired)
        ratios[name + ":us"] = mean
        print(
            f"  {name:<24} {mean:7.1f}µs {mean / base:5.2f}x {min(paired):5.2f}-{max(paired):4.2f}"
            f"  {med:7.1f}µs {med / base_med:5.2f}x  {p99:7.1f}µs"
        )
    return ratios


# The test environment installs the grpc instrumentation for the GCP tests. An app that does not
# use grpc would not have it, and it imports grpc itself, which would hide an import of ours.
GRPC_INSTRUMENTATIONS = "grpc_client,grpc_server,grpc_aio_client,grpc_aio_server"


def launcher_env(sink: str, disabled: str = "", **extra: str) -> dict[str, str]:
    """An ``opentelemetry-instrument`` app's environment, exporting OTLP/HTTP to ``sink`` (so the
    distro needs no grpc), with the grpc instrumentations and ``disabled`` entry points off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_SERVICE_NAME="bench",
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_LOGS_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="none",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=sink,
        OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT=sink + "/v1/logs",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=",".join(filter(None, (GRPC_INSTRUMENTATIONS, disabled))),
    )
    env.update(extra)
    return env


def as_installed() -> None:
    """Byte-compile our package, as installing a wheel does: the project is installed editable here and
    this machine sets PYTHONDONTWRITEBYTECODE, so without this every process the start-up and memory
    benchmarks start would compile our ~45 modules from source (about 40 ms, and the compiler's
    garbage), which no installed copy does; every other package is already compiled."""
    import compileall

    compileall.compile_dir(str(ROOT / "src" / "secret_audit"), quiet=1)


def verdict(value: float, target: float, at_most: bool = True) -> str:
    """Whether a figure meets its goal of issue 19, in the words every summary line ends with."""
    return "met" if (value <= target if at_most else value >= target) else "NOT met"


def env_flag(name: str, default: str) -> str:
    return os.environ.get(name, default)


def drain(
    items: list[T], threads: int, session: Callable[[], contextlib.AbstractContextManager[Callable[[T], None]]]
) -> tuple[float, float]:
    """Work through the items in order with ``threads`` threads, each holding one ``session`` (a
    connection, say) that yields the function handling one item; the first failure is raised.
    Returns the clock at start and at end."""
    todo = list(reversed(items))
    lock = threading.Lock()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            with session() as handle:
                while True:
                    with lock:
                        if not todo:
                            return
                        item = todo.pop()
                    handle(item)
        except BaseException as exc:
            failures.append(exc)

    started = time.perf_counter()
    running = [threading.Thread(target=run) for _ in range(threads)]
    for t in running:
        t.start()
    for t in running:
        t.join()
    if failures:
        raise failures[0]
    return started, time.perf_counter()
