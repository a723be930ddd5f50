#!/usr/bin/env bash
# Creates .venv and installs the project with its test tools; safe to run again (and concurrently).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
install() {
  if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
  fi
  # the C extension is built by the install: a changed source means installing again
  stamp=.venv/.installed-$(cat pyproject.toml setup.py src/secret_audit/store/_native.c | sha256sum | cut -c1-16)
  if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install -q -e '.[test]'
    .venv/bin/python -c "import secret_audit" # fail loudly if the install did not work
    rm -f .venv/.installed-*
    touch "$stamp"
  fi
}
if command -v flock >/dev/null 2>&1; then
  mkdir -p .venv
  exec 9>.venv/.lock
  flock 9
fi
install
