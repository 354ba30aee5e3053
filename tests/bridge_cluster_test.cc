// shmbus-bridge on a Redis Cluster (issue 17): in-process hosts (a daemon and its bridge
// each) relay through a real 3-primary cluster the test starts (tests/redis_cluster.hpp),
// with the bridges given the nodes as seeds ([redis] nodes). Exact channels travel by
// SPUBLISH / SSUBSCRIBE to the shard of their slot, glob and raw rules by classic pub/sub;
// the faults of a cluster (a slot moved, a manual failover, a primary killed) happen during
// a steady stream, and every message is received once or counted lost.
// Skips loudly when redis-server or redis-cli is missing (CI installs both).
#include <gtest/gtest.h>
#include <hiredis/hiredis.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "bridge_support.hpp"
#include "cluster_discovery.hpp"
#include "key_slot.hpp"
#include "redis_cluster.hpp"

namespace shmbus::bridge {
namespace {

using test::RedisCluster;

#define REQUIRE_CLUSTER(cluster)                                         \
  if (!(cluster).missing().empty()) GTEST_SKIP() << (cluster).missing(); \
  ASSERT_TRUE((cluster).ok()) << (cluster).error()

// A bridge of `host_id` whose seeds are every node of `cluster`.
BridgeConfig cluster_config(RedisCluster& cluster, uint16_t host_id) {
  BridgeConfig c = fast_config(0, host_id);
  // Faults here are found by the connections (EOF, MOVED, sunsubscribe), not by silence:
  // a timeout that a loaded machine (a sanitizer build) cannot trip by mistake.
  c.heartbeat_timeout = 3000ms;
  for (size_t i = 0; i < cluster.size(); ++i)
    c.redis_nodes.push_back({"127.0.0.1", cluster.node(i).port()});
  c.sharded = true;
  return c;
}

// Exact-channel envelope rules for `channels` (sharded), then globs (classic): chat:* in
// envelope mode, plain:* in raw mode.
void add_rules(BridgeConfig& c, const std::vector<std::string>& channels) {
  for (const auto& ch : channels) {
    c.exports.push_back({ch, Mode::kEnvelope, false, 0});
    c.imports.push_back({ch, Mode::kEnvelope, false, 0});
  }
  for (auto [glob, mode] : {std::pair{"chat:*", Mode::kEnvelope}, {"plain:*", Mode::kRaw}}) {
    c.exports.push_back({glob, mode, false, 0});
    c.imports.push_back({glob, mode, false, 0});
  }
}

// The primary serving `name`'s slot now, as an index into the cluster's nodes.
size_t owner_of(RedisCluster& cluster, const std::string& name) {
  std::vector<RedisEndpoint> seeds;
  for (size_t i = 0; i < cluster.size(); ++i)
    if (cluster.node(i).ok()) {
      RedisEndpoint seed;
      seed.host = "127.0.0.1";
      seed.port = cluster.node(i).port();
      seeds.push_back(seed);
    }
  const SlotMap map = discover_cluster(seeds).map;
  const int port = map.shards()[*map.shard_of(key_slot(name))].primary.port;
  for (size_t i = 0; i < cluster.size(); ++i)
    if (cluster.node(i).ok() && cluster.node(i).port() == port) return i;
  return cluster.size();
}

// A replica of node `primary`, by its ROLE (its primary's port), or cluster.size().
size_t replica_of(RedisCluster& cluster, size_t primary) {
  for (size_t i = 0; i < cluster.size(); ++i) {
    if (i == primary || !cluster.node(i).ok()) continue;
    redisReply* role = cluster.node(i).command("ROLE");
    const bool follows = role && role->type == REDIS_REPLY_ARRAY && role->elements >= 3 &&
                         std::string(role->element[0]->str) == "slave" &&
                         role->element[2]->integer == cluster.node(primary).port();
    if (role) freeReplyObject(role);
    if (follows) return i;
  }
  return cluster.size();
}

// Subscribers across the cluster's nodes of a sharded channel (PUBSUB SHARDNUMSUB).
long long shard_subscribers(RedisCluster& cluster, const std::string& channel) {
  long long total = 0;
  for (size_t i = 0; i < cluster.size(); ++i) {
    if (!cluster.node(i).ok()) continue;
    redisReply* r = cluster.node(i).command("PUBSUB SHARDNUMSUB %s", channel.c_str());
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2) total += r->element[1]->integer;
    if (r) freeReplyObject(r);
  }
  return total;
}

TEST(BridgeCluster, ThreeBusesExactGlobAndRawChannelsOnceOnEachOtherBusNeverBack) {
  RedisCluster cluster(3, 1);
  REQUIRE_CLUSTER(cluster);
  std::vector<std::string> rooms;
  for (int i = 0; i < 12; ++i) rooms.push_back("room:" + std::to_string(i));
  std::vector<std::unique_ptr<Host>> hosts;
  std::vector<Subscription> subs;
  for (uint16_t id = 1; id <= 3; ++id) {
    BridgeConfig c = cluster_config(cluster, id);
    add_rules(c, rooms);
    hosts.push_back(std::make_unique<Host>(std::move(c)));
    subs.push_back(Subscription::open(hosts.back()->daemon.options()));
    // Host 1 wants the rooms by pattern, host 2 by name, host 3 only the first half.
    if (id == 1)
      subs.back().psubscribe({"room:*"});
    else
      subs.back().subscribe(id == 2 ? rooms
                                    : std::vector<std::string>(rooms.begin(), rooms.begin() + 6));
    subs.back().psubscribe({"chat:*", "plain:*"});
  }
  // Per host: its rooms by SSUBSCRIBE, chat:* and plain:* by PSUBSCRIBE, and a heartbeat
  // channel on each of the 3 shards.
  for (size_t h = 0; h < 3; ++h)
    ASSERT_TRUE(wait_until([&] {
      return hosts[h]->bridge->counters().redis_subscriptions == (h == 2 ? 6u : 12u) + 2 + 3;
    })) << "host "
        << h + 1 << ": " << hosts[h]->bridge->counters_json();

  // Interest: a host with no local subscriber for a channel holds no SSUBSCRIBE for it.
  EXPECT_EQ(shard_subscribers(cluster, "room:0"), 3);
  EXPECT_EQ(shard_subscribers(cluster, "room:11"), 2);
  // The rooms are spread over every primary, each subscribed on its owner.
  std::set<size_t> owners;
  for (const auto& room : rooms) owners.insert(owner_of(cluster, room));
  EXPECT_EQ(owners.size(), 3u);

  constexpr int kPerChannel = 20;
  std::vector<Bus> buses;
  for (auto& h : hosts) buses.push_back(Bus::connect(h->daemon.options()));
  std::vector<std::string> all = rooms;
  all.push_back("chat:lobby");
  all.push_back("plain:feed");
  for (int n = 0; n < kPerChannel; ++n)
    for (size_t h = 0; h < 3; ++h)
      for (const auto& ch : all)
        buses[h].channel(ch).publish("h" + std::to_string(h + 1) + ":" + std::to_string(n));

  for (size_t h = 0; h < 3; ++h) {
    const std::string own = "h" + std::to_string(h + 1) + ":";
    // Per channel, what came from the other hosts (through Redis) and what came from here
    // (the local bus delivers a host's own publishes to its subscribers directly).
    std::map<std::string, std::multiset<std::string>> imported, local;
    for (const auto& m : drain(subs[h], 1500ms)) {
      (m.origin == 0 ? local : imported)[m.channel].insert(m.payload);
      if (m.origin == 0) continue;
      EXPECT_FALSE(m.payload.starts_with(own))
          << "host " << h + 1 << " got its own message back on " << m.channel;
      if (m.origin != kUnknownOrigin) {  // envelope: the sender's id
        EXPECT_EQ("h" + std::to_string(m.origin) + ":", m.payload.substr(0, 3))
            << "origin " << m.origin << " on " << m.channel;
      }
    }
    for (const auto& ch : all) {
      const bool wanted = !(h == 2 && ch.starts_with("room:") && std::stoi(ch.substr(5)) >= 6);
      EXPECT_EQ(imported[ch].size(), wanted ? 2u * kPerChannel : 0u)
          << "host " << h + 1 << " " << ch;
      EXPECT_EQ(local[ch].size(), wanted ? size_t{kPerChannel} : 0u)
          << "host " << h + 1 << " " << ch;
      for (const auto& p : imported[ch])
        EXPECT_EQ(imported[ch].count(p), 1u) << "duplicate " << p << " on " << ch;
    }
  }
  for (auto& h : hosts) {
    const auto c = h->bridge->counters();
    EXPECT_EQ(c.dropped_total(), 0u) << h->bridge->counters_json();
    EXPECT_EQ(c.lost_in_transit, 0u);
    EXPECT_EQ(c.reconnects, 0u);
  }
}

TEST(BridgeCluster, DurableExportsLandOnTheirStreamsOwner) {
  RedisCluster cluster(3, 0);
  REQUIRE_CLUSTER(cluster);
  BridgeConfig c = cluster_config(cluster, 1);
  c.exports.push_back({"log:*", Mode::kEnvelope, true, 1000});
  Host host(std::move(c));
  ASSERT_TRUE(host.connected());
  auto bus = Bus::connect(host.daemon.options());
  std::vector<std::string> keys;
  for (int i = 0; i < 9; ++i) keys.push_back("log:" + std::to_string(i));
  for (int n = 0; n < 10; ++n)
    for (const auto& k : keys) bus.channel(k).publish(std::to_string(n));
  ASSERT_TRUE(wait_until([&] { return host.bridge->counters().exported == 90; }))
      << host.bridge->counters_json();
  std::set<size_t> owners;
  for (const auto& k : keys) {
    const size_t owner = owner_of(cluster, k);
    owners.insert(owner);
    redisReply* r = cluster.node(owner).command("XLEN %s", k.c_str());
    ASSERT_TRUE(r != nullptr && r->type == REDIS_REPLY_INTEGER) << k;
    EXPECT_EQ(r->integer, 10) << k;
    freeReplyObject(r);
  }
  EXPECT_EQ(owners.size(), 3u);
  EXPECT_EQ(host.bridge->counters().dropped_total(), 0u);
}

// Durable rules: audit:* through streams.
void add_durable_rules(BridgeConfig& c, const TempDir& dir) {
  c.exports.push_back({"audit:*", Mode::kEnvelope, true, 100000});
  c.imports.push_back({"audit:*", Mode::kEnvelope, true, 100000});
  c.state_file = (dir.path / ("state-" + std::to_string(c.host_id))).string();
}

// A replica that stops answering (SIGSTOP: as in a long resync) must not stall its shard:
// the first WAIT that times out suspends the waiting, logged once, and the link stays up;
// every durable message still lands.
TEST(BridgeCluster, AReplicaThatStopsAnsweringSuspendsTheWaitNotTheLink) {
  RedisCluster cluster(3, 1);
  REQUIRE_CLUSTER(cluster);
  TempDir dir("shmbus-bridge-wait");
  CapturedLog log;
  BridgeConfig c = cluster_config(cluster, 1);
  add_rules(c, {"room:{w}"});
  add_durable_rules(c, dir);
  Host host(std::move(c), log.logger);
  ASSERT_TRUE(host.connected());
  const size_t owner = owner_of(cluster, "audit:{w}");
  const size_t replica = replica_of(cluster, owner);
  ASSERT_LT(replica, cluster.size());
  cluster.node(replica).pause();
  auto bus = Bus::connect(host.daemon.options());
  auto audit = bus.channel("audit:{w}");
  auto room = bus.channel("room:{w}");
  constexpr int kMessages = 300;
  for (int i = 0; i < kMessages; ++i) {  // 3 s: several WAIT timeouts' worth
    audit.publish(std::to_string(i));
    room.publish(std::to_string(i));
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(wait_until([&] { return host.bridge->counters().exported == 2 * kMessages; }))
      << host.bridge->counters_json();
  cluster.node(replica).resume();
  redisReply* length = cluster.node(owner).command("XLEN audit:{w}");
  ASSERT_TRUE(length && length->type == REDIS_REPLY_INTEGER);
  EXPECT_EQ(length->integer, kMessages);
  freeReplyObject(length);
  const auto counts = host.bridge->counters();
  EXPECT_EQ(counts.reconnects, 0u) << "the link flapped behind blocked WAITs";
  EXPECT_EQ(counts.heartbeat_timeouts, 0u);
  EXPECT_EQ(counts.dropped_total(), 0u);
  EXPECT_EQ(log.count("not known to be replicated"), 1u) << "logged once per suspension";
}

// One fault of a cluster, during a steady stream from host A to host B on `channel`.
enum class Fault { kSlotMoved, kManualFailover, kPrimaryKilled };

void stream_through_fault(Fault fault) {
  RedisCluster cluster(3, 1);
  REQUIRE_CLUSTER(cluster);
  TempDir dir("shmbus-bridge-cluster");
  // The pub/sub channel and the durable stream live in the same slot (their hash tag), so
  // the fault hits both.
  const std::string channel = "room:{s}", durable_channel = "audit:{s}";
  BridgeConfig ca = cluster_config(cluster, 1), cb = cluster_config(cluster, 2);
  add_rules(ca, {channel});
  add_rules(cb, {channel});
  add_durable_rules(ca, dir);
  add_durable_rules(cb, dir);
  Host a(std::move(ca)), b(std::move(cb));
  // The durable import waits for its subscriber instead of lapping it when the backlog of
  // an outage arrives at once (a lossy ring would lose from it, as anywhere on the bus).
  auto b_bus = Bus::connect(b.daemon.options());
  ChannelOptions waits;
  waits.back_pressure = true;
  waits.ring_bytes = 1 << 20;
  auto durable_ring = b_bus.channel(durable_channel, waits);
  Collector collector(b.daemon.options(), channel);
  Collector durable_collector(b.daemon.options(), durable_channel);
  ASSERT_TRUE(wait_until([&] { return shard_subscribers(cluster, channel) == 1; }));
  ASSERT_TRUE(wait_until([&] { return b.bridge->counters().streams_read == 1; }))
      << b.bridge->counters_json();
  SteadyPublisher publisher(a.daemon.options(), channel, 2000);
  SteadyPublisher durable_publisher(a.daemon.options(), durable_channel, 500);
  ASSERT_TRUE(wait_until([&] { return collector.count() > 500; }));
  ASSERT_TRUE(wait_until([&] { return durable_collector.count() > 100; }));

  const size_t owner = owner_of(cluster, channel);
  ASSERT_LT(owner, cluster.size());
  switch (fault) {
    case Fault::kSlotMoved: {
      // Another primary: the owner of some name outside the channel's shard.
      size_t to = owner;
      for (int i = 0; to == owner; ++i) to = owner_of(cluster, "other:" + std::to_string(i));
      ASSERT_TRUE(cluster.move_slot(key_slot(channel), owner, to));
      break;
    }
    case Fault::kManualFailover: {
      const size_t replica = replica_of(cluster, owner);
      ASSERT_LT(replica, cluster.size());
      redisReply* r = cluster.node(replica).command("CLUSTER FAILOVER");
      ASSERT_TRUE(r && r->type == REDIS_REPLY_STATUS) << (r && r->str ? r->str : "no reply");
      freeReplyObject(r);
      ASSERT_TRUE(wait_until([&] { return owner_of(cluster, channel) == replica; }));
      break;
    }
    case Fault::kPrimaryKilled:
      cluster.node(owner).kill_hard();
      ASSERT_TRUE(cluster.wait_healthy(std::chrono::seconds(30))) << "the replica was not promoted";
      break;
  }
  // The stream goes on through the new owner, with both bridges rebuilt on the new topology.
  ASSERT_TRUE(wait_until([&] { return b.bridge->counters().reconnects >= 1; }, 20s))
      << b.bridge->counters_json();
  const size_t after = collector.count();
  ASSERT_TRUE(wait_until([&] { return collector.count() > after + 1000; }, 20s))
      << "the stream did not resume: " << b.bridge->counters_json();
  publisher.finish();
  durable_publisher.finish();
  const uint64_t sent = publisher.sent, durable_sent = durable_publisher.sent;
  ASSERT_TRUE(wait_until([&] { return a.bridge->counters().queue_depth == 0; }));
  ASSERT_TRUE(wait_until([&] {
    std::lock_guard<std::mutex> lock(collector.mutex);
    return std::find(collector.numbers.begin(), collector.numbers.end(), sent - 1) !=
           collector.numbers.end();
  })) << "the stream resumed to its last message";
  collector.finish();
  // None twice. Not always in order: in a failover, what the old primary held can arrive
  // after what the new one took since (found again, not lost: origin_sequences.hpp).
  std::vector<uint64_t> sorted = collector.numbers;
  std::sort(sorted.begin(), sorted.end());
  expect_no_duplicates_in_order(sorted);
  size_t late = 0;
  for (size_t i = 1; i < collector.numbers.size(); ++i)
    late += collector.numbers[i] < collector.numbers[i - 1] ? 1 : 0;
  const auto counts_a = a.bridge->counters();
  const auto counts_b = b.bridge->counters();
  EXPECT_EQ(sorted.front(), 0u);
  // Every message is received or counted lost: in transit as B saw it (sequence gaps), or
  // lapped on B's ring when a queued burst arrived.
  EXPECT_EQ(collector.numbers.size() + counts_b.lost_in_transit + collector.lapped, sent)
      << "missing: " << missing_runs(collector, sent);
  EXPECT_LE(counts_a.dropped_by(Drop::kQueueFull), counts_b.lost_in_transit);
  std::cout << "sent " << sent << ", received " << collector.numbers.size() << ", lost "
            << counts_b.lost_in_transit << ", lapped locally " << collector.lapped
            << " (exporter: in flight " << counts_a.dropped_by(Drop::kInFlight) << ", refused "
            << counts_a.dropped_by(Drop::kRedisError) << "; reconnects A " << counts_a.reconnects
            << ", B " << counts_b.reconnects << "; arrived late after " << late
            << " reordering(s))\n";

  // Durable: nothing lost, nothing twice, in order, through every fault: an XADD counts as
  // written once a replica has it too (WAIT), so a killed primary loses none.
  EXPECT_TRUE(wait_until([&] { return durable_collector.count() >= durable_sent; }))
      << "durable: " << missing_runs(durable_collector, durable_sent);
  durable_collector.finish();
  expect_no_duplicates_in_order(durable_collector.numbers);
  EXPECT_EQ(durable_collector.numbers.size(), durable_sent)
      << "durable: " << missing_runs(durable_collector, durable_sent)
      << "\nA: " << a.bridge->counters_json() << "\nB: " << b.bridge->counters_json();
  std::cout << "durable: sent " << durable_sent << ", received " << durable_collector.numbers.size()
            << " (repeats dropped by B: " << counts_b.duplicates_dropped << ")\n";
}

TEST(BridgeCluster, SlotMovedMidStreamLosesOnlyWhatItReports) {
  stream_through_fault(Fault::kSlotMoved);
}

TEST(BridgeCluster, ManualFailoverMidStreamLosesOnlyWhatItReports) {
  stream_through_fault(Fault::kManualFailover);
}

TEST(BridgeCluster, PrimaryKilledMidStreamLosesOnlyWhatItReports) {
  stream_through_fault(Fault::kPrimaryKilled);
}

}  // namespace
}  // namespace shmbus::bridge
