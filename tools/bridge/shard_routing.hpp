// Where each Redis command of the bridge goes: the shards of its link, and which one
// serves a channel or key.
//
// On one Redis server (the default) the link has one shard, which serves everything. On a
// Redis Cluster ([redis] nodes) it has one shard per primary, each with its own publishing
// and subscriber connection: sharded channels (SPUBLISH / SSUBSCRIBE) and stream keys go to
// the shard that serves their hash slot, and classic pub/sub (PUBLISH / SUBSCRIBE /
// PSUBSCRIBE) goes to shard 0, where its raw echoes meet shard 0's heartbeats
// (bridge_shared.hpp, "Raw-mode echo suppression").
//
// Each shard has a heartbeat channel of its own, named so that it hashes into one of that
// shard's slots: a heartbeat is then the liveness probe and echo barrier of exactly the
// connection pair it travels on.
//
// Thread safety: a value, built by the Redis thread when the link comes up and shared
// read-only with the export thread (std::shared_ptr<const ShardRouting>).
#pragma once

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "cluster_topology.hpp"
#include "key_slot.hpp"
#include "redis_connection.hpp"

namespace shmbus::bridge {

struct ShardRouting {
  bool cluster = false;
  std::vector<RedisEndpoint> endpoints;         // per shard: its primary
  std::vector<std::string> heartbeat_channels;  // per shard
  // Per shard, its replicas the topology did not report failed: durable XADDs to a shard with
  // one are acknowledged only once a replica has them (WAIT), so a primary killed before
  // replicating loses none of them (exporter.cpp).
  std::vector<uint32_t> replicas;
  // Cluster only: slot -> shard index.
  std::array<uint16_t, kClusterSlots> shard_of_slot{};

  size_t shards() const { return endpoints.size(); }
  // The shard serving the sharded channel or key `redis_name` (0 on one server).
  size_t shard_of(std::string_view redis_name) const {
    return cluster ? shard_of_slot[key_slot(redis_name)] : 0;
  }
  size_t shard_of_slot_number(uint16_t slot) const { return cluster ? shard_of_slot[slot] : 0; }
  // How heartbeats travel: a classic channel on one server, a sharded one on a cluster
  // (a classic PUBLISH would be broadcast to every node).
  std::string_view heartbeat_publish() const { return cluster ? "SPUBLISH" : "PUBLISH"; }
  std::string_view heartbeat_subscribe() const { return cluster ? "SSUBSCRIBE" : "SUBSCRIBE"; }
  // The shard whose heartbeat channel `channel` is, or shards() if none.
  size_t heartbeat_shard(std::string_view channel) const;
};

// An error reply saying the link's picture of a cluster is out of date: a slot moved
// (MOVED, ASK) or the cluster lost a shard (CLUSTERDOWN).
bool is_topology_error(std::string_view error);

// Thrown when the cluster's topology changed under the link (a topology error, or a
// sharded subscription Redis ended by itself): the link is rebuilt on a fresh topology at
// once, not after a growing backoff, since nothing failed.
class TopologyChanged : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Whether `a` and `b` send every slot to the same servers (a rediscovery found nothing new).
bool same_routes(const ShardRouting& a, const ShardRouting& b);

// One server: one shard at `server`, heartbeats on `heartbeat_channel`.
ShardRouting single_server_routing(RedisEndpoint server, std::string heartbeat_channel);

// A cluster: one shard per primary of `map`, reached with `credentials`'s user, password
// and connect timeout; heartbeat channels are `heartbeat_base` + ":{<n>}" for the smallest
// n that hashes into the shard. Throws std::runtime_error when a slot is unserved (the
// cluster is being set up or lost a shard: the caller retries later) or `heartbeat_base`
// holds a '{' (it would pin every heartbeat to one slot).
ShardRouting cluster_routing(const SlotMap& map, const RedisEndpoint& credentials,
                             const std::string& heartbeat_base);

}  // namespace shmbus::bridge
