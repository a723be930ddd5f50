"""Lifecycle: SIGTERM flushes what is queued, then the process dies by SIGTERM as it would have."""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys

import pytest

from otlp_receiver import otlp_receiver
from test_launcher_e2e import BIN, HERE, launcher_env


@pytest.mark.parametrize("handle", ["true", "false"])
def test_sigterm_flushes_queued_records_then_terminates(redis_url, handle):
    """OTEL_PYTHON_SECRET_AUDIT_HANDLE_SIGTERM=false leaves SIGTERM to the default action: what is
    queued dies with the process, as the docs say."""
    key = "secret:term:" + secrets.token_hex(4)
    with otlp_receiver() as rx:
        env = launcher_env(
            rx.url, redis_url,
            OTEL_SERVICE_NAME="sigterm",
            OTEL_TRACES_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
            # a long schedule: without the SIGTERM flush nothing would have been exported yet
            OTEL_PYTHON_SECRET_AUDIT_SCHEDULE_DELAY_MS="60000",
            OTEL_PYTHON_SECRET_AUDIT_BATCH_SIZE="100000",
            OTEL_PYTHON_SECRET_AUDIT_QUEUE_SIZE="200000",
            OTEL_PYTHON_SECRET_AUDIT_HANDLE_SIGTERM=handle,
            # the in-process SIGTERM handler; the agent's twin: test_agent.py::test_exit_and_sigterm_deliver_everything_handed_off
            OTEL_PYTHON_SECRET_AUDIT_AGENT="off",
        )
        proc = subprocess.Popen(
            [str(BIN / "opentelemetry-instrument"), sys.executable, str(HERE / "apps" / "sigterm_app.py"), key, "500"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "done"
            assert rx.audit_records() == []
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        records = rx.audit_records()
    assert proc.returncode == -signal.SIGTERM
    expected = list(range(1, 501)) if handle == "true" else []
    assert [r["attributes"]["audit.sequence"] for r in records] == expected
