// Finding a Redis Cluster's topology from seed nodes: each seed in turn is asked for
// CLUSTER SHARDS (CLUSTER SLOTS where the server predates it) on a connection that lives
// for that one question. The first map serving all 16,384 slots wins; while the cluster is
// still being formed (or has lost a shard), the map serving most slots.
//
// Blocking (each seed for at most its connect_timeout, twice: connect, then the answer):
// the Redis thread's to call, never the export thread's.
#pragma once

#include <string>
#include <vector>

#include "cluster_topology.hpp"
#include "redis_connection.hpp"

namespace shmbus::bridge {

struct Discovery {
  SlotMap map;
  std::string source;  // the seed that answered, host:port
};

// Throws std::runtime_error naming every seed and why it gave no map (refused, timed out,
// not in cluster mode, a malformed reply) when none did.
Discovery discover_cluster(const std::vector<RedisEndpoint>& seeds);

}  // namespace shmbus::bridge
