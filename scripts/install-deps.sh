#!/usr/bin/env bash
# Installs every Debian 12 package shmbus needs to build, test and benchmark.
# Idempotent: packages already present are skipped; nothing is fetched when all are there.
# The one list of packages lives here; the README commands and .ci/run call this script.
set -euo pipefail

packages=(
  # build (gcc: the C API's test is built as C)
  meson ninja-build pkg-config g++ gcc
  # shared memory segments (Boost.Interprocess) and in-process lock-free queues
  libboost-dev
  # logging, tests, benchmarks
  libspdlog-dev libgtest-dev libgmock-dev libbenchmark-dev
  # config, command lines, JSON output
  libtomlplusplus-dev libcli11-dev nlohmann-json3-dev
  # Redis bridge and the real redis-server its tests start
  libhiredis-dev redis-server
  # systemd integration (sd_notify, unit checks)
  libsystemd-dev systemd
  # the Python package (bindings/python) for Debian's python3, its tests, and redis-py for
  # comparing with Redis
  python3-dev python3-pybind11 pybind11-dev python3-pytest python3-redis
  # peers of the comparison harness (bench/compare): ZeroMQ, iceoryx (iox-roudi and the
  # C++ API), and matplotlib for its charts
  libzmq3-dev iceoryx libiceoryx-posh-dev libiceoryx-hoofs-dev python3-matplotlib
)

# Node.js with npm and its headers, for the Node package (bindings/node): machines here come
# with Node.js 20 (NodeSource, headers included); where there is none, Debian's own.
command -v node >/dev/null 2>&1 || packages+=(nodejs npm libnode-dev)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1
  fi
else
  SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# redis-server's postinst starts a service where an init system runs; tests start their own.
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
