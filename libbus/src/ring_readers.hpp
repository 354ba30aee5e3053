// The rings a Subscription reads, indexed three ways, and the queue of those with news.
//
// Invariants (the Subscription's I1 and I3):
//   - at(bit), find(channel id) and all() describe the same readers; each reader holds the
//     reader slot the daemon gave it until it is removed (Reader's destructor frees it);
//   - a ring is in the ready queue at most once (RingReader::queued).
//
// Thread safety: one thread at a time (the Subscription's).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "ring.hpp"

namespace shmbus {

struct RingReader {
  uint32_t channel_id = 0;
  uint32_t bit = 0;
  // Losses reported on messages this subscription skipped (imported ones, when local only):
  // they belong to the next message delivered from this ring.
  uint64_t pending_lost = 0;
  std::string channel;
  RingRef ring;
  std::unique_ptr<Reader> reader;
  bool by_name = false;
  std::vector<std::string> patterns;  // the subscription's patterns that match `channel`
  bool queued = false;
  // Added while subscribing again after a reconnect: its first message says Message::gap.
  bool gap = false;
  // Ordered reading (DeliveryOrder): the next message, read but not consumed, its key, the
  // discovery round it was read in and its staging's serial; and the highest key read from
  // this ring, which the next one's key may not go below.
  bool staged = false;
  MessageView head;
  uint64_t head_key = 0;
  uint64_t staged_round = 0;
  uint64_t stage_serial = 0;
  uint64_t last_key = 0;
  size_t deliveries() const { return (by_name ? 1 : 0) + patterns.size(); }
  // The pattern of delivery `index` of a message: the channel delivery (empty) first, as
  // Redis sends "message" before "pmessage".
  const std::string& pattern_of(size_t index) const {
    static const std::string kNone;
    return by_name && index == 0 ? kNone : patterns[index - (by_name ? 1 : 0)];
  }
};

// Rings with news, in arrival order: their bits were taken (or a sweep or a delivery queued
// them), and their next message is to be read (staged, when the subscription merges). A
// vector with a read index: no allocation per message once warm, unlike a deque.
class ReadyQueue {
 public:
  bool empty() const { return head_ == bits_.size(); }
  void push(uint32_t bit) {
    if (empty()) {
      bits_.clear();
      head_ = 0;
    } else if (head_ >= 64 && head_ * 2 >= bits_.size()) {
      // Never empty while many rings stay busy: drop the consumed front now and then.
      bits_.erase(bits_.begin(), bits_.begin() + static_cast<std::ptrdiff_t>(head_));
      head_ = 0;
    }
    bits_.push_back(bit);
  }
  uint32_t pop() { return bits_[head_++]; }
  void remove(uint32_t bit) {
    bits_.erase(std::remove(bits_.begin() + static_cast<std::ptrdiff_t>(head_), bits_.end(), bit),
                bits_.end());
  }

 private:
  std::vector<uint32_t> bits_;
  size_t head_ = 0;
};

// The readers of a subscription, by doorbell bit (so the bit a publisher set finds its ring
// by index: the daemon hands out low bits first, so the vector stays about as long as the
// number of channels read), by channel id, and dense (for polling and sweeping).
class RingReaders {
 public:
  RingReader* at(uint32_t bit) const { return bit < by_bit_.size() ? by_bit_[bit].get() : nullptr; }
  RingReader* find(uint32_t channel_id) const {
    const auto it = bit_of_.find(channel_id);
    return it == bit_of_.end() ? nullptr : by_bit_[it->second].get();
  }
  const std::vector<RingReader*>& all() const { return dense_; }
  size_t size() const { return dense_.size(); }
  // The most messages the rings read can hold together (a frame is at least 32 bytes).
  uint64_t max_messages() const { return max_messages_; }
  bool empty() const { return dense_.empty(); }

  // Adds a reader. REQUIRES: its bit and its channel are not held yet.
  RingReader& add(std::unique_ptr<RingReader> reader) {
    RingReader& added = *reader;
    max_messages_ += frames_in(added);
    bit_of_[added.channel_id] = added.bit;
    if (by_bit_.size() <= added.bit) by_bit_.resize(added.bit + 1);
    dense_.push_back(&added);
    by_bit_[added.bit] = std::move(reader);
    return added;
  }
  // Removes the reader of `channel_id` (its Reader frees its slot); its bit, if there was one.
  std::optional<uint32_t> remove(uint32_t channel_id) {
    const auto it = bit_of_.find(channel_id);
    if (it == bit_of_.end()) return std::nullopt;
    const uint32_t bit = it->second;
    max_messages_ -= frames_in(*by_bit_[bit]);
    bit_of_.erase(it);
    std::erase(dense_, by_bit_[bit].get());
    by_bit_[bit].reset();
    ready_.remove(bit);
    return bit;
  }
  // Removes every reader.
  void clear() {
    ready_ = ReadyQueue{};
    max_messages_ = 0;
    dense_.clear();
    bit_of_.clear();
    by_bit_.clear();
  }

  // The ready queue: rings with news, in arrival order.
  void enqueue(uint32_t bit) {
    RingReader* rr = at(bit);
    if (rr == nullptr || rr->queued) return;
    rr->queued = true;
    ready_.push(bit);
  }
  bool has_ready() const { return !ready_.empty(); }
  // The next ring with news (no longer queued), or null if the one queued is gone.
  RingReader* pop_ready() {
    RingReader* rr = at(ready_.pop());
    if (rr != nullptr) rr->queued = false;
    return rr;
  }

 private:
  static uint64_t frames_in(const RingReader& rr) {
    return rr.ring.capacity() / layout::kFrameAlignment;
  }

  std::vector<std::unique_ptr<RingReader>> by_bit_;
  std::vector<RingReader*> dense_;
  std::unordered_map<uint32_t, uint32_t> bit_of_;  // channel id -> bit
  ReadyQueue ready_;
  uint64_t max_messages_ = 0;  // sum of frames_in() over the readers
};

}  // namespace shmbus
