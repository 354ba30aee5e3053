#include "doorbell.hpp"

#include <time.h>

#include <stdexcept>
#include <string>

#include "futex.hpp"

namespace shmbus {

namespace doorbell {

layout::DoorbellHeader* format(std::byte* at, uint32_t bits) {
  if (bits == 0 || bits > layout::ShmRef::kMaxBit + 1)
    throw std::invalid_argument("doorbell bit capacity must be 1.." +
                                std::to_string(layout::ShmRef::kMaxBit + 1));
  auto* d = reinterpret_cast<layout::DoorbellHeader*>(at);
  // The memory comes zeroed from the arena: words and counters already read 0.
  d->bit_capacity = bits;
  d->summary_words = layout::doorbell_summary_words(bits);
  d->leaf_words = layout::doorbell_leaf_words(bits);
  // Release via the futex word: whoever acquires it sees the sizes above. The magic is the
  // last plain field written; open() checks it after an acquire load of futex_word.
  d->magic = layout::kDoorbellMagic;
  d->futex_word.store(0, std::memory_order_release);
  return d;
}

layout::DoorbellHeader* open(std::byte* at) {
  auto* d = reinterpret_cast<layout::DoorbellHeader*>(at);
  (void)d->futex_word.load(std::memory_order_acquire);
  if (d->magic != layout::kDoorbellMagic) throw std::runtime_error("not a shmbus doorbell");
  return d;
}

void ring_doorbell(layout::DoorbellHeader* d, uint32_t bit, const DoorbellGeometry& g) {
  const uint32_t leaf = bit / 64;
  const uint64_t mask = uint64_t{1} << (bit % 64);
  auto& leaf_word = leaf_words(d, g)[leaf];
  // A set bit means the waiter has not taken it yet and will drain this ring after taking
  // it, seeing our commit (the waiter's exchange is seq_cst and follows our fenced commit in
  // the single total order, or precedes our load and we would have seen the bit clear).
  auto& summary_word = summary_words(d)[leaf / 64];
  const uint64_t summary_mask = uint64_t{1} << (leaf % 64);
  if ((leaf_word.load(std::memory_order_seq_cst) & mask) == 0) {
    leaf_word.fetch_or(mask, std::memory_order_seq_cst);
    summary_word.fetch_or(summary_mask, std::memory_order_seq_cst);
  } else if ((summary_word.load(std::memory_order_seq_cst) & summary_mask) == 0) {
    // The leaf bit is set but its summary bit is not (yet): whoever set the leaf has not
    // set the summary (preempted between the two, or a hostile process setting leaves
    // alone), and a waiter looks at summaries only. Set it ourselves, so a waiter that sees
    // anything we publish after this commit finds this ring too - the cross-channel order
    // of Subscription relies on it (delivery_order.hpp). A look at a line that stays shared
    // while the summary bit is set.
    summary_word.fetch_or(summary_mask, std::memory_order_seq_cst);
  }
  // Look before the exchange: while nobody is armed, no write to a line waiters read.
  if (d->wake_armed.load(std::memory_order_seq_cst) != 0 &&
      d->wake_armed.exchange(0, std::memory_order_seq_cst) != 0) {
    // Change the word first so a waiter between its check and FUTEX_WAIT returns at once.
    d->futex_word.fetch_add(1, std::memory_order_release);
    futex_wake_all(&d->futex_word);
  }
}

}  // namespace doorbell

bool Waiter::any_ready() const {
  auto* summary = doorbell::summary_words(d_);
  for (uint32_t s = 0; s < g_.summary_words; ++s)
    if (summary[s].load(std::memory_order_seq_cst) != 0) return true;
  return false;
}

void Waiter::disarm_bit(uint32_t bit) {
  doorbell::leaf_words(d_, g_)[bit / 64].fetch_and(~(uint64_t{1} << (bit % 64)),
                                                   std::memory_order_seq_cst);
}

void pause_after_fruitless_wakes() {
  const timespec ms{0, 1'000'000};
  nanosleep(&ms, nullptr);
}

Status park_once(layout::DoorbellHeader* d, uint32_t observed_futex_word,
                 std::chrono::steady_clock::time_point deadline, bool forever) {
  std::chrono::nanoseconds timeout{-1};
  if (!forever) {
    timeout = deadline - std::chrono::steady_clock::now();
    if (timeout.count() <= 0) return Status::kTimedOut;
  }
  const auto result = futex_wait(&d->futex_word, observed_futex_word, timeout);
  return result == FutexWaitResult::kTimedOut ? Status::kTimedOut : Status::kOk;
}

Status Waiter::wait(std::chrono::nanoseconds timeout, std::chrono::nanoseconds spin) {
  WaitPlan plan;
  if (spin_until_ready([this] { return any_ready(); }, timeout, spin, plan)) return Status::kOk;
  return park_until([this] { return any_ready(); }, plan.deadline, plan.forever);
}

}  // namespace shmbus
