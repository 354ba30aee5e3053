#include "cluster_discovery.hpp"

#include <optional>
#include <stdexcept>

namespace shmbus::bridge {

namespace {

// The map one seed gives; throws std::runtime_error saying why it gives none.
SlotMap ask(const RedisEndpoint& seed) {
  RedisConnection connection(seed);
  const redisReply* reply = round_trip(connection, {"CLUSTER", "SHARDS"}, seed.connect_timeout);
  if (reply->type != REDIS_REPLY_ERROR) return parse_cluster_shards(reply);
  const std::string error(reply_text(reply));
  if (error.find("cluster support disabled") != std::string::npos)
    throw std::runtime_error(
        "not in cluster mode (for a single Redis server, set [redis] host and port instead of "
        "nodes)");
  // Before 7.0 (or where a proxy does not know it): the older command.
  if (error.find("unknown subcommand") == std::string::npos)
    throw std::runtime_error("CLUSTER SHARDS refused: " + error);
  reply = round_trip(connection, {"CLUSTER", "SLOTS"}, seed.connect_timeout);
  if (reply->type == REDIS_REPLY_ERROR)
    throw std::runtime_error("CLUSTER SLOTS refused: " + std::string(reply_text(reply)));
  return parse_cluster_slots(reply);
}

// Nodes whose endpoint the reply left unknown are reached at the host that was asked.
SlotMap fill_unknown_hosts(SlotMap map, const std::string& asked) {
  std::vector<ClusterShard> shards = map.shards();
  for (ClusterShard& shard : shards) {
    if (shard.primary.host.empty()) shard.primary.host = asked;
    for (ClusterNode& replica : shard.replicas)
      if (replica.host.empty()) replica.host = asked;
  }
  return SlotMap(std::move(shards));
}

}  // namespace

Discovery discover_cluster(const std::vector<RedisEndpoint>& seeds) {
  std::optional<Discovery> best;
  std::string failures;
  for (const RedisEndpoint& seed : seeds) {
    const std::string address = seed.address();
    try {
      SlotMap map = fill_unknown_hosts(ask(seed), seed.host);
      if (map.slots_served() == kClusterSlots) return {std::move(map), address};
      if (!best || map.slots_served() > best->map.slots_served())
        best = Discovery{std::move(map), address};
    } catch (const std::exception& e) {
      // Connection errors name the server already.
      const std::string why = e.what();
      failures += (failures.empty() ? "" : "; ") +
                  (why.find(address) == std::string::npos ? address + ": " + why : why);
    }
  }
  if (best && best->map.slots_served() > 0) return std::move(*best);
  throw std::runtime_error("no Redis Cluster topology from the seed nodes (" +
                           (failures.empty() ? std::string("no slot is served") : failures) + ")");
}

}  // namespace shmbus::bridge
