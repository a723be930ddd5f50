#!/usr/bin/env bash
# Every benchmark in benchmarks/, each measured side by side in one process, then a summary of
# each result next to its target. Benchmarks, not tests: nothing here gates CI.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
out=$(mktemp)
status=0
for bench in benchmarks/bench_*.py; do
  echo "== $bench"
  if ! .venv/bin/python "$bench" 2>&1 | tee -a "$out"; then
    echo "!! $bench failed"
    status=1
  fi
  echo
done
echo "== summary (measured vs target)"
grep -E "target" "$out" | grep -Ev "^\s*$" | sed 's/^/  /'
rm -f "$out"
exit $status
