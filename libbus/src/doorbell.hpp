// Doorbell: how one waiter (a subscription over one ring or over 100,000) sleeps in a single
// futex wait and learns which rings have news without scanning them all.
//
// Publisher side (ring_doorbell): after committing a frame and a full fence, set the ring's
// leaf bit and its summary bit unless the leaf bit is already set, then, if `wake_armed` is
// set, exchange it to 0 and FUTEX_WAKE. Only the publisher that disarms it makes the system
// call: one wake per sleep, not one per publish until the sleeper runs (a parked subscriber
// of a busy channel used to get a FUTEX_WAKE from every publish in the 20-40 us it takes a
// vCPU to wake). While nobody sleeps a publish makes no system call; while the waiter has
// not yet taken the bit, a publish makes no write to the doorbell at all.
//
// Waiter side (Waiter): exchange summary words to zero, then the leaf words they point at,
// and drain each ring found. To sleep: read futex_word, set wake_armed, re-check the
// summary, FUTEX_WAIT on the value read. A waiter that returns without being woken leaves
// the flag set (clearing it could disarm another waiter on the same doorbell); the next
// publish then makes one wake nobody needed, and disarms it.
//
// Why no wakeup is lost: the publisher's (fence; load leaf; fetch_or summary; load
// wake_armed) and the waiter's (store wake_armed; load summary) are sequentially
// consistent, so either the publisher sees the flag or the waiter sees the summary bit
// (Dekker). The publisher that takes the flag bumps futex_word before FUTEX_WAKE, and
// FUTEX_WAIT compares futex_word under the kernel's lock, so a waiter between its check and
// its sleep returns at once; a second waiter parking after that bump re-arms the flag and
// re-checks the summary itself. Every wake wakes all waiters of the doorbell.
//
// Thread safety: ring_doorbell may run in any number of publishers at once. A Waiter is used
// by one thread at a time.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

#include "layout.hpp"
#include "status.hpp"

namespace shmbus {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

// How long a waiter spins on its condition before it parks on the futex: long enough to
// catch the next message of a burst without a system call, short enough to leave the core.
inline constexpr std::chrono::nanoseconds kSpinBeforePark = std::chrono::microseconds(20);

// A doorbell's shape, computed from its bit count in process memory. Every process that
// rings or waits on a doorbell takes it from the daemon (which sized the doorbell), never
// from the doorbell's header: any process that may ring the doorbell may also overwrite
// the header, and a forged word count would send the next access out of the doorbell.
struct DoorbellGeometry {
  DoorbellGeometry() = default;
  explicit DoorbellGeometry(uint32_t bit_count)
      : bits(bit_count),
        summary_words(layout::doorbell_summary_words(bit_count)),
        leaf_words(layout::doorbell_leaf_words(bit_count)),
        leaf_offset(sizeof(layout::DoorbellHeader) +
                    layout::align_up(8ULL * summary_words, layout::kCacheLine)),
        bytes(bit_count == 0 ? 0 : layout::doorbell_bytes(bit_count)),
        stride(bit_count == 0 ? 0 : layout::doorbell_stride(bit_count)) {}
  uint32_t bits = 0;
  uint32_t summary_words = 0;
  uint32_t leaf_words = 0;
  uint64_t leaf_offset = 0;  // from the doorbell's start
  uint64_t bytes = 0;
  uint64_t stride = 0;  // doorbells of a bus sit this far apart in the doorbell arena
};

namespace doorbell {

inline std::atomic<uint64_t>* summary_words(layout::DoorbellHeader* d) {
  return reinterpret_cast<std::atomic<uint64_t>*>(reinterpret_cast<std::byte*>(d) +
                                                  sizeof(layout::DoorbellHeader));
}
inline std::atomic<uint64_t>* leaf_words(layout::DoorbellHeader* d, const DoorbellGeometry& g) {
  return reinterpret_cast<std::atomic<uint64_t>*>(reinterpret_cast<std::byte*>(d) + g.leaf_offset);
}

// Formats zeroed memory at `at` (layout::doorbell_bytes(bits) long) as a doorbell.
layout::DoorbellHeader* format(std::byte* at, uint32_t bits);
// Checks the magic of a doorbell another process formatted (its geometry comes from the
// daemon, not from here).
layout::DoorbellHeader* open(std::byte* at);

// Publisher side. REQUIRES: the caller issued a sequentially consistent fence after the
// commit store it is announcing, and bit < g.bits.
void ring_doorbell(layout::DoorbellHeader* d, uint32_t bit, const DoorbellGeometry& g);

}  // namespace doorbell

class Waiter {
 public:
  Waiter(layout::DoorbellHeader* doorbell, const DoorbellGeometry& geometry)
      : d_(doorbell), g_(geometry) {}

  // Takes every pending bit (clearing it) and calls fn(bit) for each; returns the count.
  template <typename Fn>
  uint32_t take_ready(Fn&& fn) {
    uint32_t taken = 0;
    auto* summary = doorbell::summary_words(d_);
    auto* leaves = doorbell::leaf_words(d_, g_);
    for (uint32_t s = 0; s < g_.summary_words; ++s) {
      // Cheap test first: exchange only words with something in them, so an idle waiter
      // does not pull lines publishers will write.
      if (summary[s].load(std::memory_order_relaxed) == 0) continue;
      uint64_t summary_bits = summary[s].exchange(0, std::memory_order_seq_cst);
      while (summary_bits != 0) {
        const uint32_t leaf = s * 64 + static_cast<uint32_t>(__builtin_ctzll(summary_bits));
        summary_bits &= summary_bits - 1;
        if (leaf >= g_.leaf_words) continue;  // a bit no publisher sets: someone wrote garbage
        // seq_cst exchange: the drain that follows sees every commit whose publisher found
        // this bit set (and so skipped setting it) - see the header comment.
        uint64_t leaf_bits = leaves[leaf].exchange(0, std::memory_order_seq_cst);
        while (leaf_bits != 0) {
          const uint32_t bit = leaf * 64 + static_cast<uint32_t>(__builtin_ctzll(leaf_bits));
          leaf_bits &= leaf_bits - 1;
          if (bit >= g_.bits) continue;
          fn(bit);
          ++taken;
        }
      }
    }
    return taken;
  }

  bool any_ready() const;
  // True if `bit` is pending (a look, without taking it).
  // REQUIRES: bit < the doorbell's bits.
  bool is_set(uint32_t bit) const {
    return (doorbell::leaf_words(d_, g_)[bit / 64].load(std::memory_order_relaxed) &
            (uint64_t{1} << (bit % 64))) != 0;
  }

  // Waits until some bit is pending or `timeout` passes (negative: forever). Spins for
  // `spin` first (no system call, ~100 ns wake-up), then parks on the futex.
  Status wait(std::chrono::nanoseconds timeout, std::chrono::nanoseconds spin = kSpinBeforePark);

  // Single-ring use: clear `bit` so the next publisher to that ring rings the bell.
  void disarm_bit(uint32_t bit);
  // Parks until `ready()` holds or the deadline passes; `ready` is re-checked after the
  // sleeper is announced, so a publish racing with the park is never missed.
  template <typename Ready>
  Status park_until(Ready&& ready, std::chrono::steady_clock::time_point deadline, bool forever);

  layout::DoorbellHeader* header() const { return d_; }
  const DoorbellGeometry& geometry() const { return g_; }

 private:
  layout::DoorbellHeader* d_;
  DoorbellGeometry g_;
};

// The spin-then-park plan shared by every waiter: the deadline of a `timeout` (negative:
// forever), after spinning on `ready()` for at most `spin`. Returns true if ready() held
// while spinning; otherwise the caller parks until `deadline`.
struct WaitPlan {
  std::chrono::steady_clock::time_point deadline;
  bool forever;
};
template <typename Ready>
bool spin_until_ready(Ready&& ready, std::chrono::nanoseconds timeout,
                      std::chrono::nanoseconds spin, WaitPlan& plan) {
  plan.forever = timeout.count() < 0;
  const auto start = std::chrono::steady_clock::now();
  plan.deadline = plan.forever ? start : start + timeout;
  const auto spin_until = start + (plan.forever || spin < timeout ? spin : timeout);
  if (spin.count() <= 0) return ready();  // no spin: one look
  // Re-read the clock only every 64 polls: a clock read costs ~20 ns here.
  for (uint32_t polls = 1;; ++polls) {
    if (ready()) return true;
    if (polls % 64 == 0 && std::chrono::steady_clock::now() >= spin_until) return false;
    cpu_relax();
  }
}

// The longest a waiter sleeps on a doorbell before it looks for itself (Waiter::park_until),
// and how many fruitless wake-ups in a row make it slow down. A daemon killed with SIGKILL
// rings nobody: a parked subscriber learns of it at its next look at the life word, so this
// bounds that too (four cheap wake-ups a second while idle).
inline constexpr std::chrono::nanoseconds kMaxPark = std::chrono::milliseconds(250);
inline constexpr uint32_t kFruitlessWakesBeforeBackoff = 64;
void pause_after_fruitless_wakes();

// Implementation of the template above; kept here so Reader can use it inline.
Status park_once(layout::DoorbellHeader* d, uint32_t observed_futex_word,
                 std::chrono::steady_clock::time_point deadline, bool forever);

template <typename Ready>
Status Waiter::park_until(Ready&& ready, std::chrono::steady_clock::time_point deadline,
                          bool forever) {
  uint32_t fruitless_wakes = 0;
  for (;;) {
    const uint32_t seen = d_->futex_word.load(std::memory_order_acquire);
    // seq_cst: pairs with the publisher's load of `wake_armed` after its fence.
    d_->wake_armed.store(1, std::memory_order_seq_cst);
    if (ready()) return Status::kOk;
    // Never trust the bell alone for long: any process that may ring it may also clear our
    // bits or the armed flag, and a wake-up it withholds must not become a hang. Each sleep
    // ends after kMaxPark, and `ready` looks again (callers put a look at the rings in it).
    const auto now = std::chrono::steady_clock::now();
    const bool capped = forever || deadline - now > kMaxPark;
    const Status parked = park_once(d_, seen, capped ? now + kMaxPark : deadline, false);
    if (ready()) return Status::kOk;
    if (parked == Status::kTimedOut && !capped) return Status::kTimedOut;
    // Woken for nothing again and again: someone keeps changing the futex word. Slow down
    // rather than spin on FUTEX_WAIT.
    if (parked == Status::kOk && ++fruitless_wakes >= kFruitlessWakesBeforeBackoff)
      pause_after_fruitless_wakes();
    if (parked == Status::kTimedOut) fruitless_wakes = 0;
  }
}

}  // namespace shmbus
