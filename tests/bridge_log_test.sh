#!/usr/bin/env bash
# shmbus-bridge's log under systemd: lines carry journald priorities ("<6>" info), and the
# once-a-period counters line is at info only when messages moved, debug while idle.
#   bridge_log_test.sh SHMBUSD SHMBUS_BRIDGE SHMBUS
# Needs redis-server: skips (exit 77), saying so, without it.
set -euo pipefail
SHMBUSD=$1
BRIDGE=$2
SHMBUS=$3
for tool in redis-server redis-cli python3; do
  command -v "$tool" >/dev/null || { echo "SKIPPED: $tool is not installed"; exit 77; }
done
dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  echo "--- bridge log ---" >&2
  cat "$dir/bridge.log" >&2 || true
  exit 1
}

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
pids+=($!)
bus="bridgelog$$"
sock="$dir/bus.sock"
"$SHMBUSD" --bus "$bus" --socket "$sock" --log-level warn &
pids+=($!)
# until COMMAND succeeds, for up to 10 s (a loaded CI machine is slow, not broken)
until_ok() {
  local what=$1; shift
  for _ in $(seq 200); do "$@" && return 0; sleep 0.05; done
  fail "timed out waiting for $what"
}
until_ok "shmbusd and redis-server" bash -c "[[ -S '$sock' ]] && redis-cli -p $port ping >/dev/null 2>&1"
cat > "$dir/bridge.toml" <<TOML
[redis]
port = $port
[bridge]
host_id = 7
stats_interval_ms = 100
[[export]]
pattern = "log:*"
TOML
JOURNAL_STREAM=1 "$BRIDGE" --bus "$bus" --socket "$sock" -c "$dir/bridge.toml" --log-level debug \
  2> "$dir/bridge.log" &
pids+=($!)
count() { grep -c "$1" "$dir/bridge.log" || true; }
until_ok "'<6>relaying': journald priorities" grep -q '^<6>relaying' "$dir/bridge.log"
# The link coming up is news (a report at info); after that, an idle bridge reports at debug.
until_ok "idle reports at debug" bash -c "(( \$(grep -c '^<7>counters' '$dir/bridge.log') >= 2 ))"
info=$(count '^<6>counters')
debug=$(count '^<7>counters')
until_ok "more idle reports" bash -c "(( \$(grep -c '^<7>counters' '$dir/bridge.log') >= $debug + 3 ))"
(( $(count '^<6>counters') == info )) || fail "an idle bridge logged its counters at info"
SHMBUS_BUS=$bus SHMBUS_SOCKET=$sock "$SHMBUS" pub log:1 moved >/dev/null
until_ok "a report at info once a message moved" grep -q '^<6>counters.*"exported":1' "$dir/bridge.log"
# Idle again: later reports go back to debug.
info=$(count '^<6>counters')
debug=$(count '^<7>counters')
until_ok "debug reports after the activity" bash -c "(( \$(grep -c '^<7>counters' '$dir/bridge.log') >= $debug + 3 ))"
(( $(count '^<6>counters') == info )) || fail "an idle bridge kept logging its counters at info"
echo "ok"
