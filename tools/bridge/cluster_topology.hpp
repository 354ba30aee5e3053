// Which node of a Redis Cluster serves which hash slot: parsed from CLUSTER SHARDS (Redis
// >= 7.0) or CLUSTER SLOTS (older servers, and the fallback), and the redirection errors
// (-MOVED, -ASK) that say the map is out of date.
//
// Replies come off the network, so nothing in them is trusted: a reply of the wrong shape,
// a slot outside 0..16383, a port outside 1..65535, or two shards claiming one slot makes
// the parse throw std::runtime_error naming what was wrong, and the caller keeps the map it
// had. Pure functions over hiredis's reply objects: tests build replies with hiredis's own
// reader (tests/cluster_units_test.cc), no server needed.
//
// Thread safety: none needed; a SlotMap is a value, replaced whole on a refresh.
#pragma once

#include <hiredis/hiredis.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "key_slot.hpp"

namespace shmbus::bridge {

struct ClusterNode {
  std::string id;    // the node's 40-character name (empty if the reply gave none)
  std::string host;  // empty: the node the reply came from (its endpoint is unknown)
  int port = 0;
  bool primary = false;
  bool online = true;  // CLUSTER SHARDS's health; CLUSTER SLOTS lists online nodes only
  // Health "fail". Not the same as !online: a replica of an empty primary says "loading"
  // until its first replication ping (10 s), linked and acknowledging all along.
  bool failed = false;

  std::string address() const { return host + ":" + std::to_string(port); }
  bool operator==(const ClusterNode&) const = default;
};

struct SlotRange {
  uint16_t first = 0;
  uint16_t last = 0;  // inclusive, as Redis writes ranges
  bool operator==(const SlotRange&) const = default;
};

struct ClusterShard {
  std::vector<SlotRange> slots;
  ClusterNode primary;
  std::vector<ClusterNode> replicas;
};

class SlotMap {
 public:
  // No shard, no slot served.
  SlotMap();
  // Throws std::runtime_error if a range is outside 0..16383 or ends before it starts, a
  // slot is claimed twice, or a shard serving slots has no primary.
  explicit SlotMap(std::vector<ClusterShard> shards);

  const std::vector<ClusterShard>& shards() const { return shards_; }
  // The index in shards() of the shard serving `slot`, or nullopt if none does (the
  // cluster is being set up or lost the slot's shard).
  std::optional<size_t> shard_of(uint16_t slot) const;
  // How many of the 16384 slots some shard serves.
  uint32_t slots_served() const;

 private:
  static constexpr uint16_t kUnserved = 0xffff;
  std::vector<ClusterShard> shards_;
  std::array<uint16_t, kClusterSlots> owner_;  // slot -> index in shards_, or kUnserved
};

// CLUSTER SHARDS (RESP2: an array of shards, each a flat array of field / value pairs with
// "slots" as [first, last, ...] and "nodes" as flat field / value arrays).
SlotMap parse_cluster_shards(const redisReply* reply);
// CLUSTER SLOTS (an array of [first, last, [host, port, id, ...], replicas...]).
SlotMap parse_cluster_slots(const redisReply* reply);

// A redirection error: "MOVED 3999 127.0.0.1:6381" or "ASK 3999 127.0.0.1:6381" (hiredis
// gives the error text without its leading '-').
struct Redirect {
  enum class Kind { kMoved, kAsk };
  Kind kind = Kind::kMoved;
  uint16_t slot = 0;
  std::string host;
  int port = 0;
};
// The redirection `error` names; nullopt for any other error (or one malformed). An empty
// host (sent empty, or "?") means the node that answered.
std::optional<Redirect> parse_redirect(std::string_view error);

}  // namespace shmbus::bridge
