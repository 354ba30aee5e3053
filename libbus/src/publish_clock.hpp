// PublishClock: CLOCK_REALTIME for publish stamps at the cost of one rdtsc instead of one
// clock_gettime (9.8 ns against 23 ns on the reference machine, where the stamp was 40% of
// what a 64 B publish cost the publishing thread).
//
// A stamp is the last clock_gettime reading (the anchor) plus the TSC ticks since, at the
// tick rate measured between the last two anchors. Once 1 ms of ticks has passed, the next
// stamp is a clock_gettime again and becomes the new anchor, so stamps follow
// CLOCK_REALTIME - NTP slewing included - to within the rate's error over 1 ms (the kernel
// slews by at most 500 ppm: 0.5 us); a step of the clock shows within 1 ms.
//
// The rate is trusted only when two consecutive measurements agree within 0.1%; a clock
// step between two anchors makes one measurement wrong, and until the next pair agrees every
// stamp is a clock_gettime. The TSC is used only where the kernel keeps time with it
// (clocksource "tsc": invariant and synchronized across CPUs, as the vDSO's own rdtsc
// requires); anywhere else, and off x86-64, every stamp is a clock_gettime.
//
// Not thread-safe: next_publish_stamp() keeps one per thread.
#pragma once

#include <cstdint>

#if defined(__x86_64__)
#include <x86intrin.h>
#endif

namespace shmbus {

uint64_t realtime_ns();  // clock_gettime(CLOCK_REALTIME) in ns

// The stamp of a publish from the calling thread, and the key subscriptions order their
// rings' messages by (see Subscription in subscription.hpp). From the thread's clock, and
// strictly later than
//   - the thread's previous stamp: a thread's publishes are ordered by their stamps, on any
//     channel, even when the clock steps back (stamps then advance by 1 ns until it has
//     caught up);
//   - `channel_latest`, the stamp of the latest commit in the ring it goes to, unless that
//     lies more than kMaxStampLead ahead of the clock (publishers write it: it may be
//     forged): a ring's stamps then rise in ring order even where two threads' clocks
//     disagree, which is what lets a subscription merge rings by stamp (a Lamport clock).
inline uint64_t next_publish_stamp(uint64_t channel_latest);
inline constexpr uint64_t kMaxStampLead = 1'000'000;  // 1 ms

class PublishClock {
 public:
  constexpr PublishClock() = default;  // constant-initialized: a thread_local with no guard

  uint64_t now_ns() {
#if defined(__x86_64__)
    if (trusted_) {
      // Unsigned: a TSC read below the anchor (never expected) is huge and re-anchors.
      const uint64_t ticks = __rdtsc() - anchor_ticks_;
      // ticks < ~1 ms of ticks and the rate < 2^32 per ns: the product fits in 64 bits.
      if (ticks < reanchor_ticks_) return anchor_ns_ + ((ticks * ns_per_tick_q32_) >> 32);
    }
#endif
    return reanchor();
  }

  bool uses_tsc() {
    settle_source();
    return use_tsc_;
  }
  bool trusted() const {
    return trusted_;
  }  // stamps come from the TSC now

  // Whether the kernel's clocksource is the TSC (read once per process).
  static bool kernel_keeps_time_with_tsc();

 private:
  uint64_t reanchor();
  // Decides once whether the TSC may be used (a file read: not in the constructor).
  void settle_source() {
    if (source_known_) return;
    use_tsc_ = kernel_keeps_time_with_tsc();
    source_known_ = true;
  }

  bool source_known_ = false;
  bool use_tsc_ = false;
  bool trusted_ = false;
  uint64_t anchor_ns_ = 0;
  uint64_t anchor_ticks_ = 0;
  uint64_t ns_per_tick_q32_ = 0;  // ns per tick, fixed point (32 fraction bits)
  uint64_t reanchor_ticks_ = 0;   // ticks in kReanchorNs at that rate
  double last_rate_ = 0;          // ns per tick, the previous measurement
};

namespace detail {
// One clock per thread: publishes from one thread, through any Bus or Channel, draw their
// stamps from one sequence. Constant-initialized (no guard on access) and initial-exec (the
// shared library is loaded with the program, or by an interpreter with room for it in the
// static TLS block): a stamp costs no call to reach them.
extern constinit thread_local PublishClock tls_publish_clock
    __attribute__((tls_model("initial-exec")));
extern constinit thread_local uint64_t tls_last_publish_stamp
    __attribute__((tls_model("initial-exec")));
}  // namespace detail

inline uint64_t next_publish_stamp(uint64_t channel_latest) {
  const uint64_t now = detail::tls_publish_clock.now_ns();
  const uint64_t last = detail::tls_last_publish_stamp;
  uint64_t stamp = now > last ? now : last + 1;
  // Unsigned: a channel_latest more than kMaxStampLead ahead (forged, or a clock that
  // stepped back by more) is left out rather than followed.
  if (channel_latest >= stamp && channel_latest - now <= kMaxStampLead) stamp = channel_latest + 1;
  detail::tls_last_publish_stamp = stamp;
  return stamp;
}

}  // namespace shmbus
