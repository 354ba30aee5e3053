#!/usr/bin/env bash
# Builds and runs every test suite the way CI does:
#   1. a normal build (debugoptimized), all suites;
#   2. an address+undefined sanitizer build, all suites;
#   3. a thread sanitizer build: the concurrent core (suite 'ring') and the bus end to end
#      (suite 'daemon': daemon thread, subscription notifier thread, many processes).
# Installs missing Debian packages first (scripts/install-deps.sh). Build folders:
# build-ci/, build-asan/, build-tsan/ (reused between runs).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

jobs=$(nproc)
run_suites() {  # build-dir meson-args... -- test-args...
  local dir=$1; shift
  local setup=() test=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do setup+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  test=("$@")
  echo "=== $dir: meson setup ${setup[*]}"
  if [ -f "$dir/build.ninja" ]; then
    meson configure "$dir" "${setup[@]}" >/dev/null
  else
    meson setup "$dir" "${setup[@]}" >/dev/null
  fi
  ninja -C "$dir" -j "$jobs"
  echo "=== $dir: meson test ${test[*]}"
  meson test -C "$dir" --print-errorlogs --num-processes 1 "${test[@]}"
}

# Sanitizer builds: stop on the first report and keep shared memory from a failed run out
# of the next (tests use unique names per pid).
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}

run_suites build-ci -Dbuildtype=debugoptimized
run_suites build-asan -Dbuildtype=debug -Db_sanitize=address,undefined -Db_lundef=false
run_suites build-tsan -Dbuildtype=debug -Db_sanitize=thread -Db_lundef=false -- --suite ring --suite daemon

echo "=== all test suites passed (normal, address+undefined, thread)"
