"""Start-up under ``opentelemetry-instrument`` for an app that only imports redis: with us, without us,
and with the official redis instrumentation instead.

The same launcher and environment, with neither our two entry points nor the official redis one,
with ours only, and with the official one only (``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``), run
alternately; each run is a whole process, timed from spawn to exit, its peak memory read from the
kernel (``ru_maxrss`` of the reaped child). The app prints whether google-cloud-secret-manager or
grpc got imported, since it never uses them. The goal is judged on the mean of the run-by-run
differences (run i of each variant against run i of the launcher without us).
Our package is byte-compiled first, as installing a wheel does (``_common.as_installed``): installed
editable, on a machine that sets PYTHONDONTWRITEBYTECODE, each run would otherwise compile it from source.
Run: .venv/bin/python benchmarks/bench_startup.py   (BENCH_STARTUP_RUNS, default 21: on this VM two processes
of one variant differ by up to 150 to 300 ms, and 9 pairs moved the mean by tens of ms from run to run)
grpc's instrumentations are off in every launcher variant.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import as_installed, launcher_env, otlp_sink, verdict

TARGET_MS = 50.0
TARGET_MIB = 8.0
OURS = "secret_audit_redis,secret_audit_gcp_secret_manager"
OFFICIAL = "redis"
_APP = "import sys, redis; print(int('grpc' in sys.modules), int('google.cloud.secretmanager_v1' in sys.modules))"


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MiB (the reaped child's own rusage) and what the process printed."""

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        pid = os.posix_spawn(
            argv[0], argv, env,
            file_actions=[(os.POSIX_SPAWN_DUP2, out.fileno(), 1), (os.POSIX_SPAWN_DUP2, err.fileno(), 2)],
        )
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if status != 0:
            raise RuntimeError(f"{argv} exited with {status}: {err.read().decode(errors='replace')[-2000:]}")
        return wall, usage.ru_maxrss / 1024, out.read().decode().strip()


def main() -> int:
    runs = int(os.environ.get("BENCH_STARTUP_RUNS", "21"))
    as_installed()
    launcher = str(Path(sys.executable).parent / "opentelemetry-instrument")
    argv = [launcher, sys.executable, "-c", _APP]
    plain = [sys.executable, "-c", _APP]
    with otlp_sink() as sink:
        variants = {
            "python, no launcher": (plain, launcher_env(sink, "")),
            "launcher without us": (argv, launcher_env(sink, f"{OURS},{OFFICIAL}")),
            "launcher + secret-audit": (argv, launcher_env(sink, OFFICIAL)),
            "launcher + official": (argv, launcher_env(sink, OURS)),
        }
        results: dict[str, list[tuple[float, float, str]]] = {name: [] for name in variants}
        for cmd, env in variants.values():  # warm-up: the page cache, .pyc files
            run_once(cmd, env)
        for _ in range(runs):
            for name, (cmd, env) in variants.items():
                results[name].append(run_once(cmd, env))
    print(f"\nstart-up of `import redis` ({runs} alternating runs each; medians, min-max)")
    for name, values in results.items():
        walls = [v[0] * 1000 for v in values]
        peaks = [v[1] for v in values]
        grpc, gcp = values[-1][2].split()
        print(
            f"  {name:<24} {statistics.median(walls):6.0f} ms ({min(walls):.0f}-{max(walls):.0f})"
            f"  peak {statistics.median(peaks):6.1f} MiB ({min(peaks):.1f}-{max(peaks):.1f})"
            f"  grpc imported: {'yes' if grpc == '1' else 'no'}, secretmanager imported: {'yes' if gcp == '1' else 'no'}"
        )
    without = results["launcher without us"]

    def over(name: str) -> tuple[float, float, float, float]:
        """Mean and median of the added ms and MiB, run by run, so that a drift of the machine cancels out."""
        ms = [(a[0] - b[0]) * 1000 for a, b in zip(results[name], without, strict=True)]
        mib = [a[1] - b[1] for a, b in zip(results[name], without, strict=True)]
        return statistics.fmean(ms), statistics.median(ms), statistics.fmean(mib), statistics.median(mib)

    ms, ms_median, mib, mib_median = over("launcher + secret-audit")
    o_ms, _, o_mib, _ = over("launcher + official")
    print(
        f"start-up under opentelemetry-instrument, an app that does not use GCP: ours {ms:+.0f} ms mean "
        f"({ms_median:+.0f} median; target <= +{TARGET_MS:.0f} ms: {verdict(ms, TARGET_MS)}), "
        f"{mib:+.1f} MiB peak mean ({mib_median:+.1f} median; target <= +{TARGET_MIB:.0f} MiB: "
        f"{verdict(mib, TARGET_MIB)}) over the launcher without us; official {o_ms:+.0f} ms, {o_mib:+.1f} MiB; "
        f"bare python {statistics.fmean(v[0] for v in results['python, no launcher']) * 1000:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
