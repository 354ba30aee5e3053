// DeliveryOrder: the order a Subscription over several rings delivers their messages in -
// each publisher's in the order it published them, on whichever channels they went to, as
// Redis delivers a connection's PUBLISHes.
//
// Every message carries its publisher's stamp (next_publish_stamp in publish_clock.hpp):
// strictly rising over one thread's publishes, and rising in each ring's order, since a
// publisher stamps later than the latest commit in the ring it claims in. A subscription
// reads one message from each ring with news ahead of time (it is "staged": read, not yet
// consumed) and delivers the one with the smallest key - the merge of sorted streams.
//
// A staged head is delivered only once every ring with a message published before it can
// be seen: its commit happened after theirs, so a look at the rings (or the doorbell bits
// their publishers set) made after the head was read finds them. Each such look is a
// discovery round; a head read in round r waits for round r + 1. Rounds cost a look at the
// doorbell (or at every ring, for few), and come about once for every ring that has news.
//
// Keys come from shared memory, which any publisher of the ring can write:
//   - a ring's keys are made to rise (a key is at least the ring's previous one), so ring
//     order, which is the only order a ring can be read in, is never contradicted;
//   - a stamp more than kMaxStampLead ahead of this process's clock says nothing: the
//     message keeps its ring's previous key (a forged stamp far in the future cannot push
//     its ring behind every other, nor the rest of its ring after it);
//   - a head passed over by more deliveries than the rings held can hold messages goes out
//     next (patience): stamps forged far in the past cannot keep a flood's ring ahead of
//     every other for ever, while honest heads are never passed over that often - what
//     has a smaller key than a waiting head was in some ring when it was staged.
//
// Thread safety: one thread at a time (the Subscription's).
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <vector>

#include "publish_clock.hpp"

namespace shmbus {

class DeliveryOrder {
 public:
  // A staged head: its ring's doorbell bit, and the staging it belongs to (a ring staged
  // again gets a new serial, which makes older entries stale).
  struct Entry {
    uint64_t key = 0;
    uint64_t serial = 0;
    uint32_t bit = 0;
  };

  // The key of a message stamped `stamp` read from a ring whose previous key was
  // `ring_last` (which the caller raises to it once the message is consumed intact).
  uint64_t key_for(uint64_t stamp, uint64_t ring_last) {
    if (stamp > clock_seen_ + kMaxStampLead) {
      // Ahead of the clock as we last saw it: look again (at most once per kMaxStampLead of
      // honest stamps) before deciding the stamp says nothing.
      clock_seen_ = realtime_ns();
      if (stamp > clock_seen_ + kMaxStampLead) return ring_last;
    }
    return std::max(ring_last, stamp);
  }

  // Records a staged head; returns its serial.
  uint64_t push(uint64_t key, uint32_t bit) {
    const uint64_t serial = ++serials_;
    heap_.push_back({key, serial, bit});
    std::push_heap(heap_.begin(), heap_.end(), later);
    by_age_.push_back(Aged{{key, serial, bit}, deliveries_});
    return serial;
  }
  // The head that has waited longest, if it was passed over by more than `patience`
  // deliveries (see the top of this file); null otherwise.
  template <typename Current>
  const Entry* starving(uint64_t patience, Current&& current) {
    while (!by_age_.empty() && !current(by_age_.front())) by_age_.pop_front();
    if (by_age_.empty() || deliveries_ - by_age_.front().staged_at <= patience) return nullptr;
    return &by_age_.front();
  }
  void delivered() { ++deliveries_; }
  // The earliest head still staged (`current(entry)` says whether its ring still holds that
  // staging); stale entries on top are dropped. Null if none.
  template <typename Current>
  const Entry* earliest(Current&& current) {
    while (!heap_.empty() && !current(heap_.front())) pop();
    return heap_.empty() ? nullptr : &heap_.front();
  }
  void pop() {
    std::pop_heap(heap_.begin(), heap_.end(), later);
    heap_.pop_back();
  }
  // Drops stale entries when they outnumber `live` (the rings staged) - unstaging leaves
  // its entry behind, and one with a large key may take long to reach the top.
  template <typename Current>
  void compact(size_t live, Current&& current) {
    if (heap_.size() + by_age_.size() <= 4 * live + 128) return;
    std::erase_if(heap_, [&](const Entry& e) { return !current(e); });
    std::make_heap(heap_.begin(), heap_.end(), later);
    std::erase_if(by_age_, [&](const Aged& e) { return !current(e); });
  }
  void clear() {
    heap_.clear();
    by_age_.clear();
  }

  // Discovery rounds: a head staged in round r may go out once round r + 1 has begun.
  uint64_t round() const { return round_; }
  void begin_round() { ++round_; }
  bool settled_before(uint64_t staged_round) const { return staged_round < round_; }

 private:
  // Heap order: the smallest key on top; equal keys (two publishers' stamps can tie) by
  // staging order. A type, not a function: the heap algorithms inline it.
  struct Later {
    bool operator()(const Entry& a, const Entry& b) const {
      return a.key != b.key ? a.key > b.key : a.serial > b.serial;
    }
  };
  static constexpr Later later{};

  // A staged head and the deliveries made before it was staged.
  struct Aged : Entry {
    uint64_t staged_at = 0;
  };

  std::vector<Entry> heap_;
  std::deque<Aged> by_age_;  // staged heads in staging order: the front waited longest
  uint64_t deliveries_ = 0;
  uint64_t serials_ = 0;
  uint64_t round_ = 1;
  uint64_t clock_seen_ = 0;  // realtime_ns() as last read
};

}  // namespace shmbus
