#!/usr/bin/env bash
# Runs the fuzz targets of tests/fuzz/ with libFuzzer and grows their stored corpus.
#
#   scripts/fuzz.sh [--minimize] [SECONDS] [TARGET...]
#
# SECONDS (default 60) per target; TARGET: protocol, daemon_wire (default: both). Builds
# build-fuzz/ with clang and -Dfuzzing=true (libFuzzer, address+undefined sanitizers; tests,
# benchmarks and optional parts off: only the fuzz targets are built), runs each target from
# its stored corpus tests/fuzz/corpus/<target>/, then merges (-merge=1) into that corpus the
# new inputs that reach code it did not. --minimize instead rewrites the stored corpus as the
# smallest set of its files and the new inputs that covers all of them (before a commit that
# adds many). Commit the corpus changes: every build replays them as tests (suite 'fuzz').
#
# A crash, sanitizer report or timeout stops the script; the input is in
# build-fuzz/artifacts/<target>/ and replays with build/tests/fuzz/<target>_fuzz FILE.
# CXX picks the compiler (default: the newest clang++-NN installed, else clang++): clang 16
# or later, since clang 14 rejects lambdas capturing structured bindings (C++20), which
# daemon/server.cpp uses (Debian 12: apt-get install clang-16 libclang-rt-16-dev). One
# fuzzing process at a time, so the other cores stay free.
set -euo pipefail
cd "$(dirname "$0")/.."

minimize=0
if [ "${1:-}" = "--minimize" ]; then
  minimize=1
  shift
fi
seconds=${1:-60}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(protocol daemon_wire)

if [ -z "${CXX:-}" ]; then
  CXX=$(compgen -c clang++- | grep -E '^clang\+\+-[0-9]+$' | sort -t- -k2 -n | tail -1 || true)
  CXX=${CXX:-clang++}
fi
export CXX
dir=build-fuzz
if [ ! -f "$dir/build.ninja" ]; then
  meson setup "$dir" -Dfuzzing=true -Dbuildtype=debugoptimized -Db_lundef=false \
    -Dtests=disabled -Dbenchmarks=disabled -Dredis_bridge=disabled -Dsystemd=disabled \
    -Dpeer_benchmarks=disabled >/dev/null
fi
fuzzers=()
for target in "${targets[@]}"; do fuzzers+=("tests/fuzz/${target}_fuzz"); done
ninja -C "$dir" -j 2 "${fuzzers[@]}"

for target in "${targets[@]}"; do
  fuzzer=$dir/tests/fuzz/${target}_fuzz
  corpus=tests/fuzz/corpus/$target
  found=$dir/fuzz-new/$target
  artifacts=$dir/artifacts/$target/
  rm -rf "$found"
  mkdir -p "$found" "$artifacts" "$corpus"
  echo "=== $target: fuzzing for $seconds s from $(ls "$corpus" | wc -l) stored inputs"
  # New inputs go to $found (the first directory); the stored corpus is only read.
  "$fuzzer" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$artifacts" "$found" "$corpus"
  if [ "$minimize" = 1 ]; then
    fresh=$dir/fuzz-min/$target
    rm -rf "$fresh"
    mkdir -p "$fresh"
    "$fuzzer" -merge=1 "$fresh" "$corpus" "$found"
    rm -f "$corpus"/*
    cp "$fresh"/* "$corpus"/
  else
    "$fuzzer" -merge=1 "$corpus" "$found"
  fi
  echo "=== $target: stored corpus now $(ls "$corpus" | wc -l) files, $(du -sh --apparent-size "$corpus" | cut -f1)"
done
