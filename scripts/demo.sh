#!/usr/bin/env bash
# The demo from scratch: venv, installs, then real Redis + the instrumented app + the audit trail.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python examples/demo.py
