#!/usr/bin/env bash
# meson test 'node': builds the addon against this meson build's libshmbus (npm install:
# node-addon-api from the npm registry, headers of the Node.js that runs it), then runs the
# node --test suite against $SHMBUSD. Skips (exit 77), saying so, where Node.js is missing.
set -euo pipefail
build_dir=$(cd "$1" && pwd)
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "SKIPPED: node and npm are not installed (scripts/install-deps.sh installs them)"
  exit 77
fi
cd "$(dirname "$0")/.."
# `npm install` runs the package's own install script (scripts/build.js) after fetching
# its dependencies; with the lock file's versions when there is one.
SHMBUS_BUILD_DIR=$build_dir npm install --no-audit --no-fund --loglevel=error
exec node --test --test-concurrency=1 test/
