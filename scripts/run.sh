#!/usr/bin/env bash
# The main job, end to end on a fresh Debian 12 machine: installs what is missing, builds
# (release), starts shmbusd on a private bus, then for a few seconds runs a pattern
# subscriber, a publisher under load and the live stats view, and stops everything cleanly
# (the daemon removes its shared memory on SIGTERM).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

if [ ! -f build-release/build.ninja ]; then
  meson setup build-release -Dbuildtype=release >/dev/null
fi
ninja -C build-release daemon/shmbusd tools/shmbus

shmbusd=build-release/daemon/shmbusd
shmbus=build-release/tools/shmbus
work=$(mktemp -d)
export SHMBUS_BUS="demo$$"
export SHMBUS_SOCKET="$work/bus.sock"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done  # clients before daemon
  [ -n "${daemon_pid:-}" ] && kill -TERM "$daemon_pid" 2>/dev/null && wait "$daemon_pid" || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "=== shmbusd on bus '$SHMBUS_BUS' (socket $SHMBUS_SOCKET)"
"$shmbusd" --log-level info &
daemon_pid=$!
for _ in $(seq 100); do "$shmbus" ping >/dev/null 2>&1 && break; sleep 0.05; done
"$shmbus" ping

echo "=== a pattern subscriber on 'chat:*' (first lines of its output shown at the end)"
"$shmbus" psub 'chat:*' > "$work/psub.out" &
pids+=($!)
until [ "$("$shmbus" numpat)" = 1 ]; do sleep 0.05; done

echo "=== one message, as with redis-cli PUBLISH (prints the receiver count)"
"$shmbus" pub chat:lobby "hello from shmbus"

echo "=== load: 3 publishers at 20,000 msg/s each for ~4 s; live stats"
for room in lobby dev ops; do
  "$shmbus" pub "chat:$room" "message for $room" --count 80000 --rate 20000 >/dev/null &
  pids+=($!)
done
"$shmbus" stats --watch --interval 1 --iterations 5

wait "${pids[@]:1}" 2>/dev/null || true
echo "=== what the pattern subscriber printed first (redis-cli --raw format)"
head -n 8 "$work/psub.out"
echo "=== delivered to the subscriber: $(grep -c '^pmessage$' "$work/psub.out") messages"
echo "=== stopping shmbusd (SIGTERM): it removes its socket and shared memory"
