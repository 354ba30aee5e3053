#!/usr/bin/env bash
# shmbus-bridge's log under systemd: lines carry journald priorities ("<6>" info), and the
# once-a-period counters line is at info only when messages moved, debug while idle.
#   bridge_log_test.sh SHMBUSD SHMBUS_BRIDGE SHMBUS
# Needs redis-server: skips (exit 77), saying so, without it.
set -euo pipefail
SHMBUSD=$1
BRIDGE=$2
SHMBUS=$3
command -v redis-server >/dev/null || { echo "SKIPPED: redis-server is not installed"; exit 77; }
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
for _ in $(seq 100); do [[ -S "$sock" ]] && redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
cat > "$dir/bridge.toml" <<TOML
[redis]
port = $port
[bridge]
host_id = 7
stats_interval_ms = 100
[[export]]
pattern = "log:*"
TOML
JOURNAL_STREAM=1 "$BRIDGE" --bus "$bus" --socket "$sock" -c "$dir/bridge.toml" 2> "$dir/bridge.log" &
pids+=($!)
sleep 1  # idle: ten reports
grep -q '^<6>relaying' "$dir/bridge.log" || fail "no '<6>relaying' line: no journald priorities"
grep -q '^<6>counters' "$dir/bridge.log" && fail "an idle bridge logged its counters at info"
SHMBUS_BUS=$bus SHMBUS_SOCKET=$sock "$SHMBUS" pub log:1 moved >/dev/null
sleep 0.5
[[ $(grep -c '^<6>counters' "$dir/bridge.log") -ge 1 ]] || fail "no counters at info after a message moved"
grep -q '"exported":1' "$dir/bridge.log" || fail "the counters at info do not show the export"
echo "ok"
