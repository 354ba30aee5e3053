// The bridge's cluster layer without a server (tools/bridge/key_slot.hpp,
// tools/bridge/cluster_topology.hpp): key slots against the specification's check value
// and known slots, and the topology parsers against replies written out in RESP and read
// with hiredis's own reader, malformed ones included. tests/cluster_test.cc checks the
// same code against a real cluster.
#include <gtest/gtest.h>
#include <hiredis/hiredis.h>

#include <memory>
#include <string>
#include <vector>

#include "cluster_topology.hpp"
#include "key_slot.hpp"
#include "shard_routing.hpp"

namespace shmbus::bridge {
namespace {

TEST(KeySlot, Crc16MatchesTheCheckValue) {
  // CRC-16/XMODEM's catalogued check value, and the one in the cluster specification.
  EXPECT_EQ(crc16_xmodem("123456789"), 0x31C3);
  EXPECT_EQ(crc16_xmodem(""), 0);
}

TEST(KeySlot, KnownSlots) {
  // Read from CLUSTER KEYSLOT of redis-server 7.0.15.
  EXPECT_EQ(key_slot("chat:room1"), 13607);
  EXPECT_EQ(key_slot("socket.io#/#"), 13868);
  EXPECT_EQ(key_slot("notif"), 8786);
  EXPECT_EQ(key_slot("presence"), 15428);
  EXPECT_EQ(key_slot("{shmbus}chat:room1"), 15498);
  EXPECT_EQ(key_slot("{shmbus}presence"), 15498);
  EXPECT_EQ(key_slot("{a}b"), 15495);
}

TEST(KeySlot, HashTags) {
  EXPECT_EQ(hash_tag_part("user:{42}:inbox"), "42");
  EXPECT_EQ(hash_tag_part("foo{bar}{zap}"), "bar");      // the first tag only
  EXPECT_EQ(hash_tag_part("foo{{bar}}"), "{bar");        // up to the first '}' after '{'
  EXPECT_EQ(hash_tag_part("foo{}{bar}"), "foo{}{bar}");  // an empty tag: the whole name
  EXPECT_EQ(hash_tag_part("foo{bar"), "foo{bar");        // unclosed: the whole name
  EXPECT_EQ(hash_tag_part("plain"), "plain");
  EXPECT_EQ(key_slot("a{tag}b"), key_slot("tag"));
  EXPECT_EQ(key_slot(std::string_view("\0{x}", 4)), key_slot("x"));
}

// RESP written by hand, read by hiredis into the reply objects the bridge gets.
class Resp {
 public:
  Resp& array(size_t n) { return raw("*" + std::to_string(n) + "\r\n"); }
  Resp& bulk(std::string_view s) {
    return raw("$" + std::to_string(s.size()) + "\r\n" + std::string(s) + "\r\n");
  }
  Resp& integer(long long n) { return raw(":" + std::to_string(n) + "\r\n"); }
  Resp& raw(const std::string& s) {
    text_ += s;
    return *this;
  }
  // One shard of CLUSTER SHARDS: slots then nodes, each node as given fields.
  using Fields = std::vector<std::pair<std::string, std::string>>;
  Resp& shard(const std::vector<long long>& bounds, const std::vector<Fields>& nodes) {
    array(4).bulk("slots").array(bounds.size());
    for (const long long b : bounds) integer(b);
    bulk("nodes").array(nodes.size());
    for (const Fields& node : nodes) {
      array(node.size() * 2);
      for (const auto& [k, v] : node) {
        bulk(k);
        if (k == "port" || k == "replication-offset")
          integer(std::stoll(v));
        else
          bulk(v);
      }
    }
    return *this;
  }

  struct Free {
    void operator()(redisReply* r) const { freeReplyObject(r); }
  };
  std::unique_ptr<redisReply, Free> reply() const {
    redisReader* reader = redisReaderCreate();
    redisReaderFeed(reader, text_.data(), text_.size());
    void* out = nullptr;
    EXPECT_EQ(redisReaderGetReply(reader, &out), REDIS_OK);
    redisReaderFree(reader);
    EXPECT_NE(out, nullptr) << "incomplete RESP in the test";
    return std::unique_ptr<redisReply, Free>(static_cast<redisReply*>(out));
  }

 private:
  std::string text_;
};

Resp::Fields node(const std::string& id, int port, const std::string& role,
                  const std::string& health = "online", const std::string& endpoint = "127.0.0.1") {
  return {
      {"id", id},     {"port", std::to_string(port)}, {"ip", "127.0.0.1"}, {"endpoint", endpoint},
      {"role", role}, {"replication-offset", "0"},    {"health", health}};
}

TEST(ClusterTopology, ParsesClusterShards) {
  Resp r;
  r.array(3)
      .shard({0, 5460}, {node("a", 7000, "master"), node("d", 7003, "replica", "loading")})
      .shard({10923, 16383}, {node("c", 7002, "master"), node("f", 7005, "replica")})
      .shard({5461, 10000, 10001, 10922}, {node("b", 7001, "master")});
  const SlotMap map = parse_cluster_shards(r.reply().get());
  ASSERT_EQ(map.shards().size(), 3u);
  EXPECT_EQ(map.slots_served(), kClusterSlots);
  EXPECT_EQ(map.shards()[0].primary.address(), "127.0.0.1:7000");
  ASSERT_EQ(map.shards()[0].replicas.size(), 1u);
  EXPECT_FALSE(map.shards()[0].replicas[0].online);
  EXPECT_FALSE(map.shards()[0].replicas[0].failed) << "loading is not failed";
  EXPECT_EQ(map.shards()[0].replicas[0].port, 7003);
  EXPECT_EQ(map.shard_of(0), 0u);
  EXPECT_EQ(map.shard_of(5460), 0u);
  EXPECT_EQ(map.shard_of(5461), 2u);
  EXPECT_EQ(map.shard_of(10001), 2u);
  EXPECT_EQ(map.shard_of(16383), 1u);
  EXPECT_EQ(map.shards()[2].slots, (std::vector<SlotRange>{{5461, 10000}, {10001, 10922}}));
}

TEST(ClusterTopology, KeepsTheOnlinePrimaryAndSkipsEmptyShards) {
  Resp r;
  r.array(2)
      .shard({0, 16383}, {node("old", 7000, "master", "fail"), node("new", 7003, "master")})
      .shard({}, {node("spare", 7009, "master")});
  const SlotMap map = parse_cluster_shards(r.reply().get());
  ASSERT_EQ(map.shards().size(), 1u);
  EXPECT_EQ(map.shards()[0].primary.id, "new");
}

TEST(ClusterTopology, UnknownEndpointFallsBackToTheIp) {
  Resp r;
  r.array(1).shard({0, 16383}, {node("a", 7000, "master", "online", "?")});
  EXPECT_EQ(parse_cluster_shards(r.reply().get()).shards()[0].primary.host, "127.0.0.1");
}

TEST(ClusterTopology, ParsesClusterSlots) {
  Resp r;
  r.array(3);
  r.array(4).integer(0).integer(5460);
  r.array(3).bulk("127.0.0.1").integer(7000).bulk("a");
  r.array(4).bulk("127.0.0.1").integer(7003).bulk("d").array(0);
  r.array(3).integer(5461).integer(10922).array(3).bulk("127.0.0.1").integer(7001).bulk("b");
  r.array(3).integer(10923).integer(16383).array(2).bulk("127.0.0.1").integer(7000);
  const SlotMap map = parse_cluster_slots(r.reply().get());
  ASSERT_EQ(map.shards().size(), 2u);  // 7000's two ranges are one shard
  EXPECT_EQ(map.slots_served(), kClusterSlots);
  EXPECT_EQ(map.shard_of(16000), 0u);
  EXPECT_EQ(map.shard_of(6000), 1u);
  ASSERT_EQ(map.shards()[0].replicas.size(), 1u);
  EXPECT_EQ(map.shards()[0].replicas[0].port, 7003);
}

TEST(ClusterTopology, PartialMapsLeaveSlotsUnserved) {
  Resp r;
  r.array(1).shard({100, 199}, {node("a", 7000, "master")});
  const SlotMap map = parse_cluster_shards(r.reply().get());
  EXPECT_EQ(map.slots_served(), 100u);
  EXPECT_FALSE(map.shard_of(99).has_value());
  EXPECT_FALSE(SlotMap().shard_of(0).has_value());
}

// Each malformed reply throws, naming what was wrong.
TEST(ClusterTopology, RejectsMalformedReplies) {
  const auto rejects = [](const Resp& r, bool shards, const std::string& needle) {
    try {
      shards ? parse_cluster_shards(r.reply().get()) : parse_cluster_slots(r.reply().get());
      ADD_FAILURE() << "accepted a reply that should fail with: " << needle;
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  rejects(Resp().raw("+OK\r\n"), true, "not an array");
  rejects(Resp().array(1).shard({0, 16384}, {node("a", 7000, "master")}), true, "outside 0..16383");
  rejects(Resp().array(1).shard({10, 5}, {node("a", 7000, "master")}), true, "ends before");
  rejects(Resp().array(1).shard({0, 5, 9}, {node("a", 7000, "master")}), true, "odd number");
  rejects(Resp().array(1).shard({0, 5}, {node("a", 70000, "master")}), true, "outside 1..65535");
  rejects(Resp().array(1).shard({0, 5, 3, 9}, {node("a", 7000, "master")}), true, "claimed twice");
  rejects(Resp().array(1).shard({0, 5}, {node("a", 7000, "boss")}), true, "role");
  rejects(Resp().array(1).shard({0, 5}, {node("a", 7000, "replica")}), true, "no primary");
  rejects(Resp()
              .array(2)
              .shard({0, 10}, {node("a", 7000, "master")})
              .shard({10, 20}, {node("b", 7001, "master")}),
          true, "claimed twice");
  Resp bad_slots;
  bad_slots.array(1).array(2).integer(0).integer(5);
  rejects(bad_slots, false, "without a primary");
  Resp bad_port;
  bad_port.array(1).array(3).integer(0).integer(5).array(2).bulk("h").bulk("port");
  rejects(bad_port, false, "not a number");
}

// The constructor checks what it is given, whoever built it.
TEST(ClusterTopology, SlotMapRefusesBadRanges) {
  ClusterShard shard;
  shard.primary = {"a", "127.0.0.1", 7000, true, true};
  shard.slots = {{16000, 16384}};
  EXPECT_THROW(SlotMap({shard}), std::runtime_error);
  shard.slots = {{9, 3}};
  EXPECT_THROW(SlotMap({shard}), std::runtime_error);
  // The same full range over and over: refused at the second, not walked a million times.
  shard.slots.assign(1000000, SlotRange{0, kClusterSlots - 1});
  EXPECT_THROW(SlotMap({shard}), std::runtime_error);
  shard.slots = {{0, kClusterSlots - 1}};
  EXPECT_EQ(SlotMap({shard}).slots_served(), kClusterSlots);
}

// cluster-preferred-endpoint-type hostname without a hostname sends "?", unknown-endpoint a
// nil host: the metadata's ip, else empty (the node asked); shards still apart by node id.
TEST(ClusterTopology, ClusterSlotsWithUnknownEndpoints) {
  Resp r;
  r.array(3);
  r.array(3).integer(0).integer(5460);
  r.array(4).bulk("?").integer(6379).bulk("a").array(2).bulk("ip").bulk("127.0.0.1");
  r.array(3).integer(5461).integer(10922);
  r.array(4).bulk("?").integer(6379).bulk("b").array(2).bulk("ip").bulk("127.0.0.2");
  r.array(3).integer(10923).integer(16383);
  r.array(4).raw("$-1\r\n").integer(6379).bulk("c").array(0);
  const SlotMap map = parse_cluster_slots(r.reply().get());
  ASSERT_EQ(map.shards().size(), 3u);
  EXPECT_EQ(map.shards()[0].primary.host, "127.0.0.1");
  EXPECT_EQ(map.shards()[1].primary.host, "127.0.0.2");
  EXPECT_EQ(map.shards()[2].primary.host, "");
  EXPECT_EQ(map.shard_of(12000), 2u);
}

TEST(ClusterTopology, ParsesRedirects) {
  const auto moved = parse_redirect("MOVED 3999 127.0.0.1:6381");
  ASSERT_TRUE(moved.has_value());
  EXPECT_EQ(moved->kind, Redirect::Kind::kMoved);
  EXPECT_EQ(moved->slot, 3999);
  EXPECT_EQ(moved->host, "127.0.0.1");
  EXPECT_EQ(moved->port, 6381);
  const auto ask = parse_redirect("ASK 0 ::1:7000");
  ASSERT_TRUE(ask.has_value());
  EXPECT_EQ(ask->kind, Redirect::Kind::kAsk);
  EXPECT_EQ(ask->host, "::1");
  const auto unknown_host = parse_redirect("MOVED 12 :7001");
  ASSERT_TRUE(unknown_host.has_value());
  EXPECT_EQ(unknown_host->host, "");
  EXPECT_EQ(parse_redirect("MOVED 12 ?:7001")->host, "");
  for (const char* bad :
       {"ERR wrong", "MOVED", "MOVED 16384 h:1", "MOVED x h:1", "MOVED 1 h", "MOVED 1 h:0",
        "MOVED 1 h:65536", "MOVED 1 h:7x", "CROSSSLOT Keys", "MOVED 1  h:1"})
    EXPECT_FALSE(parse_redirect(bad).has_value()) << bad;
}

// ---- shard routing ---------------------------------------------------------------------

SlotMap three_shards() {
  auto primary = [](int port) {
    ClusterNode n;
    n.host = "10.0.0.1";
    n.port = port;
    n.primary = true;
    return n;
  };
  std::vector<ClusterShard> shards(4);
  ClusterNode up = primary(7003), down = primary(7004);
  up.primary = down.primary = false;
  up.online = false;  // "loading": linked, acknowledging
  down.online = false;
  down.failed = true;
  shards[0] = {{{0, 5460}}, primary(7000), {up, down}};
  shards[1] = {{{5461, 10922}}, primary(7001), {}};
  shards[2] = {{}, primary(7009), {}};  // a primary left with no slot
  shards[3] = {{{10923, 16383}}, primary(7002), {}};
  return SlotMap(std::move(shards));
}

TEST(ShardRouting, OneServerIsOneShardForEverything) {
  RedisEndpoint server;
  server.port = 6380;
  const ShardRouting r = single_server_routing(server, "hb");
  EXPECT_FALSE(r.cluster);
  ASSERT_EQ(r.shards(), 1u);
  EXPECT_EQ(r.shard_of("anything"), 0u);
  EXPECT_EQ(r.heartbeat_publish(), "PUBLISH");
  EXPECT_EQ(r.heartbeat_shard("hb"), 0u);
  EXPECT_EQ(r.heartbeat_shard("other"), 1u);
}

TEST(ShardRouting, ClusterRoutesBySlotWithAHeartbeatChannelInEachShard) {
  RedisEndpoint credentials;
  credentials.user = "u";
  credentials.password = "p";
  credentials.db = 3;
  const ShardRouting r = cluster_routing(three_shards(), credentials, "pre:__shmbus:hb:1");
  EXPECT_TRUE(r.cluster);
  ASSERT_EQ(r.shards(), 3u) << "the primary with no slot gets no shard";
  EXPECT_EQ(r.endpoints[0].port, 7000);
  EXPECT_EQ(r.endpoints[1].port, 7001);
  EXPECT_EQ(r.endpoints[2].port, 7002);
  for (const auto& e : r.endpoints) {
    EXPECT_EQ(e.user, "u");
    EXPECT_EQ(e.password, "p");
    EXPECT_EQ(e.db, 0) << "a cluster has database 0 only";
  }
  // Replicas not failed: durable writes to shard 0 wait for one (exporter.cpp).
  EXPECT_EQ(r.replicas, (std::vector<uint32_t>{1, 0, 0}));
  EXPECT_EQ(r.heartbeat_publish(), "SPUBLISH");
  EXPECT_EQ(r.heartbeat_subscribe(), "SSUBSCRIBE");
  for (size_t i = 0; i < 3; ++i) {
    const std::string& hb = r.heartbeat_channels[i];
    EXPECT_TRUE(hb.starts_with("pre:__shmbus:hb:1:{")) << hb;
    EXPECT_EQ(r.shard_of(hb), i) << hb;
    EXPECT_EQ(r.heartbeat_shard(hb), i);
  }
  // Names route by their slot (and hash tag).
  EXPECT_EQ(r.shard_of("{user1000}.a"), r.shard_of("user1000"));
  EXPECT_EQ(r.shard_of_slot_number(0), 0u);
  EXPECT_EQ(r.shard_of_slot_number(5461), 1u);
  EXPECT_EQ(r.shard_of_slot_number(16383), 2u);
  EXPECT_EQ(r.shard_of("foo"), 2u);  // slot 12182, as CLUSTER KEYSLOT foo says
}

TEST(ShardRouting, ClusterRefusesUnservedSlotsAndABracedHeartbeat) {
  auto error_of = [](const SlotMap& map, const std::string& base) {
    try {
      cluster_routing(map, RedisEndpoint{}, base);
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  ClusterNode a;
  a.host = "h";
  a.port = 7000;
  a.primary = true;
  EXPECT_NE(error_of(SlotMap({{{{0, 100}}, a, {}}}), "hb").find("serves 101 of its 16384 slots"),
            std::string::npos);
  EXPECT_NE(error_of(three_shards(), "h{b").find("holds a '{'"), std::string::npos);
}

}  // namespace
}  // namespace shmbus::bridge
