#!/usr/bin/env bash
# Installs what is missing, builds meshsync twice (a normal build and one
# with AddressSanitizer and UndefinedBehaviorSanitizer) and runs the whole
# test suite against each. Every test that needs Redis starts its own
# redis-server on a private Unix socket and stops it.
#
#   tests/run.sh            both builds
#   tests/run.sh --quick    the normal build only
set -euo pipefail
cd "$(dirname "$0")/.."
tests/deps.sh

jobs=$(nproc 2>/dev/null || echo 2)
configs=("build:-DMESHSYNC_SANITIZE=OFF" "build-asan:-DMESHSYNC_SANITIZE=ON")
[ "${1:-}" = "--quick" ] && configs=("${configs[0]}")

for c in "${configs[@]}"; do
  dir=${c%%:*}
  flag=${c#*:}
  echo "== $dir ($flag)"
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$flag" >/dev/null
  cmake --build "$dir" -j "$jobs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir "$dir" --output-on-failure -j "$jobs"
done
