"""The locks stay true: they pin every dependency pyproject.toml asks for, and the suite runs on them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

import pytest
import tomllib
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = canonicalize_name(PYPROJECT["project"]["name"])
# one entry: the pin line, then its hash lines and comments, each indented
ENTRY = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+?)(?: ; (.+?))? \\\n((?:[ ]+.*\n?)*)", re.M)


def lock(kind: str) -> dict[str, tuple[str, str | None, int]]:
    """name -> (version, marker, number of hashes) for requirements/{kind}.lock."""
    text = (ROOT / "requirements" / f"{kind}.lock").read_text()
    pins = {canonicalize_name(m[1]): (m[2], m[3], m[4].count("--hash=sha256:")) for m in ENTRY.finditer(text)}
    assert len(pins) == len(re.findall(r"^[A-Za-z0-9_.-]+==", text, re.M))
    return pins


def wanted(extra: str) -> list[Requirement]:
    """What pyproject.toml asks for with that extra (its own extras unfolded), plus pip and the build."""
    project = PYPROJECT["project"]
    reqs = [Requirement(r) for r in [*project["dependencies"], *PYPROJECT["build-system"]["requires"], "pip"]]
    todo, seen = [extra], set()
    while todo:
        name = todo.pop()
        seen.add(name)
        for req in map(Requirement, project["optional-dependencies"][name]):
            if canonicalize_name(req.name) == PROJECT:
                todo += [e for e in req.extras if e not in seen]
            else:
                reqs.append(req)
    return reqs


@pytest.mark.parametrize("kind", ["test", "demo"])
def test_every_requirement_is_pinned_with_hashes_in_its_lock(kind):
    pins = lock(kind)
    assert len(pins) >= 60
    for req in wanted(kind):
        if req.marker is not None and not req.marker.evaluate():
            continue
        # psycopg[binary,pool] needs psycopg-binary and psycopg-pool too: the installed metadata says so
        needed = [req.name, *(dep.name for dep in map(Requirement, requires(req.name) or [])
                              for extra in req.extras if dep.marker and dep.marker.evaluate({"extra": extra}))]
        for name in needed:
            assert canonicalize_name(name) in pins, f"{name} ({req}) is not in requirements/{kind}.lock: bash scripts/lock.sh"
        pinned = pins[canonicalize_name(req.name)][0]
        assert req.specifier.contains(pinned, prereleases=True), \
            f"requirements/{kind}.lock pins {req.name}=={pinned}, pyproject.toml wants {req}: bash scripts/lock.sh"
    assert all(hashes >= 1 for _, _, hashes in pins.values())


def test_the_demo_lock_is_the_test_lock_pin_for_pin():
    """One .venv serves both scripts: a test install never needs the demo to install again."""
    test, demo = lock("test"), lock("demo")
    assert {name: pin[0] for name, pin in demo.items()} == {name: test[name][0] for name in demo}
    assert PROJECT not in test


@pytest.mark.skipif(Path(sys.prefix).name == ".venv-latest", reason="scripts/test-latest.sh: the newest releases")
def test_the_suite_runs_on_exactly_the_locked_versions():
    wrong = {}
    for name, (pinned, marker, _) in lock("test").items():
        if marker is not None and not Marker(marker).evaluate():
            continue
        try:
            have = version(name)
        except PackageNotFoundError:
            have = None
        if have != pinned:
            wrong[name] = (pinned, have)
    assert not wrong, f"(locked, installed) differ: {wrong}; bash scripts/bootstrap.sh installs the lock"


@pytest.mark.slow
def test_scripts_lock_sh_rewrites_the_same_pins(tmp_path):
    """`bash scripts/lock.sh` (README) on a copy: with pyproject.toml unchanged, every pin stays."""
    for part in ("pyproject.toml", "setup.py", "README.md", "src", "scripts/lock.sh", "requirements"):
        copy = shutil.copytree if (ROOT / part).is_dir() else shutil.copy2
        (tmp_path / part).parent.mkdir(parents=True, exist_ok=True)
        copy(ROOT / part, tmp_path / part)
    for lockfile in (tmp_path / "requirements").glob("*.lock"):
        lockfile.write_text(lockfile.read_text().replace("==", "== ", 1))  # proof that it is rewritten
    proc = subprocess.run(["bash", str(tmp_path / "scripts/lock.sh")], capture_output=True, text=True,
                          timeout=600, check=False, env={k: v for k, v in os.environ.items() if k != "UV"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pins, all in the test lock" in proc.stdout
    for kind in ("test", "demo"):
        text = (tmp_path / "requirements" / f"{kind}.lock").read_text()
        pins = {canonicalize_name(n): v for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)}
        assert pins == {name: pin[0] for name, pin in lock(kind).items()}


def _imports(path: Path) -> set[str]:
    """Top-level module names a file imports, at any depth, absolute imports only."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.partition(".")[0])
    return found


def test_the_demo_lock_holds_everything_the_demo_imports():
    """A fresh clone runs `bash scripts/demo.sh` on the demo lock alone: every distribution that
    examples/demo.py and the local modules it reaches import must be pinned there."""
    from importlib.metadata import packages_distributions

    local = {p.stem: p for folder in (ROOT / "examples", ROOT / "tests") for p in folder.glob("*.py")}
    local |= {"secret_service": ROOT / "examples" / "secret_service" / "app.py"}
    todo, seen, third_party = [ROOT / "examples" / "demo.py", ROOT / "examples" / "secret_service" / "app.py"], set(), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            if name in local:
                todo.append(local[name])
            elif name not in sys.stdlib_module_names and name not in ("secret_audit", "__future__"):
                third_party.add(name)
    owners = packages_distributions()
    pins = lock("demo")
    missing = {name: owners.get(name) for name in third_party
               if not any(canonicalize_name(d) in pins for d in owners.get(name, [name]))}
    assert not missing, f"the demo imports these, not pinned in requirements/demo.lock (pyproject extra demo): {missing}"
