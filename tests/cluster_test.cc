// The bridge's cluster layer against real servers: key slots against CLUSTER KEYSLOT, and
// the topology parsed from a live 3 + 3 cluster routing every SPUBLISH to the node that
// takes it, with the MOVED of the others naming the same slot and owner.
#include <gtest/gtest.h>
#include <hiredis/hiredis.h>
#include <poll.h>

#include <chrono>
#include <random>
#include <string>

#include "cluster_discovery.hpp"
#include "cluster_topology.hpp"
#include "key_slot.hpp"
#include "redis_cluster.hpp"

namespace shmbus::bridge {
namespace {

using test::RedisCluster;
using test::RedisServer;
using test::RedisServerOptions;

struct FreeReply {
  void operator()(redisReply* r) const {
    if (r) freeReplyObject(r);
  }
};
using Reply = std::unique_ptr<redisReply, FreeReply>;

TEST(ClusterLive, KeySlotMatchesClusterKeyslot) {
  // CLUSTER KEYSLOT needs cluster mode, not a formed cluster: one node is enough.
  if (!test::find_redis_server()) GTEST_SKIP() << "redis-server is not installed";
  struct TempDir {
    std::string path = [] {
      char dir[] = "/tmp/shmbus-keyslot-XXXXXX";
      return std::string(mkdtemp(dir) ? dir : "");
    }();
    ~TempDir() {
      if (!path.empty()) std::filesystem::remove_all(path);
    }
  } dir;
  ASSERT_FALSE(dir.path.empty());
  RedisServerOptions options;
  options.extra_args = {"--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        std::to_string(test::free_loopback_port()),
                        "--dir",
                        dir.path};
  RedisServer server(options);
  ASSERT_TRUE(server.ok()) << server.error();
  redisContext* c = server.connect();
  ASSERT_TRUE(c != nullptr && c->err == 0);
  std::mt19937 random(7);
  // Names with braces in every position and every byte value, so hash tags, empty tags and
  // unclosed ones all come up.
  const std::string alphabet = "ab{}:{}x";
  int checked = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string name;
    const size_t length = random() % 24;
    for (size_t k = 0; k < length; ++k)
      name += random() % 3 == 0 ? static_cast<char>(random() % 256)
                                : alphabet[random() % alphabet.size()];
    Reply reply(
        static_cast<redisReply*>(redisCommand(c, "CLUSTER KEYSLOT %b", name.data(), name.size())));
    ASSERT_TRUE(reply && reply->type == REDIS_REPLY_INTEGER)
        << (reply && reply->str ? reply->str : "no reply");
    ASSERT_EQ(key_slot(name), reply->integer) << "name of " << name.size() << " bytes";
    ++checked;
  }
  redisFree(c);
  EXPECT_EQ(checked, 3000);
}

TEST(ClusterLive, TopologyRoutesEveryChannelToItsShard) {
  RedisCluster cluster(3, 1);
  if (!cluster.missing().empty()) GTEST_SKIP() << cluster.missing();
  ASSERT_TRUE(cluster.ok()) << cluster.error();
  Reply shards_reply(cluster.node(0).command("CLUSTER SHARDS"));
  Reply slots_reply(cluster.node(0).command("CLUSTER SLOTS"));
  ASSERT_TRUE(shards_reply && slots_reply);
  const SlotMap map = parse_cluster_shards(shards_reply.get());
  const SlotMap fallback = parse_cluster_slots(slots_reply.get());
  ASSERT_EQ(map.shards().size(), 3u);
  ASSERT_EQ(map.slots_served(), kClusterSlots);
  ASSERT_EQ(fallback.slots_served(), kClusterSlots);
  for (const ClusterShard& shard : map.shards()) {
    ASSERT_EQ(shard.replicas.size(), 1u);
    EXPECT_TRUE(shard.primary.primary && shard.primary.online);
  }
  // Both parsers agree on every slot's primary.
  for (uint32_t slot = 0; slot < kClusterSlots; ++slot) {
    const auto a = map.shard_of(static_cast<uint16_t>(slot));
    const auto b = fallback.shard_of(static_cast<uint16_t>(slot));
    ASSERT_TRUE(a && b);
    ASSERT_EQ(map.shards()[*a].primary.address(), fallback.shards()[*b].primary.address());
  }
  const auto server_at = [&](const ClusterNode& node) -> RedisServer& {
    for (size_t i = 0; i < cluster.size(); ++i)
      if (cluster.node(i).port() == node.port) return cluster.node(i);
    throw std::runtime_error("no such node");
  };
  int moved = 0;
  for (int i = 0; i < 60; ++i) {
    const std::string channel = "chat:room" + std::to_string(i);
    const uint16_t slot = key_slot(channel);
    const ClusterShard& owner = map.shards()[*map.shard_of(slot)];
    // The owner's primary and its replica both take it.
    for (const ClusterNode* node : {&owner.primary, &owner.replicas[0]}) {
      Reply ok(server_at(*node).command("SPUBLISH %s x", channel.c_str()));
      ASSERT_TRUE(ok && ok->type == REDIS_REPLY_INTEGER) << channel << " at " << node->address();
    }
    // Every other primary redirects to the owner, naming the slot we computed.
    for (const ClusterShard& other : map.shards()) {
      if (&other == &owner) continue;
      Reply error(server_at(other.primary).command("SPUBLISH %s x", channel.c_str()));
      ASSERT_TRUE(error && error->type == REDIS_REPLY_ERROR);
      const auto redirect = parse_redirect(std::string_view(error->str, error->len));
      ASSERT_TRUE(redirect.has_value()) << error->str;
      EXPECT_EQ(redirect->kind, Redirect::Kind::kMoved);
      EXPECT_EQ(redirect->slot, slot);
      EXPECT_EQ(redirect->port, owner.primary.port);
      ++moved;
    }
  }
  EXPECT_EQ(moved, 120);
}

RedisEndpoint endpoint_of(int port) {
  RedisEndpoint e;
  e.host = "127.0.0.1";
  e.port = port;
  e.connect_timeout = std::chrono::milliseconds(1000);
  return e;
}

// Seeds are tried in turn: a dead one is skipped, and when none answers the error names
// each with its reason; a server that is not in cluster mode says how to configure it.
TEST(ClusterLive, DiscoveryTriesEverySeedAndNamesWhatFailed) {
  RedisCluster cluster(3, 0);
  if (!cluster.missing().empty()) GTEST_SKIP() << cluster.missing();
  ASSERT_TRUE(cluster.ok()) << cluster.error();
  const int dead = test::free_loopback_port();
  const Discovery found =
      discover_cluster({endpoint_of(dead), endpoint_of(cluster.node(1).port())});
  EXPECT_EQ(found.map.slots_served(), kClusterSlots);
  EXPECT_EQ(found.map.shards().size(), 3u);
  EXPECT_EQ(found.source, "127.0.0.1:" + std::to_string(cluster.node(1).port()));

  // Nodes that announce no endpoint (cluster-preferred-endpoint-type unknown-endpoint):
  // CLUSTER SHARDS says "?" and the ip is taken (CLUSTER SLOTS would send nil hosts:
  // bridge_units covers that parse).
  for (size_t i = 0; i < cluster.size(); ++i)
    Reply(cluster.node(i).command("CONFIG SET cluster-preferred-endpoint-type unknown-endpoint"));
  const Discovery unknown = discover_cluster({endpoint_of(cluster.node(2).port())});
  ASSERT_EQ(unknown.map.slots_served(), kClusterSlots);
  for (const ClusterShard& shard : unknown.map.shards()) EXPECT_EQ(shard.primary.host, "127.0.0.1");

  RedisServer plain;
  ASSERT_TRUE(plain.ok()) << plain.error();
  try {
    discover_cluster({endpoint_of(dead), endpoint_of(plain.port())});
    ADD_FAILURE() << "a dead seed and a plain server gave a topology";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("127.0.0.1:" + std::to_string(dead)), std::string::npos) << what;
    EXPECT_NE(what.find("not in cluster mode"), std::string::npos) << what;
    EXPECT_NE(what.find("[redis] host and port"), std::string::npos) << what;
  }
}

// A slot moved to another primary: the owner's subscribers get an unsolicited
// `sunsubscribe`, SPUBLISH at the old owner answers MOVED naming the new one, and a new
// discovery routes the slot there. What the bridge must react to, checked on the real
// server.
TEST(ClusterLive, SlotMoveIsSeenInMovedSunsubscribeAndRediscovery) {
  RedisCluster cluster(3, 0);
  if (!cluster.missing().empty()) GTEST_SKIP() << cluster.missing();
  ASSERT_TRUE(cluster.ok()) << cluster.error();
  const std::string channel = "chat:room1";
  const uint16_t slot = key_slot(channel);
  const SlotMap before = discover_cluster({endpoint_of(cluster.node(0).port())}).map;
  const ClusterShard& owner = before.shards()[*before.shard_of(slot)];
  size_t from = 0, to = 0;
  for (size_t i = 0; i < cluster.size(); ++i)
    if (cluster.node(i).port() == owner.primary.port) from = i;
  to = (from + 1) % cluster.size();

  RedisConnection subscriber(endpoint_of(cluster.node(from).port()));
  const redisReply* confirmed =
      round_trip(subscriber, {"SSUBSCRIBE", channel}, std::chrono::milliseconds(2000));
  ASSERT_EQ(confirmed->type, REDIS_REPLY_ARRAY);
  ASSERT_EQ(reply_text(confirmed->element[0]), "ssubscribe");

  ASSERT_TRUE(cluster.move_slot(slot, from, to));

  // The push that says "this slot moved": sunsubscribe, with no SUNSUBSCRIBE sent.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  const redisReply* push = nullptr;
  while (push == nullptr && std::chrono::steady_clock::now() < until) {
    pollfd fd = subscriber.poll_entry();
    poll(&fd, 1, 100);
    subscriber.read();
    push = subscriber.next_reply();
  }
  ASSERT_NE(push, nullptr) << "no sunsubscribe push after the slot moved";
  ASSERT_EQ(push->type, REDIS_REPLY_ARRAY);
  EXPECT_EQ(reply_text(push->element[0]), "sunsubscribe");
  EXPECT_EQ(reply_text(push->element[1]), channel);

  Reply moved(cluster.node(from).command("SPUBLISH %s x", channel.c_str()));
  ASSERT_TRUE(moved && moved->type == REDIS_REPLY_ERROR);
  const auto redirect = parse_redirect(std::string_view(moved->str, moved->len));
  ASSERT_TRUE(redirect.has_value()) << moved->str;
  EXPECT_EQ(redirect->slot, slot);
  EXPECT_EQ(redirect->port, cluster.node(to).port());

  const SlotMap after = discover_cluster({endpoint_of(cluster.node(from).port())}).map;
  EXPECT_EQ(after.shards()[*after.shard_of(slot)].primary.port, cluster.node(to).port());
  EXPECT_EQ(after.slots_served(), kClusterSlots);
}

}  // namespace
}  // namespace shmbus::bridge
