#!/usr/bin/env bash
# Regenerates requirements/test.lock and requirements/demo.lock from pyproject.toml with uv, so that
# every machine installs exactly the versions, with hashes, that the suite was green with.
#   bash scripts/lock.sh                          keep every pin that still fits pyproject.toml
#   bash scripts/lock.sh --upgrade-package redis  move one package to its newest release
#   bash scripts/lock.sh --upgrade                move everything (run scripts/test-latest.sh first)
# Then run the whole suite (bash scripts/test.sh) before committing the new locks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
UV=${UV:-}
if [ -z "$UV" ]; then
  if command -v uv >/dev/null 2>&1; then
    UV=uv
  else # uv only writes the locks; installs use pip
    [ -x .venv-lock/bin/uv ] || { "$PY" -m venv .venv-lock && .venv-lock/bin/python -m pip install -q uv; }
    UV=.venv-lock/bin/uv
  fi
fi
# besides the extra, each lock pins pip and the build requirements of pyproject.toml: bootstrap
# installs them first and builds the project (and its C extension) with them, without build isolation
tools=$("$PY" -c 'import tomllib; print("\n".join(["pip", *tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]]))')
compile() {
  # --no-config: no uv.toml or pip.conf redirects the resolution; universal: markers kept for every
  # platform, resolved for the Python the project is tested on
  printf '%s\n' "$tools" | "$UV" pip compile --quiet --no-config --generate-hashes --universal \
    --python-version 3.11 --custom-compile-command "bash scripts/lock.sh" pyproject.toml - "$@"
}
mkdir -p requirements
compile --extra test -o requirements/test.lock "${@}"
# the demo's lock is a subset of the test lock, pin for pin: one .venv serves both scripts
compile --extra demo -c requirements/test.lock -o requirements/demo.lock
"$PY" - <<'EOF'
import re

def pins(path):
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", open(path).read(), re.M))

test, demo = pins("requirements/test.lock"), pins("requirements/demo.lock")
odd = {k: v for k, v in demo.items() if test.get(k) != v}
if odd:
    raise SystemExit(f"requirements/demo.lock pins what requirements/test.lock does not: {odd}")
print(f"requirements/test.lock: {len(test)} pins; requirements/demo.lock: {len(demo)} pins, all in the test lock")
EOF
