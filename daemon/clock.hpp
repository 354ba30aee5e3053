// The daemon's two clocks: the steady one times idleness and ticks, so that setting the
// wall clock never reclaims a channel early; the wall clock is only for what clients and
// tools are shown.
#pragma once

#include <chrono>
#include <cstdint>

namespace shmbus::daemon {

using Clock = std::chrono::steady_clock;

inline uint64_t unix_now_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

}  // namespace shmbus::daemon
