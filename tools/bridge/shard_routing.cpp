#include "shard_routing.hpp"

#include <algorithm>
#include <stdexcept>

namespace shmbus::bridge {

bool is_topology_error(std::string_view error) {
  return starts_with_any(error, {"MOVED ", "ASK ", "CLUSTERDOWN"});
}

bool same_routes(const ShardRouting& a, const ShardRouting& b) {
  if (a.cluster != b.cluster || a.shards() != b.shards() || a.shard_of_slot != b.shard_of_slot)
    return false;
  for (size_t i = 0; i < a.shards(); ++i)
    if (a.endpoints[i].host != b.endpoints[i].host || a.endpoints[i].port != b.endpoints[i].port)
      return false;
  return true;
}

size_t ShardRouting::heartbeat_shard(std::string_view channel) const {
  for (size_t i = 0; i < heartbeat_channels.size(); ++i)
    if (heartbeat_channels[i] == channel) return i;
  return shards();
}

ShardRouting single_server_routing(RedisEndpoint server, std::string heartbeat_channel) {
  ShardRouting routing;
  routing.endpoints.push_back(std::move(server));
  routing.heartbeat_channels.push_back(std::move(heartbeat_channel));
  routing.replicas.push_back(0);
  return routing;
}

ShardRouting cluster_routing(const SlotMap& map, const RedisEndpoint& credentials,
                             const std::string& heartbeat_base) {
  if (heartbeat_base.find('{') != std::string::npos)
    throw std::runtime_error("heartbeat channel '" + heartbeat_base +
                             "' holds a '{', which would pin every heartbeat to one slot");
  if (map.slots_served() != kClusterSlots)
    throw std::runtime_error("the cluster serves " + std::to_string(map.slots_served()) +
                             " of its 16384 slots (being set up, or a primary is down and "
                             "its replica not yet promoted)");
  ShardRouting routing;
  routing.cluster = true;
  // Primaries serving no slot (left empty by a reshard) get no shard: nothing goes there.
  std::vector<uint16_t> index_of(map.shards().size(), 0);
  for (size_t i = 0; i < map.shards().size(); ++i) {
    const ClusterShard& shard = map.shards()[i];
    if (shard.slots.empty()) continue;
    index_of[i] = static_cast<uint16_t>(routing.endpoints.size());
    RedisEndpoint endpoint = credentials;
    endpoint.host = shard.primary.host;
    endpoint.port = shard.primary.port;
    endpoint.db = 0;  // a cluster has database 0 only
    routing.endpoints.push_back(std::move(endpoint));
    routing.replicas.push_back(
        static_cast<uint32_t>(std::count_if(shard.replicas.begin(), shard.replicas.end(),
                                            [](const ClusterNode& n) { return !n.failed; })));
  }
  for (uint32_t slot = 0; slot < kClusterSlots; ++slot)
    routing.shard_of_slot[slot] = index_of[*map.shard_of(static_cast<uint16_t>(slot))];
  // Every shard serves a slot, so each finds a tag within a few times
  // 16384 / (its slots) tries.
  routing.heartbeat_channels.resize(routing.shards());
  size_t missing = routing.shards();
  for (uint64_t n = 0; missing > 0 && n < 64 * uint64_t{kClusterSlots}; ++n) {
    std::string name = heartbeat_base + ":{" + std::to_string(n) + "}";
    std::string& channel = routing.heartbeat_channels[routing.shard_of(name)];
    if (!channel.empty()) continue;
    channel = std::move(name);
    --missing;
  }
  if (missing > 0) throw std::runtime_error("no heartbeat channel found for every shard");
  return routing;
}

}  // namespace shmbus::bridge
