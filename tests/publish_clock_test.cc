// PublishClock: TSC-derived CLOCK_REALTIME stamps must stay with the real clock.
#include "publish_clock.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>

namespace shmbus {
namespace {

// Every stamp lies between a clock_gettime taken just before and one just after it, give
// or take the calibration error (0.1% of at most 1 ms between anchors: 1 us; 20 us allowed
// for a vCPU preempted between the readings).
TEST(PublishClock, StampsStayWithClockRealtime) {
  PublishClock clock;
  constexpr int64_t kSlackNs = 20'000;
  uint64_t stamps = 0;
  const uint64_t start = realtime_ns();
  while (realtime_ns() - start < 50'000'000) {  // 50 ms: calibration plus many re-anchors
    const uint64_t before = realtime_ns();
    const uint64_t stamp = clock.now_ns();
    const uint64_t after = realtime_ns();
    ASSERT_GE(static_cast<int64_t>(stamp), static_cast<int64_t>(before) - kSlackNs);
    ASSERT_LE(static_cast<int64_t>(stamp), static_cast<int64_t>(after) + kSlackNs);
    ++stamps;
  }
  EXPECT_GT(stamps, 1000u);
  if (!PublishClock::kernel_keeps_time_with_tsc()) {
    // Another clocksource: every stamp was a clock_gettime, which is what the loop checked.
    EXPECT_FALSE(clock.uses_tsc());
    EXPECT_FALSE(clock.trusted());
    return;
  }
  // Two 1 ms measurements that agree: stamps come from the TSC by now.
  EXPECT_TRUE(clock.uses_tsc());
  EXPECT_TRUE(clock.trusted());
}

}  // namespace
}  // namespace shmbus
