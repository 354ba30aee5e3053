#!/usr/bin/env bash
# libshmbus.so exports the public API and nothing else: the C API of shmbus.h (shmbus_*)
# and the public C++ classes of shmbus.hpp - never an internal such as the ring's Reader,
# the protocol or Boost.
#   exports_test.sh path/to/libshmbus.so
set -euo pipefail
lib=$1
exports=$(nm -D --defined-only "$lib" | awk '{ print $3 }' | sed 's/@.*//' | c++filt)
bad=0
count_c=0
count_cxx=0
while IFS= read -r sym; do
  case "$sym" in
    SHMBUS_0) ;;  # the version node
    shmbus_*) [[ "$sym" =~ ^shmbus_[a-z0-9_]+$ ]] && count_c=$((count_c + 1)) || { echo "unexpected: $sym"; bad=1; } ;;
    *)
      if [[ "$sym" =~ ^(typeinfo\ for\ |typeinfo\ name\ for\ |vtable\ for\ )?shmbus::(Bus|Channel|Loan|Subscription|StatsReader|Error)(::|$) ]] &&
        [[ "${sym%%(*}" != *"::State"* ]]; then
        count_cxx=$((count_cxx + 1))
      else
        echo "internal symbol exported: $sym"
        bad=1
      fi
      ;;
  esac
done <<<"$exports"
# The export list cannot pass by being empty.
for needed in shmbus_connect shmbus_next shmbus_strerror 'shmbus::Bus::connect(shmbus::ConnectOptions const&)' \
  'shmbus::Subscription::next(std::chrono::duration<long, std::ratio<1l, 1000000000l> >)'; do
  grep -qxF "$needed" <<<"$exports" || { echo "missing export: $needed"; bad=1; }
done
echo "exports: $count_c C functions, $count_cxx C++ symbols"
exit $bad
