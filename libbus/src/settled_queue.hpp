// SettledQueue: deliveries a subscription change fixed before they were read. A message
// published before the change keeps the reasons it had then (a Redis server would have
// sent it already); the queue keeps them in publish-stamp order, for next() to merge with
// the rings' heads (delivery_order.hpp).
//
// Thread safety: one thread at a time (the Subscription's).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "ring.hpp"

namespace shmbus {

struct SettledDelivery {
  std::string channel;
  std::string pattern;  // empty: the channel delivery ("message")
  std::vector<std::byte> payload;
  MessageInfo info;
  bool gap = false;           // Message::gap
  uint64_t key = 0;           // DeliveryOrder key (0: before anything else)
  uint64_t staged_round = 0;  // the discovery round it was read in
};

class SettledQueue {
 public:
  bool empty() const { return queue_.empty(); }
  const SettledDelivery& front() const { return queue_.front(); }
  void push(SettledDelivery delivery) { queue_.push_back(std::move(delivery)); }
  // Back in key order after pushes; stable, so a message's deliveries stay together in
  // Redis's order (message, then each pmessage).
  void sort() {
    std::stable_sort(
        queue_.begin(), queue_.end(),
        [](const SettledDelivery& a, const SettledDelivery& b) { return a.key < b.key; });
  }
  // Takes the front out; it stays valid until the next take().
  const SettledDelivery& take() {
    taken_ = std::move(queue_.front());
    queue_.pop_front();
    return taken_;
  }

 private:
  std::deque<SettledDelivery> queue_;
  SettledDelivery taken_;  // what take() returned last: Messages point into it
};

}  // namespace shmbus
