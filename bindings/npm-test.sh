#!/usr/bin/env bash
# meson test for an npm package of this repository: `npm-test.sh BUILD_DIR PACKAGE_DIR`.
# npm install builds the shmbus addon (bindings/node, directly or as a file: dependency)
# against BUILD_DIR's libshmbus, with dependencies from the npm registry and the headers of
# the Node.js that runs it; then node --test runs the package's test/*.test.js against
# $SHMBUSD. Skips (exit 77), saying so, where Node.js is missing.
set -euo pipefail
build_dir=$(cd "$1" && pwd)
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "SKIPPED: node and npm are not installed (scripts/install-deps.sh installs them)"
  exit 77
fi
cd "$2"
SHMBUS_BUILD_DIR=$build_dir npm install --no-audit --no-fund --loglevel=error
exec node --test --test-concurrency=1 test/*.test.js
