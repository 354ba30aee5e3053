// The bridge's outbound queue: messages waiting for the publishing connection to Redis.
// Used by the export thread only (exporter.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "bridge_config.hpp"

namespace shmbus::bridge {

// Messages waiting for the publishing connection, oldest first. Keys and bodies are packed
// into one buffer that is reused: a burst that outruns Redis goes through here a message at
// a time, and a std::string each (a malloc and a free, from a queue thousands long, so
// malloc's per-thread cache never held them) was ~20 % of the export thread in perf.
// Also what durable messages are kept in while their XADD is in flight.
class OutboundQueue {
 public:
  struct Item {
    std::string_view key;   // Redis channel or stream key
    std::string_view body;  // envelope or raw payload (durable: the payload)
    const Rule* rule;
    uint64_t sequence, publish_unix_ns;
    // On a cluster: whether `key` goes to the shard of its slot (sharded channels, stream
    // keys; else shard 0), and that slot. Worked out once per channel by the exporter.
    uint16_t slot = 0;
    bool by_slot = false;
  };  // key and body view the queue: valid until it next changes

  bool empty() const { return head_ == packed_.size(); }
  size_t size() const { return packed_.size() - head_; }
  uint64_t bytes() const { return buffer_.size() - buffer_head_; }  // keys and bodies
  // Memory held: the buffers' capacity. Within about four times bytes() (compaction at
  // half, then a string's doubling) plus the first 64 KiB, and given back when the queue
  // empties if above kKeptQueueCapacity.
  uint64_t held_bytes() const { return buffer_.capacity() + packed_.capacity() * sizeof(Packed); }

  void push_back(const Item& item) {
    packed_.push_back({item.rule, item.sequence, item.publish_unix_ns,
                       static_cast<uint32_t>(item.key.size()),
                       static_cast<uint32_t>(item.body.size()), item.slot, item.by_slot});
    buffer_.append(item.key).append(item.body);
  }
  // Puts `first` (durable messages whose XADD was in flight on a broken link) ahead of
  // everything queued, in their order.
  void put_first(OutboundQueue&& first) {
    for (; !empty(); pop_front()) first.push_back(front());
    std::swap(*this, first);
    first.clear();
  }
  Item front() const {
    const Packed& p = packed_[head_];
    const std::string_view at(buffer_.data() + buffer_head_, size_t{p.key_bytes} + p.body_bytes);
    return {at.substr(0, p.key_bytes),
            at.substr(p.key_bytes),
            p.rule,
            p.sequence,
            p.publish_unix_ns,
            p.slot,
            p.by_slot};
  }
  void pop_front() {
    const Packed& p = packed_[head_++];
    buffer_head_ += size_t{p.key_bytes} + p.body_bytes;
    if (head_ == packed_.size()) {
      clear();
      return;
    }
    // Half of either taken: move the rest to the front, so each byte and entry is moved
    // about once (amortized O(1)). By bytes too: 64 queued messages of 1 MiB must not
    // leave gigabytes of dropped ones in front of them before 4,096 entries have gone.
    if (head_ >= 4096 && 2 * head_ >= packed_.size()) {
      packed_.erase(packed_.begin(), packed_.begin() + static_cast<std::ptrdiff_t>(head_));
      head_ = 0;
    }
    if (buffer_head_ >= (64u << 10) && 2 * buffer_head_ >= buffer_.size()) {
      buffer_.erase(0, buffer_head_);
      buffer_head_ = 0;
      if (buffer_.capacity() > kKeptQueueCapacity && buffer_.capacity() > 4 * buffer_.size())
        buffer_.shrink_to_fit();
    }
  }
  void clear() {
    packed_.clear();
    buffer_.clear();
    head_ = buffer_head_ = 0;
    // After a long outage the buffer may have grown to queue_bytes: not kept for good.
    if (buffer_.capacity() > kKeptQueueCapacity) {
      buffer_.shrink_to_fit();
      packed_.shrink_to_fit();
    }
  }

 private:
  struct Packed {
    const Rule* rule;
    uint64_t sequence, publish_unix_ns;
    // 32 bits: a key is a channel name (1 KiB) and the prefix, a body at most
    // max_payload_bytes (512 MiB) and an envelope; with the slot, 40 bytes as before.
    uint32_t key_bytes, body_bytes;
    uint16_t slot;
    bool by_slot;
  };
  static constexpr size_t kKeptQueueCapacity = 4u << 20;
  std::vector<Packed> packed_;
  std::string buffer_;  // packed_[i]'s key then body, in order
  size_t head_ = 0, buffer_head_ = 0;
};

}  // namespace shmbus::bridge
