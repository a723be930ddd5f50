"""A multiprocessing child (fork) leaves by os._exit after its finalizers: its queued records still go."""

from __future__ import annotations

import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from otlp_receiver import otlp_receiver
from test_launcher_e2e import BIN, launcher_env

P = "OTEL_PYTHON_SECRET_AUDIT_"

APP = textwrap.dedent(
    """
    import multiprocessing, os, sys, redis

    def work(key):
        r = redis.Redis.from_url(os.environ["REDIS_URL"])
        for _ in range(200):
            r.get(key)

    if __name__ == "__main__":
        ctx = multiprocessing.get_context("fork")
        children = [ctx.Process(target=work, args=(sys.argv[1] + ":" + str(i),)) for i in range(2)]
        for c in children:
            c.start()
        for c in children:
            c.join()
        print("exitcodes", [c.exitcode for c in children])
    """
)


def run_app(source: str, key: str, agent: str, expect: int, redis_url: str, tmp_path: Path) -> tuple[Any, list[Any]]:
    """Run ``source`` under the launcher with AGENT=``agent``; its records once ``expect`` arrived."""
    app = tmp_path / "mp_app.py"
    app.write_text(source)
    with otlp_receiver() as rx:
        env = launcher_env(rx.url, redis_url, OTEL_SERVICE_NAME="mp-test", OTEL_LOGS_EXPORTER="none",
                           OTEL_TRACES_EXPORTER="none", OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="redis",
                           XDG_STATE_HOME=str(tmp_path / "state"),
                           **{P + "AGENT": agent, P + "SCHEDULE_DELAY_MS": "5000"})
        proc = subprocess.run([str(BIN / "opentelemetry-instrument"), sys.executable, str(app), key],
                              env=env, capture_output=True, text=True, timeout=120)
        deadline = time.monotonic() + 10
        while len(rx.audit_records()) < expect and time.monotonic() < deadline:
            time.sleep(0.05)
        return proc, rx.audit_records()


def test_multiprocessing_fork_children_deliver_what_they_queued_in_process(redis_url, tmp_path: Path):
    """In-process (AGENT=off), a multiprocessing child exits through os._exit: no atexit runs, only
    multiprocessing's finalizers, so the flush must be one of them or all its queued records die."""
    key = "secret:mp:" + secrets.token_hex(4)
    proc, records = run_app(APP, key, "off", 400, redis_url, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "exitcodes [0, 0]" in proc.stdout
    names = sorted({r["attributes"]["secret.name"] for r in records})
    assert names == [key + ":0", key + ":1"]
    assert len(records) == 400, proc.stderr


TAKEOVER_APP = textwrap.dedent(
    """
    import multiprocessing, os, signal, sys, time, redis
    import secret_audit

    def work(key):
        r = redis.Redis.from_url(os.environ["REDIS_URL"])
        for _ in range(50):
            r.get(key)
        os.kill(secret_audit.stats()["agent"]["pid"], signal.SIGKILL)
        time.sleep(1)  # the agent's end is seen, the in-process pipeline takes over
        for _ in range(150):
            r.get(key)

    if __name__ == "__main__":
        child = multiprocessing.get_context("fork").Process(target=work, args=(sys.argv[1],))
        child.start()
        child.join()
        print("exitcode", child.exitcode)
    """
)


def test_a_multiprocessing_child_whose_agent_died_delivers_what_it_queued(redis_url, tmp_path: Path):
    """With the agent, a multiprocessing child whose agent dies runs in-process from then on: its
    queued records must still go when it ends in os._exit."""
    key = "secret:mp-agent:" + secrets.token_hex(4)
    proc, records = run_app(TAKEOVER_APP, key, "process", 200, redis_url, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "exitcode 0" in proc.stdout
    assert "the audit agent is gone" in proc.stderr, proc.stderr
    assert len(records) == 200, proc.stderr
