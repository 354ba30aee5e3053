#!/usr/bin/env bash
# `meson install --destdir` into a temporary folder, then: the installed tree holds what an
# operator and a developer need (and no internal header); every systemd unit passes
# `systemd-analyze verify`; and a small program built only from the installed pkg-config
# file publishes and receives a message through the installed shmbusd.
#   install_test.sh BUILD_DIR
set -euo pipefail
build=$(cd "$1" && pwd)
dest=$(mktemp -d /tmp/shmbus-install.XXXXXX)
daemon_pid=
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  rm -rf "$dest"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

meson install -C "$build" --destdir "$dest" --no-rebuild --quiet >/dev/null

# --- the installed tree ---------------------------------------------------------------------
find_one() {  # name: the single installed path ending in it
  local found
  found=$(cd "$dest" && find . -path "*$1" | sed 's|^\.||')
  [ -n "$found" ] || fail "not installed: $1"
  [ "$(echo "$found" | wc -l)" -eq 1 ] || fail "installed twice: $found"
  echo "$found"
}
for wanted in /sbin/shmbusd /bin/shmbus /include/shmbus/shmbus.h /include/shmbus/shmbus.hpp /include/shmbus/bus.hpp \
    /include/shmbus/subscription.hpp /include/shmbus/stats.hpp /include/shmbus/error.hpp \
    /pkgconfig/shmbus.pc /etc/shmbus/shmbusd.toml /man8/shmbusd.8 /man1/shmbus.1 \
    /systemd/system/shmbusd.service /systemd/system/shmbusd@.service \
    /systemd/system/shmbusd.socket /systemd/system/shmbus-bridge.service /sysusers.d/shmbus.conf; do
  find_one "$wanted" >/dev/null
done
if [ -x "$build/tools/bridge/shmbus-bridge" ]; then
  for wanted in /bin/shmbus-bridge /etc/shmbus/shmbus-bridge.toml /man8/shmbus-bridge.8; do
    find_one "$wanted" >/dev/null
  done
fi
headers=$(cd "$dest" && find . -path '*/include/*' -type f | sort | tr '\n' ' ')
[ "$headers" = "$(cd "$dest" && find . -path '*/include/shmbus/*.h*' -type f | sort | tr '\n' ' ')" ] ||
  fail "headers outside include/shmbus/: $headers"
if [ -d "$build/bindings/python/shmbus" ]; then  # the Python package, where it was built
  for wanted in /shmbus/__init__.py /shmbus/asyncio.py /shmbus/__init__.pyi /shmbus/asyncio.pyi; do
    find_one "$wanted" >/dev/null
  done
  (cd "$dest" && find . -path '*/shmbus/_shmbus*.so' | grep -q .) || fail "not installed: shmbus/_shmbus*.so"
fi
ls "$dest$(dirname "$(find_one /pkgconfig/shmbus.pc)")/../" | grep -q '^libshmbus\.so' ||
  fail "libshmbus.so is not next to its pkg-config file"
grep -q 'nologin' "$dest$(find_one /sysusers.d/shmbus.conf)" || fail "sysusers snippet without a user"

# --- units ------------------------------------------------------------------------------------
# verify checks that ExecStart binaries exist: point the units' install paths into $dest.
prefix=$(sed -n 's/^prefix=//p' "$dest$(find_one /pkgconfig/shmbus.pc)")
units="$dest/units-under-test"
mkdir -p "$units"
for unit in "$dest$(dirname "$(find_one /systemd/system/shmbusd.service)")"/*; do
  sed "s|$prefix/|$dest$prefix/|g" "$unit" > "$units/$(basename "$unit")"
done
if ! command -v systemd-analyze >/dev/null; then
  echo "SKIP: systemd-analyze is missing (apt-get install systemd)" >&2
  exit 77
fi
verify_output=$(cd "$units" && systemd-analyze verify --man=no ./* 2>&1) ||
  fail "systemd-analyze verify: $verify_output"
[ -z "$verify_output" ] || fail "systemd-analyze verify warns: $verify_output"
echo "units verified: $(ls "$units" | tr '\n' ' ')"

# --- a program built against the installed library --------------------------------------------
cat > "$dest/hello.cpp" <<'PROGRAM'
#include <shmbus/shmbus.hpp>
#include <chrono>
#include <cstdio>
int main() {
  auto sub = shmbus::Subscription::open();  // $SHMBUS_BUS / $SHMBUS_SOCKET
  sub.subscribe({"install:check"});
  auto bus = shmbus::Bus::connect();
  const uint32_t receivers = bus.publish("install:check", "installed and working");
  auto message = sub.next(std::chrono::seconds(2));
  if (receivers != 1 || !message || message->text() != "installed and working") return 1;
  std::printf("received: %.*s\n", static_cast<int>(message->text().size()),
              message->text().data());
  return 0;
}
PROGRAM
pc_dir="$dest$(dirname "$(find_one /pkgconfig/shmbus.pc)")"
flags=$(PKG_CONFIG_PATH="$pc_dir" PKG_CONFIG_SYSROOT_DIR="$dest" pkg-config --cflags --libs shmbus)
g++ -std=c++20 -o "$dest/hello" "$dest/hello.cpp" $flags

export SHMBUS_BUS="install$$" SHMBUS_SOCKET="$dest/bus.sock"
"$dest$(find_one /sbin/shmbusd)" --log-level warn &
daemon_pid=$!
for _ in $(seq 100); do [ -S "$SHMBUS_SOCKET" ] && break; sleep 0.05; done
LD_LIBRARY_PATH="$dest$(sed -n 's/^libdir=\${prefix}//p' "$pc_dir/shmbus.pc" | sed "s|^|$prefix|")" \
  "$dest/hello" || fail "the program built from the installed tree did not receive its message"
kill "$daemon_pid"
wait "$daemon_pid" || fail "shmbusd did not stop cleanly"
daemon_pid=
echo "install test passed"
