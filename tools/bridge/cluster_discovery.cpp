#include "cluster_discovery.hpp"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <stdexcept>
#include <system_error>

namespace shmbus::bridge {

const redisReply* round_trip(RedisConnection& connection,
                             std::initializer_list<std::string_view> args,
                             std::chrono::milliseconds timeout) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + timeout;
  connection.append(args);
  for (;;) {
    if (connection.output_pending()) connection.flush();
    connection.read();
    if (const redisReply* reply = connection.next_reply()) return reply;
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0)
      throw std::runtime_error("no answer to " + std::string(*args.begin()) + " within " +
                               std::to_string(timeout.count()) + " ms");
    pollfd fd = connection.poll_entry();
    if (poll(&fd, 1, static_cast<int>(left.count())) < 0 && errno != EINTR)
      throw std::system_error(errno, std::generic_category(), "poll");
  }
}

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
    const std::string address = seed.host + ":" + std::to_string(seed.port);
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
