#!/usr/bin/env bash
# The whole suite against the newest releases pyproject.toml allows, not the lock, in .venv-latest:
# run it before moving the lock (bash scripts/lock.sh --upgrade) to see what a new release breaks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-latest/bin/python ]; then
  "$PY" -m venv .venv-latest
fi
.venv-latest/bin/python -m pip install -q --upgrade pip setuptools
.venv-latest/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[test]'
# what differs from requirements/test.lock, for the person deciding whether to move the lock
.venv-latest/bin/python - <<'PY'
import re
from importlib.metadata import distributions

from packaging.utils import canonicalize_name

text = open("requirements/test.lock").read()
pins = {canonicalize_name(n): v for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)}
have = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
differ = [f"{n} {pins[n]} -> {have[n]}" for n in sorted(pins) if n in have and have[n] != pins[n]]
print("== differs from requirements/test.lock (locked -> here):", ", ".join(differ) or "nothing")
PY
echo "== ruff"; .venv-latest/bin/ruff check src tests benchmarks examples
echo "== mypy --strict src"; .venv-latest/bin/mypy src
echo "== pytest"; .venv-latest/bin/python -m pytest "$@"
