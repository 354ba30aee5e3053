#include "publish_clock.hpp"

#include <time.h>

#include <cmath>
#include <fstream>
#include <string>

namespace shmbus {

namespace {

constexpr uint64_t kReanchorNs = 1'000'000;  // a clock_gettime at least every 1 ms of ticks
constexpr double kAgreement = 1e-3;          // two rate measurements within 0.1%
// A clock_gettime takes ~60 ticks here; 20,000 (7.7 us at 2.6 GHz) means the thread was
// interrupted between the reads.
constexpr uint64_t kMaxAnchorTicks = 20'000;

}  // namespace

uint64_t realtime_ns() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

bool PublishClock::kernel_keeps_time_with_tsc() {
#if defined(__x86_64__)
  static const bool tsc = [] {
    std::ifstream in("/sys/devices/system/clocksource/clocksource0/current_clocksource");
    std::string name;
    return static_cast<bool>(in >> name) && name == "tsc";
  }();
  return tsc;
#else
  return false;
#endif
}

namespace detail {
constinit thread_local PublishClock tls_publish_clock __attribute__((tls_model("initial-exec")));
constinit thread_local uint64_t tls_last_publish_stamp __attribute__((tls_model("initial-exec"))) =
    0;
}  // namespace detail

uint64_t PublishClock::reanchor() {
#if defined(__x86_64__)
  settle_source();
  if (!use_tsc_) return realtime_ns();
  // The anchor pairs a clock reading with a TSC reading: bracket the clock between two TSC
  // reads and take the middle, and do not anchor on a pair a preemption split (every stamp
  // until the next anchor would be off by the preemption).
  const uint64_t before = __rdtsc();
  const uint64_t ns = realtime_ns();
  const uint64_t after = __rdtsc();
  if (after - before > kMaxAnchorTicks) return ns;
  const uint64_t ticks = before + (after - before) / 2;
  if (anchor_ns_ != 0 && (ns < anchor_ns_ + kReanchorNs || ticks <= anchor_ticks_)) {
    // Not calibrated yet and less than 1 ms since the anchor (or a clock step backwards):
    // keep the anchor until the interval is long enough to measure the rate on.
    if (ns >= anchor_ns_ && ticks > anchor_ticks_) return ns;
    trusted_ = false;
    anchor_ns_ = ns;
    anchor_ticks_ = ticks;
    return ns;
  }
  if (anchor_ns_ != 0) {
    const double rate =
        static_cast<double>(ns - anchor_ns_) / static_cast<double>(ticks - anchor_ticks_);
    trusted_ =
        last_rate_ > 0 && std::fabs(rate - last_rate_) <= kAgreement * last_rate_ && rate < 1e3;
    last_rate_ = rate;
    if (trusted_) {
      ns_per_tick_q32_ = static_cast<uint64_t>(std::ldexp(rate, 32));
      reanchor_ticks_ = static_cast<uint64_t>(static_cast<double>(kReanchorNs) / rate);
    }
  }
  anchor_ns_ = ns;
  anchor_ticks_ = ticks;
  return ns;
#else
  return realtime_ns();
#endif
}

}  // namespace shmbus
