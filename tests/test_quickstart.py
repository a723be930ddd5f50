"""README's Quickstart and docs/store.md's quick start, run as they are written, from a copy of the clone.

The only change made to the documented commands is the port: 4318 becomes a free port, so the
test cannot meet another server on this machine. The README's block installs into a fresh virtual
environment from the demo lock, as a user would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import free_port

ROOT = Path(__file__).parent.parent
VALUES = ("AKIA-not-a-real-key", "demo-token", "AC-demo")  # what examples/quickstart/app.py stores


def block(doc: Path, heading: str) -> str:
    """The first ```bash block under ``heading``."""
    text = doc.read_text()
    start = text.index(heading)
    match = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    assert match, f"no bash block under {heading!r} in {doc}"
    return match.group(1)


@pytest.fixture
def clone() -> Iterator[Path]:
    """A copy of this checkout's files (tracked and new), as a fresh clone would have them."""
    # tempfile, not tmp_path: the embedded server's user must reach it (pytest's temp root is private)
    top = Path(tempfile.mkdtemp(prefix="sa-quickstart-"))
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        src = ROOT / name
        if src.is_file():
            dst = top / "clone" / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    (top / "home").mkdir()
    try:
        yield top / "clone"
    finally:
        subprocess.run(["pkill", "-f", str(top)], check=False)
        shutil.rmtree(top, ignore_errors=True)


def run_block(script: str, clone: Path, redis_url: str, path: str) -> subprocess.CompletedProcess[str]:
    port = str(free_port())
    script = "set -euo pipefail\n" + script.replace("4318", port)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "PYTEST_", "XDG_", "DATABASE_URL", "VIRTUAL_ENV"))}
    env.update(HOME=str(clone.parent / "home"), REDIS_URL=redis_url, PATH=path,
               OTEL_PYTHON_SECRET_AUDIT_STORE_PORT=port, OTEL_PYTHON_SECRET_AUDIT_STORE_URL=f"http://127.0.0.1:{port}")
    return subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=900, check=False)


def records_in(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def assert_no_value(proc: subprocess.CompletedProcess[str], clone: Path) -> None:
    for value in VALUES:
        assert value not in proc.stdout
        assert value not in proc.stderr
    for path in [*clone.glob("*.jsonl"), *clone.glob("*.log")]:
        text = path.read_text()
        for value in VALUES:
            assert value not in text


@pytest.mark.slow
def test_the_readme_quickstart_runs_as_written(clone, redis_url):
    script = block(clone / "README.md", "## Quickstart")
    # the base interpreter, not this test environment: the block makes and activates its own
    proc = run_block(script, clone, redis_url, f"{Path(sys.base_prefix) / 'bin'}:/usr/bin:/bin")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    events = records_in(proc.stdout)
    reads = [e for e in events if e.get("secret_name") == "secret:ses-credentials"]
    assert {e["operation"] for e in reads} >= {"write", "read", "delete"}, events
    assert {e["service_name"] for e in events if e["event_name"] == "secret.access"} == {"payments"}
    assert "every chain verifies" in proc.stdout
    assert "[AUDIT] Secret accessed: secret:ses-credentials from redis" in proc.stderr
    spans = (clone / "spans.log").read_text()
    assert '"name": "secret.read"' in spans or '"name": "GET /api/secrets/twilio"' in spans
    assert (clone / ".venv" / "bin" / "secret-audit").exists()  # installed into its own environment
    assert_no_value(proc, clone)


def test_the_store_quick_start_runs_as_written(clone, redis_url):
    script = block(clone / "docs" / "store.md", "## Quick start")
    path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    proc = run_block(script, clone, redis_url, path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    events = records_in(proc.stdout)
    # the first query, on a pipe: JSON lines, every access to one secret
    assert {e["secret_name"] for e in events} == {"secret:ses-credentials"}
    assert {e["operation"] for e in events} == {"write", "read", "delete"}
    # the second, forced vertical: one block per event, the missing secret among them
    assert re.search(r"\nsecret +secret:missing-secret\n", proc.stdout), proc.stdout
    assert "every chain verifies" in proc.stdout
    assert_no_value(proc, clone)


def test_no_placeholder_urls_in_the_package_or_its_docs():
    for path in [ROOT / "pyproject.toml", ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = path.read_text()
        assert "example.invalid" not in text, path
        assert "<url>" not in text, path
