#!/usr/bin/env bash
# The differential fuzz of the store's C extension (tests/store/fuzz.py) under AddressSanitizer and
# UndefinedBehaviorSanitizer, for a person: it builds the extension with both into a temporary folder
# and runs the fuzz against that build for SECONDS (default 300). An out-of-bounds read or write, a use
# after free, a double free or undefined behaviour stops the run with a report; a difference from the
# Python twins fails it, as in the bounded fuzz of the test suite.
#
#   bash scripts/fuzz-asan.sh [SECONDS] [SEED]
#
# Needs gcc (or CC=clang) and the libasan of that compiler (gcc's is there on Debian with gcc).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-300}
seed=${2:-}
bash scripts/bootstrap.sh
CC=${CC:-gcc}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
include=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
so="$out/_native.abi3.so"
"$CC" -shared -fPIC -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
  -Wall -Wextra -Werror -I"$include" src/secret_audit/store/_native*.c -o "$so"
asan=$("$CC" -print-file-name=libasan.so)
[ -f "$asan" ] || { echo "fuzz-asan: no libasan for $CC ($asan)" >&2; exit 2; }
# Python itself is not instrumented: the runtime is preloaded, and its own allocations (which it keeps
# till exit on purpose) are not reported as leaks.
echo "== fuzzing $so for ${seconds}s under ASan and UBSan"
LD_PRELOAD="$asan" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  PYTHONMALLOC=malloc .venv/bin/python tests/store/fuzz.py --module "$so" --seconds "$seconds" ${seed:+--seed "$seed"}
