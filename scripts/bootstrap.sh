#!/usr/bin/env bash
# Creates .venv with exactly the versions of requirements/test.lock (`bootstrap.sh demo`: of
# requirements/demo.lock), then the project itself, editable; safe to run again (and concurrently).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
kind=${1:-test}
[ -f "requirements/$kind.lock" ] || { echo "scripts/bootstrap.sh: no requirements/$kind.lock (test or demo)" >&2; exit 2; }
stamp_of() {
  # the C extension is built by the install: a changed source, like a changed lock, means installing again
  # (every file of each: _native.c, its parts _native_*.c and their header _native.h make one module)
  echo ".venv/.installed-$1-$(cat pyproject.toml setup.py src/secret_audit/store/_native*.[ch] \
    src/secret_audit/_internal/_pipeline_native*.[ch] src/secret_audit/_internal/_engine*.[ch] \
    "requirements/$1.lock" | sha256sum | cut -c1-16)"
}
install() {
  local lock=requirements/$kind.lock stamp out
  if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
  fi
  stamp=$(stamp_of "$kind")
  # the test lock holds every pin of the demo lock (scripts/lock.sh checks it): a test install serves the demo
  if [ -f "$stamp" ] || { [ "$kind" = demo ] && [ -f "$(stamp_of test)" ]; }; then
    return
  fi
  # pip first, at its locked version, so that the same pip installs the rest on every machine
  .venv/bin/python -m pip install -q --require-hashes --no-deps \
    -r <(awk '/^pip==/ {p = 1; print; next} p && /^ / {print; next} {p = 0}' "$lock")
  .venv/bin/python -m pip install -q --require-hashes -r "$lock"
  # the project and its C extension, built with the locked setuptools: nothing unpinned comes from an index.
  # A per-version build left in place by older code would be imported before the abi3 one: remove it.
  rm -f src/secret_audit/store/_native.cpython-*.so src/secret_audit/_internal/_pipeline_native.cpython-*.so \
    src/secret_audit/_internal/_engine.cpython-*.so
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  out=$(.venv/bin/python -m pip check) || { echo "$out" >&2; exit 1; }
  .venv/bin/python -c "import secret_audit" # fail loudly if the install did not work
  rm -f .venv/.installed-*
  touch "$stamp"
}
if command -v flock >/dev/null 2>&1; then
  mkdir -p .venv
  exec 9>.venv/.lock
  flock 9
fi
install
