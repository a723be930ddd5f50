#!/usr/bin/env bash
# The whole test suite from scratch: venv, installs, lint, types, then pytest against real servers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
echo "== ruff"; .venv/bin/ruff check src tests benchmarks examples
echo "== mypy --strict src"; .venv/bin/mypy src
echo "== pytest"; .venv/bin/python -m pytest "$@"
