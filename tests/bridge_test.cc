// shmbus-bridge end to end: in-process daemons stand in for hosts, in-process bridges
// relay them through a real redis-server the test starts on a free loopback port. Skips
// loudly when redis-server is not installed (CI installs it).
#include "bridge.hpp"

#include <gtest/gtest.h>
#include <poll.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "bridge_support.hpp"
#include "daemon_support.hpp"
#include "envelope.hpp"
#include "key_slot.hpp"
#include "redis_connection.hpp"
#include "redis_server.hpp"
#include "shmbus/shmbus.hpp"

namespace shmbus::bridge {
namespace {

using namespace std::chrono_literals;
using test::RedisServer;
using test::TestDaemon;

#define REQUIRE_REDIS(server) \
  if (!(server).ok()) GTEST_SKIP() << "SKIPPED: " << (server).error()

BridgeConfig chat_config(int port, uint16_t host_id, Mode mode) {
  BridgeConfig c = fast_config(port, host_id);
  c.exports.push_back({"chat:*", mode, false, 0});
  c.imports.push_back({"chat:*", mode, false, 0});
  return c;
}

// For tests that stop Redis on purpose (SIGSTOP): raw mode, and a heartbeat timeout the
// link outlives the stall with (the stall is ours, not a dead Redis).
BridgeConfig stall_config(int port) {
  BridgeConfig c = chat_config(port, 1, Mode::kRaw);
  c.heartbeat_timeout = 10s;
  return c;
}

// A back-pressure channel: the exporter reads everything, nothing is lapped before it.
ChannelOptions lossless_channel(uint64_t ring_bytes, uint32_t max_message_bytes = 0) {
  ChannelOptions o;
  o.back_pressure = true;
  o.ring_bytes = ring_bytes;
  o.max_message_bytes = max_message_bytes;
  return o;
}

std::span<const std::byte> bytes_of(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// Waits until the bridge holds `n` Redis subscriptions (its heartbeat channel is one).
bool subscribed(const Bridge& b, uint64_t n) {
  return wait_until([&] { return b.counters().redis_subscriptions == n; });
}

// Waits until the bridge reads `n` streams (durable rules), each from a known position.
bool reading_streams(const Bridge& b, uint64_t n) {
  return wait_until([&] { return b.counters().streams_read == n; });
}

// ---- three hosts -------------------------------------------------------------------------

void three_hosts_exactly_once(Mode mode) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  std::vector<std::unique_ptr<Host>> hosts;
  std::vector<Subscription> subs;
  for (uint16_t id = 1; id <= 3; ++id) {
    hosts.push_back(std::make_unique<Host>(chat_config(redis.port(), id, mode)));
    subs.push_back(Subscription::open(hosts.back()->daemon.options()));
    // Host 1 listens by pattern, host 2 by channel, host 3 both ways (two deliveries).
    if (id != 2) subs.back().psubscribe({"chat:*"});
    if (id != 1) subs.back().subscribe({"chat:room"});
  }
  for (auto& h : hosts) ASSERT_TRUE(subscribed(*h->bridge, 2));

  constexpr int kPerHost = 100;
  std::vector<Bus> buses;
  for (auto& h : hosts) buses.push_back(Bus::connect(h->daemon.options()));
  for (int k = 0; k < kPerHost; ++k)
    for (int h = 0; h < 3; ++h)
      buses[h].publish("chat:room", "from " + std::to_string(h + 1) + " #" + std::to_string(k));

  for (int h = 0; h < 3; ++h) {
    const auto got = drain(subs[h]);
    const size_t deliveries_per_message = h == 2 ? 2 : 1;
    EXPECT_EQ(got.size(), 3 * kPerHost * deliveries_per_message) << "host " << h + 1;
    std::map<std::string, int> seen;
    for (const auto& r : got) {
      ++seen[r.payload];
      const int sender = r.payload[5] - '0';
      if (sender == h + 1) {
        EXPECT_EQ(r.origin, 0) << "our own message came back through Redis: " << r.payload;
      } else {
        EXPECT_EQ(r.origin, mode == Mode::kEnvelope ? sender : kUnknownOrigin) << r.payload;
      }
    }
    EXPECT_EQ(seen.size(), size_t{3 * kPerHost}) << "host " << h + 1;
    for (const auto& [payload, n] : seen)
      EXPECT_EQ(static_cast<size_t>(n), deliveries_per_message) << payload << " on host " << h + 1;
    const auto c = hosts[h]->bridge->counters();
    EXPECT_EQ(c.exported, kPerHost) << "host " << h + 1;
    EXPECT_EQ(c.imported, 2 * kPerHost) << "host " << h + 1;
    EXPECT_EQ(c.echoes_suppressed, kPerHost) << "each export came back once and was dropped";
    EXPECT_EQ(c.dropped_total(), 0u);
    // Every host publishes on the channel it imports into: the imports share the ring's
    // numbering with its own messages, and must not look like gaps to the others.
    if (mode == Mode::kEnvelope) {
      EXPECT_EQ(c.lost_in_transit, 0u) << "host " << h + 1;
    }
  }
}

TEST(Bridge, ThreeHostsEnvelopeExactlyOnceNoEcho) {
  three_hosts_exactly_once(Mode::kEnvelope);
}
TEST(Bridge, ThreeHostsRawExactlyOnceNoEcho) {
  three_hosts_exactly_once(Mode::kRaw);
}

TEST(Bridge, OverlappingRedisSubscriptionsImportOnce) {
  // Host 2 first follows chat:room by name; then a pattern subscriber arrives and the
  // bridge holds SUBSCRIBE chat:room and PSUBSCRIBE chat:* together until the channel's
  // linger ends: Redis sends two copies of each message meanwhile, one must be imported.
  RedisServer redis;
  REQUIRE_REDIS(redis);
  Host a(chat_config(redis.port(), 1, Mode::kEnvelope));
  BridgeConfig slow_linger = chat_config(redis.port(), 2, Mode::kEnvelope);
  slow_linger.unsubscribe_linger = 5000ms;
  Host b(slow_linger);
  auto by_name = Subscription::open(b.daemon.options());
  by_name.subscribe({"chat:room"});
  ASSERT_TRUE(subscribed(*b.bridge, 2));
  auto by_pattern = Subscription::open(b.daemon.options());
  by_pattern.psubscribe({"chat:*"});
  ASSERT_TRUE(subscribed(*b.bridge, 3));  // heartbeat, chat:room (lingering), chat:*
  auto bus = Bus::connect(a.daemon.options());
  for (int k = 0; k < 50; ++k) bus.publish("chat:room", "m" + std::to_string(k));
  EXPECT_EQ(drain(by_name).size(), 50u);
  EXPECT_EQ(drain(by_pattern).size(), 50u);
  EXPECT_EQ(b.bridge->counters().imported, 50u);
}

// ---- interop with plain Redis clients ----------------------------------------------------

TEST(Bridge, RawModeInteroperatesWithPlainRedisClients) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  Host host(chat_config(redis.port(), 1, Mode::kRaw));
  auto local = Subscription::open(host.daemon.options());
  local.psubscribe({"chat:*"});
  ASSERT_TRUE(subscribed(*host.bridge, 2));

  redisContext* listener = redis.connect();
  ASSERT_TRUE(listener && !listener->err);
  redisReply* r = static_cast<redisReply*>(redisCommand(listener, "SUBSCRIBE chat:node"));
  ASSERT_NE(r, nullptr);
  freeReplyObject(r);

  // Plain client -> local subscribers, bytes unchanged (binary included).
  const std::string from_node("{\"user\":1,\"text\":\"hi\"}\0\xff", 25);
  r = redis.command("PUBLISH chat:node %b", from_node.data(), from_node.size());
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->integer, 2) << "the plain listener and the bridge";
  freeReplyObject(r);
  auto m = local.next(5s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->channel, "chat:node");
  EXPECT_EQ(std::string(m->text()), from_node);
  EXPECT_EQ(m->origin, kUnknownOrigin);

  // The plain listener got it from Redis directly; drain that copy.
  ASSERT_EQ(redisGetReply(listener, reinterpret_cast<void**>(&r)), REDIS_OK);
  freeReplyObject(r);

  // Local publisher -> plain client, bytes unchanged; never echoed back locally.
  auto bus = Bus::connect(host.daemon.options());
  const std::string from_shm("from shared memory \x01\x02", 21);
  bus.publish("chat:node", bytes_of(from_shm));
  ASSERT_EQ(redisGetReply(listener, reinterpret_cast<void**>(&r)), REDIS_OK);
  ASSERT_EQ(r->type, REDIS_REPLY_ARRAY);
  EXPECT_EQ(std::string(r->element[1]->str, r->element[1]->len), "chat:node");
  EXPECT_EQ(std::string(r->element[2]->str, r->element[2]->len), from_shm);
  freeReplyObject(r);
  redisFree(listener);
  const auto got = drain(local);
  ASSERT_EQ(got.size(), 1u) << "only the local publish itself, no echo";
  EXPECT_EQ(got[0].origin, 0);
  EXPECT_EQ(host.bridge->counters().echoes_suppressed, 1u);
}

// ---- interest ----------------------------------------------------------------------------

// An integer reply (freed), or -1 if the reply is missing or not an integer.
long long redis_integer(redisReply* r) {
  const long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
  if (r) freeReplyObject(r);
  return v;
}

uint64_t redis_integer_at(redisReply* r, size_t index) {
  uint64_t v = 0;
  if (r && r->type == REDIS_REPLY_ARRAY && r->elements > index)
    v = static_cast<uint64_t>(r->element[index]->integer);
  if (r) freeReplyObject(r);
  return v;
}

TEST(Bridge, SubscribesOnRedisOnlyWhatLocalSubscribersWant) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  Host host(chat_config(redis.port(), 1, Mode::kEnvelope));
  auto sub = Subscription::open(host.daemon.options());
  sub.subscribe({"chat:1"});
  ASSERT_TRUE(subscribed(*host.bridge, 2));
  EXPECT_EQ(redis_integer_at(redis.command("PUBSUB NUMSUB chat:1 chat:7"), 1), 1u);
  EXPECT_EQ(redis_integer_at(redis.command("PUBSUB NUMSUB chat:1 chat:7"), 3), 0u);
  EXPECT_EQ(redis_integer(redis.command("PUBSUB NUMPAT")), 0)
      << "the bridge's export subscription is no local interest";
  // Something published on chat:7 reaches nobody through the bridge.
  auto* r = redis.command("PUBLISH chat:7 unwanted");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->integer, 0);
  freeReplyObject(r);
  // Outside the import rules, local interest does not count either.
  auto other = Subscription::open(host.daemon.options());
  other.subscribe({"news:1"});
  other.psubscribe({"user:*"});
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(host.bridge->counters().redis_subscriptions, 2u);
  // A local pattern inside the rules becomes a Redis pattern; leaving unsubscribes after
  // the linger.
  auto pattern = Subscription::open(host.daemon.options());
  pattern.psubscribe({"chat:room:*"});
  ASSERT_TRUE(subscribed(*host.bridge, 3));
  pattern.punsubscribe();
  sub.unsubscribe();
  ASSERT_TRUE(subscribed(*host.bridge, 1));
  EXPECT_EQ(redis_integer_at(redis.command("PUBSUB NUMSUB chat:1"), 1), 0u);
  EXPECT_EQ(host.bridge->counters().imported, 0u);
}

// pubsub = "sharded": an exact-channel envelope rule travels by SPUBLISH / SSUBSCRIBE, held
// only by hosts with local subscribers (a local pattern that matches the channel counts),
// each message once on each other host and never back; glob rules stay classic.
TEST(Bridge, ShardedExactChannelsTravelBySpublishToLocalInterestOnly) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  std::vector<std::unique_ptr<Host>> hosts;
  for (uint16_t id = 1; id <= 3; ++id) {
    BridgeConfig c = chat_config(redis.port(), id, Mode::kEnvelope);
    c.sharded = true;
    c.exports.push_back({"orders", Mode::kEnvelope, false, 0});
    c.imports.push_back({"orders", Mode::kEnvelope, false, 0});
    hosts.push_back(std::make_unique<Host>(c));
  }
  // Host 1 has no subscriber; host 2 one by name; host 3 one by name and one by a pattern
  // (two local deliveries, one Redis subscription).
  auto by_name_2 = Subscription::open(hosts[1]->daemon.options());
  by_name_2.subscribe({"orders"});
  auto by_name_3 = Subscription::open(hosts[2]->daemon.options());
  by_name_3.subscribe({"orders"});
  auto by_pattern_3 = Subscription::open(hosts[2]->daemon.options());
  by_pattern_3.psubscribe({"ord*"});
  ASSERT_TRUE(subscribed(*hosts[1]->bridge, 2));
  ASSERT_TRUE(subscribed(*hosts[2]->bridge, 2));
  EXPECT_EQ(hosts[0]->bridge->counters().redis_subscriptions, 1u);  // its heartbeat only
  EXPECT_EQ(redis_integer_at(redis.command("PUBSUB SHARDNUMSUB orders"), 1), 2u);
  EXPECT_EQ(redis_integer_at(redis.command("PUBSUB NUMSUB orders"), 1), 0u);
  EXPECT_EQ(redis_integer(redis.command("PUBSUB NUMPAT")), 0)
      << "a pattern over a sharded channel became a Redis pattern";

  constexpr int kPerHost = 50;
  std::vector<Bus> buses;
  for (auto& h : hosts) buses.push_back(Bus::connect(h->daemon.options()));
  for (int k = 0; k < kPerHost; ++k)
    for (int h = 0; h < 3; ++h)
      buses[h].publish("orders", "from " + std::to_string(h + 1) + " #" + std::to_string(k));

  const auto check = [&](Subscription& sub, int host, size_t copies) {
    const auto got = drain(sub);
    EXPECT_EQ(got.size(), 3u * kPerHost) << "host " << host;
    std::map<std::string, int> seen;
    for (const auto& r : got) {
      ++seen[r.payload];
      const int sender = r.payload[5] - '0';
      EXPECT_EQ(r.origin, sender == host ? 0 : sender) << r.payload << " on host " << host;
    }
    EXPECT_EQ(seen.size(), 3u * kPerHost) << "host " << host;
    for (const auto& [payload, n] : seen)
      EXPECT_EQ(static_cast<size_t>(n), copies) << payload << " on host " << host;
  };
  check(by_name_2, 2, 1);
  check(by_name_3, 3, 1);
  check(by_pattern_3, 3, 1);
  for (int h = 0; h < 3; ++h) {
    const auto c = hosts[h]->bridge->counters();
    EXPECT_EQ(c.exported, kPerHost) << "host " << h + 1;
    EXPECT_EQ(c.imported, h == 0 ? 0u : 2u * kPerHost) << "host " << h + 1;
    EXPECT_EQ(c.echoes_suppressed, h == 0 ? 0u : uint64_t{kPerHost}) << "host " << h + 1;
    EXPECT_EQ(c.dropped_total(), 0u) << "host " << h + 1;
  }
  // The last local subscriber leaves: the SSUBSCRIBE goes after the linger.
  by_name_2.unsubscribe();
  ASSERT_TRUE(subscribed(*hosts[1]->bridge, 1));
  EXPECT_EQ(redis_integer_at(redis.command("PUBSUB SHARDNUMSUB orders"), 1), 1u);
}

// Sharded subscriptions go one hash slot per command (a cluster refuses an SSUBSCRIBE
// across slots); names of one slot share their command.
TEST(Bridge, ShardedSubscriptionsGoOneSlotPerCommand) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  const std::vector<std::string> names = {"orders", "invoices", "{orders}refunds"};
  ASSERT_NE(key_slot(names[0]), key_slot(names[1]));
  ASSERT_EQ(key_slot(names[0]), key_slot(names[2]));
  Host host(sharded_importer(redis.port(), names));
  ASSERT_TRUE(subscribed(*host.bridge, 1));
  const auto before = host.bridge->counters();
  auto sub = Subscription::open(host.daemon.options());
  sub.subscribe({names[0], names[1], names[2]});
  ASSERT_TRUE(subscribed(*host.bridge, 4));
  EXPECT_EQ(host.bridge->counters().subscribe_commands - before.subscribe_commands, 2u);
  sub.unsubscribe();
  ASSERT_TRUE(subscribed(*host.bridge, 1));
  EXPECT_EQ(host.bridge->counters().unsubscribe_commands - before.unsubscribe_commands, 2u);
}

// A server without the sharded commands (Redis < 7.0; here SSUBSCRIBE renamed away): the
// link is refused at connect with the reason and the way out, retried with growing backoff
// (a handful of log lines, not one per backoff_initial), never half up.
TEST(Bridge, ShardedNeedsTheShardedCommandsAndSaysSo) {
  test::RedisServerOptions options;
  options.extra_args = {"--rename-command", "SSUBSCRIBE", ""};
  RedisServer redis(options);
  REQUIRE_REDIS(redis);
  CapturedLog log;
  Host host(sharded_importer(redis.port(), {"orders"}), log.logger);
  std::this_thread::sleep_for(1500ms);
  const auto counters = host.bridge->counters();
  EXPECT_FALSE(counters.connected);
  EXPECT_EQ(counters.reconnects, 0u);
  const size_t lines = log.count("lacks SPUBLISH / SSUBSCRIBE");
  EXPECT_GE(lines, 1u);
  EXPECT_LE(lines, 3u) << "one line per attempt: the backoff did not grow";
  EXPECT_EQ(log.count("pubsub = \"classic\""), lines) << "the way out";
  EXPECT_EQ(redis_integer_at(redis.command("PUBSUB SHARDNUMSUB orders"), 1), 0u);
}

// A SUNSUBSCRIBE answered after the channel was wanted again and SSUBSCRIBEd once more is
// the bridge's own, not Redis dropping the new one: one SSUBSCRIBE per comeback, and when
// the comeback leaves again before Redis answered, the subscription goes after the linger.
// CLIENT PAUSE holds Redis's answers meanwhile.
TEST(Bridge, ShardedUnsubscribeAnsweredLateIsNotTakenForRedisDroppingIt) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  BridgeConfig c = sharded_importer(redis.port(), {"orders"});
  c.heartbeat_timeout = 5s;  // outlives the pauses
  CapturedLog log;
  Host host(c, log.logger);
  ASSERT_TRUE(subscribed(*host.bridge, 1));
  auto first = Subscription::open(host.daemon.options());
  first.subscribe({"orders"});
  ASSERT_TRUE(subscribed(*host.bridge, 2));
  const auto before = host.bridge->counters().subscribe_commands;
  first.unsubscribe();
  std::this_thread::sleep_for(150ms);
  freeReplyObject(redis.command("CLIENT PAUSE 900 ALL"));
  std::this_thread::sleep_for(600ms);  // the SUNSUBSCRIBE (after the 300 ms linger) is held
  auto comeback = Subscription::open(host.daemon.options());
  comeback.subscribe({"orders"});
  std::this_thread::sleep_for(1500ms);
  ASSERT_TRUE(subscribed(*host.bridge, 2));
  EXPECT_EQ(host.bridge->counters().subscribe_commands - before, 1u);
  EXPECT_EQ(log.count("redis ended the sharded subscription"), 0u);
  EXPECT_EQ(redis_integer_at(redis.command("PUBSUB SHARDNUMSUB orders"), 1), 1u);

  // Again, leaving before Redis answers the comeback's SSUBSCRIBE.
  comeback.unsubscribe();
  ASSERT_TRUE(subscribed(*host.bridge, 1));
  std::this_thread::sleep_for(150ms);
  freeReplyObject(redis.command("CLIENT PAUSE 900 ALL"));
  std::this_thread::sleep_for(600ms);
  {
    auto brief = Subscription::open(host.daemon.options());
    brief.subscribe({"orders"});
    std::this_thread::sleep_for(100ms);  // its SSUBSCRIBE is sent and held
  }
  // Redis answers the held SSUBSCRIBE, then the linger ends and the bridge leaves.
  EXPECT_TRUE(wait_until([&] {
    return redis_integer_at(redis.command("PUBSUB SHARDNUMSUB orders"), 1) == 0 &&
           host.bridge->counters().redis_subscriptions == 1;
  })) << "an SSUBSCRIBE held with nobody wanting it";
  EXPECT_EQ(log.count("redis ended the sharded subscription"), 0u);
}

TEST(Bridge, ChurningLocalSubscribersDoNotStormRedis) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  Host host(chat_config(redis.port(), 1, Mode::kEnvelope));
  auto steady = Subscription::open(host.daemon.options());
  steady.subscribe({"chat:steady"});
  ASSERT_TRUE(subscribed(*host.bridge, 2));
  const auto before = host.bridge->counters();
  // 3,000 joins and leaves over about a second, on 30 channels.
  auto churn = Subscription::open(host.daemon.options());
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 3000; ++i) {
    const std::string channel = "chat:churn:" + std::to_string(i % 30);
    churn.subscribe({channel});
    churn.unsubscribe({channel});
    if (i % 100 == 99) std::this_thread::sleep_for(30ms);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::this_thread::sleep_for(800ms);  // past the linger: whatever was subscribed is gone
  const auto after = host.bridge->counters();
  const uint64_t commands = after.subscribe_commands + after.unsubscribe_commands -
                            before.subscribe_commands - before.unsubscribe_commands;
  // At most one SUBSCRIBE per interest round (20 ms) plus the UNSUBSCRIBEs after the linger.
  EXPECT_LE(commands, static_cast<uint64_t>(seconds / 0.020) + 10) << seconds << " s";
  auto* stats = redis.command("INFO commandstats");
  ASSERT_NE(stats, nullptr);
  const std::string info(stats->str, stats->len);
  freeReplyObject(stats);
  const auto at = info.find("cmdstat_subscribe:calls=");
  ASSERT_NE(at, std::string::npos);
  EXPECT_LE(std::stoul(info.substr(at + 24)), commands + 2) << "Redis saw what the bridge counted";
  EXPECT_EQ(after.redis_subscriptions, 2u) << "back to the heartbeat and chat:steady";
}

// ---- bad input ---------------------------------------------------------------------------

TEST(Bridge, BadInputFromRedisIsCountedAndNeverDelivered) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  BridgeConfig config = chat_config(redis.port(), 1, Mode::kEnvelope);
  config.max_payload_bytes = 1024;
  Host host(config);
  auto sub = Subscription::open(host.daemon.options());
  sub.psubscribe({"chat:*"});
  ASSERT_TRUE(subscribed(*host.bridge, 2));

  auto publish = [&](const std::string& channel, const std::string& payload) {
    freeReplyObject(redis.command("PUBLISH %b %b", channel.data(), channel.size(), payload.data(),
                                  payload.size()));
  };
  std::string envelope;
  const std::string big(2000, 'x');
  encode_envelope({2, 0, 1}, bytes_of(big), envelope);
  publish("chat:big", envelope);                          // oversized
  publish("chat:garbage", "not an envelope at all....");  // corrupt: no magic
  encode_envelope({2, 1, 1}, bytes_of(std::string("ok")), envelope);
  std::string future = envelope;
  future[3] = 9;  // version 9
  publish("chat:future", future);
  publish("chat:short", envelope.substr(0, 10));        // truncated header
  publish("chat:" + std::string(1100, 'n'), envelope);  // channel name over 1024 bytes
  publish("chat:good", envelope);
  auto m = sub.next(5s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->channel, "chat:good");
  EXPECT_EQ(std::string(m->text()), "ok");
  EXPECT_FALSE(sub.next(300ms)) << "nothing bad reached the local subscriber";
  const auto c = host.bridge->counters();
  EXPECT_EQ(c.dropped_by(Drop::kOversized), 1u);
  EXPECT_EQ(c.dropped_by(Drop::kCorruptEnvelope), 3u);
  EXPECT_EQ(c.dropped_by(Drop::kBadChannel), 1u);
  EXPECT_EQ(c.imported, 1u);
}

// ---- faults ------------------------------------------------------------------------------

TEST(Bridge, RedisKilledAndRestartedPubSubLosesOnlyWhatItReports) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  Host a(chat_config(redis.port(), 1, Mode::kEnvelope));
  Host b(chat_config(redis.port(), 2, Mode::kEnvelope));
  Collector collector(b.daemon.options(), "chat:stream");
  ASSERT_TRUE(subscribed(*b.bridge, 2));
  SteadyPublisher publisher(a.daemon.options(), "chat:stream", 2000);
  ASSERT_TRUE(wait_until([&] { return collector.count() > 500; }));
  redis.kill_hard();
  std::this_thread::sleep_for(500ms);  // local publishing goes on: queued in A's bridge
  ASSERT_TRUE(redis.restart());
  ASSERT_TRUE(wait_until([&] { return b.bridge->counters().reconnects >= 1; }));
  const size_t after_restart = collector.count();
  ASSERT_TRUE(wait_until([&] { return collector.count() > after_restart + 1000; }));
  publisher.finish();
  const uint64_t sent = publisher.sent;
  ASSERT_TRUE(wait_until([&] { return a.bridge->counters().queue_depth == 0; }));
  ASSERT_TRUE(wait_until([&] {
    std::lock_guard<std::mutex> lock(collector.mutex);
    return !collector.numbers.empty() && collector.numbers.back() == sent - 1;
  })) << "the stream resumed to its last message";
  collector.finish();
  expect_no_duplicates_in_order(collector.numbers);
  const auto cb = b.bridge->counters();
  const auto ca = a.bridge->counters();
  EXPECT_EQ(collector.numbers.front(), 0u);
  // Every message is either received or counted lost: lost in transit as seen by the
  // importer (sequence gaps), whatever the cause on the exporting side, or lapped on bus B's
  // ring when the queued burst arrived (reported to the subscriber by the bus).
  EXPECT_EQ(collector.numbers.size() + cb.lost_in_transit + collector.lapped, sent);
  EXPECT_GE(ca.reconnects, 1u);
  // What the exporter knows it dropped (unacknowledged at the crash, queue overflow) is
  // among the losses the importer saw.
  EXPECT_LE(ca.dropped_by(Drop::kQueueFull), cb.lost_in_transit);
  std::cout << "sent " << sent << ", received " << collector.numbers.size() << ", lost "
            << cb.lost_in_transit << ", lapped locally " << collector.lapped
            << " (exporter: in flight " << ca.dropped_by(Drop::kInFlight) << ")\n";
}

// Which of Redis's copies of a message is imported changes with the subscriptions while
// messages flow: by name; by name and pattern together (two copies of each, while the
// by-name one lingers); pattern only; both again; by name only. Each message is
// imported once throughout.
TEST(Bridge, DesignatedCopyFollowsSubscriptionChangesMidStream) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  Host a(chat_config(redis.port(), 1, Mode::kEnvelope));
  Host b(chat_config(redis.port(), 2, Mode::kEnvelope));
  Collector by_name(b.daemon.options(), "chat:room");
  ASSERT_TRUE(subscribed(*b.bridge, 2));  // heartbeat, chat:room
  SteadyPublisher publisher(a.daemon.options(), "chat:room", 2000);
  auto arrived = [&](size_t more) {
    const size_t target = by_name.count() + more;
    return wait_until([&] { return by_name.count() >= target; });
  };
  ASSERT_TRUE(arrived(100));
  auto by_pattern =
      std::make_unique<Collector>(b.daemon.options(), "chat:*", Collector::By::kPattern);
  ASSERT_TRUE(subscribed(*b.bridge, 3));  // + chat:*, chat:room lingering
  ASSERT_TRUE(subscribed(*b.bridge, 2));  // heartbeat, chat:* (it covers chat:room)
  ASSERT_TRUE(arrived(200));
  by_pattern.reset();
  ASSERT_TRUE(subscribed(*b.bridge, 3));  // chat:room again, chat:* lingering
  ASSERT_TRUE(subscribed(*b.bridge, 2));  // heartbeat, chat:room
  ASSERT_TRUE(arrived(200));
  publisher.finish();
  ASSERT_TRUE(wait_until([&] {
    std::lock_guard<std::mutex> lock(by_name.mutex);
    return !by_name.numbers.empty() && by_name.numbers.back() + 1 == publisher.sent;
  })) << "the last message never arrived";
  by_name.finish();
  EXPECT_TRUE(by_name.consecutive()) << "a message lost or imported twice";
  EXPECT_EQ(b.bridge->counters().imported, publisher.sent - by_name.numbers.front());
  EXPECT_EQ(b.bridge->counters().lost_in_transit, 0u);
}

TEST(Bridge, SilentRedisIsFoundByHeartbeatAndTheLocalBusCarriesOn) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  Host a(chat_config(redis.port(), 1, Mode::kEnvelope));
  Host b(chat_config(redis.port(), 2, Mode::kEnvelope));
  auto local = Subscription::open(a.daemon.options());
  local.subscribe({"chat:room"});
  auto remote = Subscription::open(b.daemon.options());
  remote.subscribe({"chat:room"});
  ASSERT_TRUE(subscribed(*a.bridge, 2));
  ASSERT_TRUE(subscribed(*b.bridge, 2));
  auto bus = Bus::connect(a.daemon.options());
  // Forged heartbeats (anyone may PUBLISH on the heartbeat channels): a number the bridge
  // never sent, which would hide the timeout below for good, and bytes that are no number.
  redisReply* channels = redis.command("PUBSUB CHANNELS __shmbus:bridge:heartbeat:1:*");
  ASSERT_TRUE(channels && channels->type == REDIS_REPLY_ARRAY && channels->elements == 1);
  const std::string heartbeat(channels->element[0]->str, channels->element[0]->len);
  freeReplyObject(channels);
  for (const char* forged : {"18446744073709551615", "99999999999x", "-5", ""}) {
    redisReply* r = redis.command("PUBLISH %s %s", heartbeat.c_str(), forged);
    ASSERT_TRUE(r && r->type == REDIS_REPLY_INTEGER && r->integer == 1);
    freeReplyObject(r);
  }

  redis.pause();  // connections stay open; nothing answers
  // The local bus does not wait for Redis: publish and receive right away.
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 100; ++i) bus.publish("chat:room", "during " + std::to_string(i));
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(local.next(1s));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 500ms);
  ASSERT_TRUE(wait_until([&] { return a.bridge->counters().heartbeat_timeouts >= 1; }, 5s));
  // The silent link was dropped. The bridge may be connected again already: the kernel of a
  // paused Redis still completes TCP handshakes, and the bridge reconnects at once (this
  // expected `connected` to be false, and failed when the reconnect came first).
  // The counters are separate atomics: the timeout is counted just before the link is
  // dropped, so a look in between sees it counted and the link still up. Wait for the drop.
  EXPECT_TRUE(wait_until(
      [&] {
        const auto c = a.bridge->counters();
        return !c.connected || c.reconnects >= 1;
      },
      5s));

  redis.resume();
  ASSERT_TRUE(wait_until([&] {
    const auto c = a.bridge->counters();
    return c.connected && c.redis_subscriptions == 2 && c.queue_depth == 0;
  }));
  ASSERT_TRUE(subscribed(*b.bridge, 2));
  drain(remote, 300ms);  // whatever of the 100 made it
  bus.publish("chat:room", "after");
  auto m = remote.next(5s);
  ASSERT_TRUE(m);
  EXPECT_EQ(std::string(m->text()), "after");
}

TEST(Bridge, OutboundQueueIsBoundedAndCountsEveryDrop) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  BridgeConfig config = chat_config(redis.port(), 1, Mode::kEnvelope);
  config.queue_messages = 100;
  Host a(config);
  ASSERT_TRUE(a.connected());
  redis.kill_hard();
  ASSERT_TRUE(wait_until([&] { return !a.bridge->counters().connected; }));
  auto bus = Bus::connect(a.daemon.options());
  for (int i = 0; i < 250; ++i) bus.publish("chat:queued", std::to_string(i));
  // The depth reaches 100 with the 100th message; the drops follow as the export thread
  // reads on, so wait for all 250 to be taken from the ring (queued or dropped).
  ASSERT_TRUE(wait_until([&] {
    const auto c = a.bridge->counters();
    return c.queue_depth + c.dropped_by(Drop::kQueueFull) == 250;
  })) << "queued "
      << a.bridge->counters().queue_depth << ", dropped "
      << a.bridge->counters().dropped_by(Drop::kQueueFull);
  EXPECT_EQ(a.bridge->counters().queue_depth, 100u);
  EXPECT_EQ(a.bridge->counters().dropped_by(Drop::kQueueFull), 150u);

  ASSERT_TRUE(redis.restart());
  // The newest 100 go out once Redis is back; the 150 oldest were dropped and counted.
  ASSERT_TRUE(wait_until([&] { return a.bridge->counters().exported == 100; }));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(a.bridge->counters().exported, 100u);
  EXPECT_EQ(a.bridge->counters().dropped_by(Drop::kQueueFull), 150u);
  EXPECT_EQ(a.bridge->counters().queue_depth, 0u);
}

// A stalled Redis: what fits in flight goes out first, then the queue's newest, in order and
// intact, the oldest of the overflow dropped and counted. Thousands queued: the queue's
// packed buffer is reused and compacted while it drains.
TEST(Bridge, QueuedExportsLeaveInOrderAfterAStall) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  BridgeConfig config = stall_config(redis.port());
  config.queue_messages = 10000;
  Host a(config);
  ASSERT_TRUE(a.connected());
  redisContext* listener = redis.connect();
  ASSERT_TRUE(listener && !listener->err);
  freeReplyObject(redisCommand(listener, "SUBSCRIBE chat:q"));
  auto bus = Bus::connect(a.daemon.options());
  auto channel = bus.channel("chat:q", lossless_channel(16 << 20));
  redis.pause();
  constexpr uint64_t kMessages = 40000;
  for (uint64_t i = 0; i < kMessages; ++i) channel.publish("message " + std::to_string(i));
  // Until the exporter has taken all 40,000 from the ring: the queue full and no more drops.
  uint64_t drops_seen = ~uint64_t{0};
  ASSERT_TRUE(wait_until(
      [&] {
        const auto c = a.bridge->counters();
        const bool settled = c.queue_depth == 10000 && c.dropped_by(Drop::kQueueFull) == drops_seen;
        drops_seen = c.dropped_by(Drop::kQueueFull);
        if (!settled) std::this_thread::sleep_for(300ms);
        return settled;
      },
      30s));
  redis.resume();
  ASSERT_TRUE(wait_until(
      [&] {
        const auto c = a.bridge->counters();
        return c.exported + c.dropped_total() == kMessages && c.queue_depth == 0;
      },
      20s))
      << "exported " << a.bridge->counters().exported;
  const auto c = a.bridge->counters();
  ASSERT_EQ(c.heartbeat_timeouts, 0u) << "the stall outlasted the heartbeat timeout";
  EXPECT_EQ(c.dropped_total(), c.dropped_by(Drop::kQueueFull));
  // In Redis's order: first those that went out before the stall was felt, then the
  // newest 10,000.
  std::vector<uint64_t> got;
  for (uint64_t i = 0; i < c.exported; ++i) {
    redisReply* r = nullptr;
    ASSERT_EQ(redisGetReply(listener, reinterpret_cast<void**>(&r)), REDIS_OK);
    const std::string text(r->element[2]->str, r->element[2]->len);
    freeReplyObject(r);
    ASSERT_TRUE(text.starts_with("message ")) << text;
    got.push_back(std::stoull(text.substr(8)));
  }
  redisFree(listener);
  ASSERT_EQ(got.size(), c.exported);
  size_t gap = 0;  // where the dropped run was
  for (size_t i = 1; i < got.size(); ++i) {
    if (got[i] == got[i - 1] + 1) continue;
    ASSERT_EQ(gap, 0u) << "a second gap at " << i << ": " << got[i - 1] << " then " << got[i];
    gap = i;
    EXPECT_EQ(got[i] - got[i - 1] - 1, c.dropped_by(Drop::kQueueFull));
  }
  EXPECT_EQ(got.front(), 0u);
  EXPECT_EQ(got.back(), kMessages - 1);
  EXPECT_EQ(got.size() - gap, 10000u) << "the queue's 10,000 went out last";
}

// While Redis is away, the queue's memory stays near queue_bytes however its messages are
// dropped: 128 of 512 KiB through a 4 MiB queue.
TEST(Bridge, QueueMemoryStaysNearItsByteCap) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  BridgeConfig config = stall_config(redis.port());
  config.queue_bytes = 4 << 20;
  Host a(config);
  ASSERT_TRUE(a.connected());
  auto bus = Bus::connect(a.daemon.options());
  auto channel = bus.channel("chat:big", lossless_channel(16 << 20, 1 << 20));
  redis.pause();
  const std::string payload(512 << 10, 'x');
  constexpr uint64_t kMessages = 128;  // 64 MiB
  std::atomic<bool> published{false};
  std::thread publisher([&] {
    for (uint64_t i = 0; i < kMessages; ++i) channel.publish(payload);
    published = true;
  });
  // The queue's memory, sampled while the burst goes through it (it is given back once the
  // queue empties).
  uint64_t held_max = 0;
  while (!published) {
    held_max = std::max(held_max, a.bridge->counters().queue_held_bytes);
    std::this_thread::sleep_for(1ms);
  }
  publisher.join();
  ASSERT_TRUE(wait_until([&] { return a.bridge->counters().dropped_by(Drop::kQueueFull) > 0; }))
      << "the test needs the queue to overflow";
  redis.resume();
  EXPECT_LE(held_max, 4 * config.queue_bytes + (1 << 20)) << "held " << held_max;
  EXPECT_TRUE(wait_until(
      [&] {
        const auto c = a.bridge->counters();
        return c.exported + c.dropped_total() == kMessages;
      },
      20s))
      << a.bridge->counters_json();
  EXPECT_EQ(a.bridge->counters().heartbeat_timeouts, 0u);
}

// Large messages count by size toward what waits for a stalled Redis: past 8 MiB unwritten
// they wait in the (bounded) queue, not all in hiredis's buffer ahead of the heartbeats.
TEST(Bridge, LargeExportsWaitInTheQueueNotInTheConnectionBuffer) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  Host a(stall_config(redis.port()));
  ASSERT_TRUE(a.connected());
  auto bus = Bus::connect(a.daemon.options());
  auto channel = bus.channel("chat:big", lossless_channel(16 << 20, 1 << 20));
  redis.pause();  // nothing is read from the sockets any more
  const std::string payload(512 << 10, 'x');
  constexpr uint64_t kMessages = 64;  // 32 MiB
  for (uint64_t i = 0; i < kMessages; ++i) channel.publish(payload);
  EXPECT_TRUE(wait_until([&] { return a.bridge->counters().queue_depth >= kMessages / 2; }, 5s))
      << "queue depth " << a.bridge->counters().queue_depth;
  redis.resume();
  EXPECT_TRUE(wait_until([&] { return a.bridge->counters().exported >= kMessages; }, 10s))
      << "exported " << a.bridge->counters().exported;
  EXPECT_EQ(a.bridge->counters().dropped_total(), 0u);
}

// Host 2's bridge importing orders:* durably, its read positions in `state_dir`.
BridgeConfig durable_orders_importer(int port, const TempDir& state_dir) {
  BridgeConfig c = fast_config(port, 2);
  c.imports.push_back({"orders:*", Mode::kEnvelope, true, 100000});
  c.state_file = (state_dir.path / "positions").string();
  return c;
}

// The payloads `sub` delivers until nothing comes for a second.
std::vector<std::string> payloads_until_quiet(Subscription& sub) {
  std::vector<std::string> got;
  for (auto& m : drain(sub, 1s)) got.push_back(std::move(m.payload));
  return got;
}

// What `sub` delivers until nothing comes for drain()'s quiet time, by channel.
std::map<std::string, std::vector<std::string>> payloads_by_channel(Subscription& sub) {
  std::map<std::string, std::vector<std::string>> got;
  for (auto& m : drain(sub)) got[m.channel].push_back(std::move(m.payload));
  return got;
}

// A Redis command that must succeed: a failure (no reply) fails the test.
template <typename... Args>
void redis_ok(const RedisServer& redis, const char* format, Args... args) {
  auto* reply = redis.command(format, args...);
  ASSERT_NE(reply, nullptr);
  freeReplyObject(reply);
}

// XADDs "order <seq>" to `stream` as the bridge of host `origin` does, stamped `ts` (by
// default 1000 + seq); returns the entry's id.
std::string xadd_order(RedisServer& redis, int origin, int seq, int ts = -1,
                       const char* stream = "orders:1") {
  const std::string payload = "order " + std::to_string(seq);
  auto* reply = redis.command("XADD %s * payload %s origin %d seq %d ts %d", stream,
                              payload.c_str(), origin, seq, ts < 0 ? 1000 + seq : ts);
  EXPECT_TRUE(reply != nullptr && reply->type == REDIS_REPLY_STRING);
  std::string id = reply && reply->type == REDIS_REPLY_STRING ? reply->str : "";
  if (reply) freeReplyObject(reply);
  return id;
}

TEST(Bridge, DurableRuleLosesNothingAcrossRedisAndBridgeRestarts) {
  RedisServer redis(test::RedisServerOptions{.append_only = true, .extra_args = {}});
  REQUIRE_REDIS(redis);
  const TempDir state_dir("shmbus-bridge-state");
  BridgeConfig exporter = fast_config(redis.port(), 1);
  exporter.exports.push_back({"orders:*", Mode::kEnvelope, true, 100000});
  const BridgeConfig importer = durable_orders_importer(redis.port(), state_dir);
  Host a(exporter);
  Host b(importer);
  // Lossless from end to end: back-pressure channels on both buses, so a subscriber that a
  // loaded machine leaves behind delays the stream instead of being lapped (as a default
  // lossy ring was, by the catch-up burst after the bridge restart: 364 lost locally).
  auto bus_a = Bus::connect(a.daemon.options());
  auto bus_b = Bus::connect(b.daemon.options());
  auto orders_a = bus_a.channel("orders:1", lossless_channel(1 << 20));
  auto orders_b = bus_b.channel("orders:1", lossless_channel(1 << 20));
  Collector collector(b.daemon.options(), "orders:1");
  ASSERT_TRUE(reading_streams(*b.bridge, 1));
  SteadyPublisher publisher(a.daemon.options(), "orders:1", 1000);
  ASSERT_TRUE(wait_until([&] { return collector.count() > 300; }));

  redis.kill_hard();  // with appendfsync always: every acknowledged XADD survives
  std::this_thread::sleep_for(400ms);
  ASSERT_TRUE(redis.restart());
  ASSERT_TRUE(wait_until([&] { return b.bridge->counters().reconnects >= 1; }));
  const size_t before_bridge_restart = collector.count();
  ASSERT_TRUE(wait_until([&] { return collector.count() > before_bridge_restart + 200; }));

  b.bridge.reset();  // stops and saves its read position; the stream keeps filling meanwhile
  std::this_thread::sleep_for(400ms);
  b.start(importer);
  const size_t after_bridge_restart = collector.count();
  ASSERT_TRUE(wait_until([&] { return collector.count() > after_bridge_restart + 200; }));
  publisher.finish();
  const uint64_t sent = publisher.sent;
  ASSERT_TRUE(wait_until([&] { return collector.count() >= sent; }, 15s))
      << "received " << collector.count() << " of " << sent << ", missing "
      << missing_runs(collector, sent) << "\nexporter " << a.bridge->counters_json()
      << "\nimporter " << b.bridge->counters_json();
  std::this_thread::sleep_for(200ms);  // a duplicate would arrive now
  collector.finish();
  expect_no_duplicates_in_order(collector.numbers);
  ASSERT_EQ(collector.numbers.size(), sent) << b.bridge->counters_json();
  EXPECT_EQ(collector.lapped, 0u);
  EXPECT_EQ(collector.numbers.front(), 0u);
  EXPECT_EQ(collector.numbers.back(), sent - 1);
  EXPECT_GE(a.bridge->counters().reconnects, 1u);
}

// stop() sends what the export thread already took from the ring before it ends: durable
// messages published just before a stop are in the stream afterwards, none counted lost.
TEST(Bridge, StopFlushesWhatTheExporterHolds) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  BridgeConfig exporter = fast_config(redis.port(), 1);
  exporter.exports.push_back({"orders:*", Mode::kEnvelope, true, 100000});
  Host a(exporter);
  ASSERT_TRUE(a.connected());
  auto bus = Bus::connect(a.daemon.options());
  auto channel = bus.channel("orders:1", lossless_channel(4 << 20));
  constexpr uint64_t kMessages = 20000;
  for (uint64_t i = 0; i < kMessages; ++i) channel.publish("order " + std::to_string(i));
  // Stop as soon as the exporter is under way: XADDs are still queued or on their way.
  ASSERT_TRUE(wait_until([&] { return a.bridge->counters().exported > 0; }));
  a.bridge->stop();
  const auto c = a.bridge->counters();
  auto* reply = redis.command("XLEN %s", "orders:1");
  ASSERT_NE(reply, nullptr);
  const long long stored = reply->integer;
  freeReplyObject(reply);
  // Every message the exporter took is in the stream or counted; with Redis up, all of them
  // are in the stream.
  EXPECT_EQ(c.dropped_by(Drop::kStopped), 0u);
  EXPECT_EQ(c.dropped_by(Drop::kInFlight), 0u);
  EXPECT_EQ(static_cast<uint64_t>(stored), c.exported);
  EXPECT_GT(c.exported, 0u);
}

// A durable entry resent after later ones (its first XADD refused for a moment while the
// ones pipelined behind it were taken) is imported; a true duplicate is not.
TEST(Bridge, DurableLateResendIsImportedAndARepeatIsNot) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  const TempDir state_dir("shmbus-bridge-resend");
  const BridgeConfig importer = durable_orders_importer(redis.port(), state_dir);
  Host b(importer);
  auto sub = Subscription::open(b.daemon.options());
  sub.subscribe({"orders:1"});
  ASSERT_TRUE(reading_streams(*b.bridge, 1));
  // Origin 9's entries as a pipeline with a transient refusal leaves them: 0, 2, 3, then the
  // resent 1, then 2 again (a resend whose first XADD had in fact landed).
  for (const int seq : {0, 2, 3, 1, 2}) xadd_order(redis, 9, seq);
  EXPECT_EQ(payloads_until_quiet(sub),
            (std::vector<std::string>{"order 0", "order 2", "order 3", "order 1"}));
  const auto c = b.bridge->counters();
  EXPECT_EQ(c.duplicates_dropped, 1u);
  EXPECT_EQ(c.lost_in_transit, 0u);  // the gap 1 opened was filled
}

// What a durable import took from each origin is saved with the read position: a resend
// that lands after the importing bridge restarted is still known for one. (An exporter
// whose link broke resends what was in flight: on a loaded machine the importer of
// DurableRuleLosesNothingAcrossRedisAndBridgeRestarts restarted between an XADD that
// landed and its resend, and delivered the resends twice.)
TEST(Bridge, DurableRepeatsAreRecognisedAcrossABridgeRestart) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  const TempDir state_dir("shmbus-bridge-restart");
  const BridgeConfig importer = durable_orders_importer(redis.port(), state_dir);
  Host b(importer);
  auto sub = Subscription::open(b.daemon.options());
  sub.subscribe({"orders:1"});
  ASSERT_TRUE(reading_streams(*b.bridge, 1));
  // Before the restart: 0, 2 and 3 arrive; 1 is still on its way.
  for (const int seq : {0, 2, 3}) xadd_order(redis, 9, seq);
  EXPECT_EQ(payloads_until_quiet(sub), (std::vector<std::string>{"order 0", "order 2", "order 3"}));
  EXPECT_EQ(b.bridge->counters().lost_in_transit, 1u);

  b.bridge.reset();
  b.start(importer);
  ASSERT_TRUE(reading_streams(*b.bridge, 1));
  // After it: the resend of 1 fills its gap; 3 again (a resend whose first XADD had landed)
  // is a repeat; 4 is new.
  for (const int seq : {1, 3, 4}) xadd_order(redis, 9, seq);
  EXPECT_EQ(payloads_until_quiet(sub), (std::vector<std::string>{"order 1", "order 4"}));
  const auto c = b.bridge->counters();
  EXPECT_EQ(c.duplicates_dropped, 1u);
  // The gap was counted by the bridge's previous run; filling it leaves this run's count.
  EXPECT_EQ(c.lost_in_transit, 0u);
}

// Leaving a pub/sub channel forgets its sequences, and only its: the durable ones stay, so
// a repeat read from the stream afterwards is still known for one.
TEST(Bridge, DurableRepeatsAreRecognisedAfterAPubSubUnsubscribe) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  const TempDir state_dir("shmbus-bridge-unsubscribe");
  BridgeConfig importer = durable_orders_importer(redis.port(), state_dir);
  importer.imports.push_back({"chat:*", Mode::kEnvelope, false, 0});
  Host b(importer);
  auto sub = Subscription::open(b.daemon.options());
  sub.subscribe({"orders:1", "chat:1"});
  ASSERT_TRUE(reading_streams(*b.bridge, 1));
  ASSERT_TRUE(subscribed(*b.bridge, 2));  // heartbeat, chat:1
  xadd_order(redis, 9, 0);
  ASSERT_TRUE(sub.next(5s).has_value());
  sub.unsubscribe({"chat:1"});
  ASSERT_TRUE(subscribed(*b.bridge, 1));  // UNSUBSCRIBE chat:1 confirmed
  xadd_order(redis, 9, 0);                // a repeat
  xadd_order(redis, 9, 1);
  EXPECT_EQ(payloads_until_quiet(sub), std::vector<std::string>{"order 1"});
  EXPECT_EQ(b.bridge->counters().duplicates_dropped, 1u);
}

// A durable import into a back-pressure channel waits for a slow subscriber instead of
// dropping: the entries stay in the stream until the channel has room.
TEST(Bridge, DurableImportWaitsForAFullBackPressureChannel) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  const TempDir state_dir("shmbus-bridge-full");
  Host b(durable_orders_importer(redis.port(), state_dir));
  auto bus = Bus::connect(b.daemon.options());
  auto channel = bus.channel("orders:1", lossless_channel(16 << 10));  // ~300 messages
  auto sub = Subscription::open(b.daemon.options());
  sub.subscribe({"orders:1"});
  ASSERT_TRUE(reading_streams(*b.bridge, 1));
  constexpr int kEntries = 3000;
  for (int seq = 0; seq < kEntries; ++seq) xadd_order(redis, 9, seq);
  // The subscriber has not read yet: the channel fills and the bridge holds back.
  ASSERT_TRUE(wait_until([&] { return b.bridge->counters().imported > 0; }));
  std::this_thread::sleep_for(300ms);
  EXPECT_LT(b.bridge->counters().imported, static_cast<uint64_t>(kEntries));
  std::vector<std::string> got = payloads_until_quiet(sub);
  ASSERT_EQ(got.size(), static_cast<size_t>(kEntries)) << b.bridge->counters_json();
  for (int seq = 0; seq < kEntries; ++seq) ASSERT_EQ(got[seq], "order " + std::to_string(seq));
  const auto c = b.bridge->counters();
  EXPECT_EQ(c.imported, static_cast<uint64_t>(kEntries));
  EXPECT_EQ(c.dropped_total(), 0u) << b.bridge->counters_json();
  EXPECT_EQ(c.duplicates_dropped, 0u);
}

// An origin whose channel restarted numbers from 0 again, with newer stamps: the gaps of
// its old numbering are forgotten, so a repeat of a new number is still known for one.
TEST(Bridge, DurableGapsAreForgottenWhenTheOriginRestartsItsNumbering) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  const TempDir state_dir("shmbus-bridge-renumber");
  Host b(durable_orders_importer(redis.port(), state_dir));
  auto sub = Subscription::open(b.daemon.options());
  sub.subscribe({"orders:1"});
  ASSERT_TRUE(reading_streams(*b.bridge, 1));
  xadd_order(redis, 9, 0);
  xadd_order(redis, 9, 2);        // 1 missing
  xadd_order(redis, 9, 0, 2000);  // restarted
  xadd_order(redis, 9, 1, 2001);
  xadd_order(redis, 9, 1, 2001);  // a repeat of the new 1
  EXPECT_EQ(payloads_until_quiet(sub),
            (std::vector<std::string>{"order 0", "order 2", "order 0", "order 1"}));
  EXPECT_EQ(b.bridge->counters().duplicates_dropped, 1u);
}

// The state file is read line by line; a line that does not parse is ignored (and logged),
// the others still count.
TEST(Bridge, StateFileLinesThatDoNotParseAreIgnored) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  const TempDir state_dir("shmbus-bridge-bad-state");
  const BridgeConfig importer = durable_orders_importer(redis.port(), state_dir);
  std::string resume_after;
  for (int seq = 0; seq < 4; ++seq) {
    const std::string id = xadd_order(redis, 9, seq);
    if (seq == 1) resume_after = id;
  }
  const std::string key_hex = "6f72646572733a31";  // orders:1
  {
    std::ofstream state(importer.state_file);
    state << "garbage\n"
          << "1-x " << key_hex << "\n"
          << "1-1 " << key_hex << " trailing\n"
          << resume_after << " " << key_hex << "\n"
          << "seq " << key_hex << " 9 -1 5\n"    // a sign would read as 2^64 - 1
          << "seq " << key_hex << " 0 3 1003\n"  // origin 0 is no bridge
          << "seq " << key_hex << " 9 3 1003\n"
          << "seq zz 9 3 1003\n";
  }
  Host b(importer);
  auto sub = Subscription::open(b.daemon.options());
  sub.subscribe({"orders:1"});
  ASSERT_TRUE(reading_streams(*b.bridge, 1));
  xadd_order(redis, 9, 4);
  // Resumed after 1; 2 and 3 were taken already (the saved sequence says 3); 4 is new.
  EXPECT_EQ(payloads_until_quiet(sub), std::vector<std::string>{"order 4"});
  EXPECT_EQ(b.bridge->counters().duplicates_dropped, 2u);
}

// A pattern subscriber under a durable rule: the streams its pattern matches are found by
// SCAN. One there before the subscriber is read from its newest entry on; one that appears
// later is read from its start, so its first messages are not lost to the scan interval -
// also when it appears while the bridge is down.
TEST(Bridge, DurablePatternSubscribersFollowStreamsAsTheyAppear) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  const TempDir state_dir("shmbus-bridge-scan");
  const BridgeConfig importer = durable_orders_importer(redis.port(), state_dir);
  xadd_order(redis, 9, 0);  // history: before anyone's interest
  // SCAN TYPE stream skips it.
  ASSERT_NO_FATAL_FAILURE(redis_ok(redis, "SET orders:x %s", "not a stream"));
  Host b(importer);
  auto sub = Subscription::open(b.daemon.options());
  sub.psubscribe({"orders:*"});
  ASSERT_TRUE(reading_streams(*b.bridge, 1));  // orders:1
  xadd_order(redis, 9, 1);
  for (int seq = 0; seq < 3; ++seq) xadd_order(redis, 7, seq, -1, "orders:2");
  ASSERT_TRUE(reading_streams(*b.bridge, 2));
  auto got = payloads_by_channel(sub);
  EXPECT_EQ(got["orders:1"], std::vector<std::string>{"order 1"});
  EXPECT_EQ(got["orders:2"], (std::vector<std::string>{"order 0", "order 1", "order 2"}));
  EXPECT_EQ(got.size(), 2u);
  EXPECT_EQ(b.bridge->counters().streams_read, 2u);
  EXPECT_EQ(b.bridge->counters().dropped_total(), 0u);

  b.bridge.reset();
  for (int seq = 0; seq < 2; ++seq) xadd_order(redis, 7, seq, -1, "orders:3");
  b.start(importer);
  ASSERT_TRUE(reading_streams(*b.bridge, 3));
  got = payloads_by_channel(sub);
  EXPECT_EQ(got["orders:3"], (std::vector<std::string>{"order 0", "order 1"}));
  EXPECT_EQ(got.size(), 1u) << "nothing again from orders:1 or orders:2";
  EXPECT_EQ(b.bridge->counters().streams_read, 3u);

  // Interest gone: the streams are no longer read.
  sub.punsubscribe({"orders:*"});
  EXPECT_TRUE(reading_streams(*b.bridge, 0));
}

// A stream nobody has wanted for unsubscribe_linger is forgotten (its position too): a
// subscriber that comes back later starts at the newest entry, not with the backlog of its
// absence.
TEST(Bridge, DurableInterestThatComesBackLaterStartsAtTheNewestEntry) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  const TempDir state_dir("shmbus-bridge-forget");
  Host b(durable_orders_importer(redis.port(), state_dir));  // linger 300 ms
  {
    auto sub = Subscription::open(b.daemon.options());
    sub.subscribe({"orders:1"});
    ASSERT_TRUE(reading_streams(*b.bridge, 1));
    xadd_order(redis, 9, 0);
    EXPECT_EQ(payloads_until_quiet(sub), std::vector<std::string>{"order 0"});
  }
  ASSERT_TRUE(reading_streams(*b.bridge, 0));
  std::this_thread::sleep_for(300ms);   // the last XREAD that included orders:1 has ended
  xadd_order(redis, 9, 1);              // while nobody here wants orders:1
  std::this_thread::sleep_for(2500ms);  // the linger, and the once-a-second sweep
  auto sub = Subscription::open(b.daemon.options());
  sub.subscribe({"orders:1"});
  ASSERT_TRUE(reading_streams(*b.bridge, 1));
  xadd_order(redis, 9, 2);
  EXPECT_EQ(payloads_until_quiet(sub), std::vector<std::string>{"order 2"})
      << b.bridge->counters_json();
}

// A key a durable rule follows that is not a stream (someone SET it) is left out, with a
// log line; the link and the other streams carry on.
TEST(Bridge, DurableKeysThatAreNotStreamsAreLeftOut) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  const TempDir state_dir("shmbus-bridge-wrongtype");
  Host b(durable_orders_importer(redis.port(), state_dir));
  redis_ok(redis, "SET orders:0 not-a-stream");  // refused at its first read (XREVRANGE)
  xadd_order(redis, 9, 0);                       // orders:1, a stream at first
  auto sub = Subscription::open(b.daemon.options());
  sub.subscribe({"orders:0", "orders:1", "orders:2"});
  ASSERT_TRUE(reading_streams(*b.bridge, 2));
  redis_ok(redis, "DEL orders:1");
  redis_ok(redis, "SET orders:1 not-a-stream-either");  // refused by an XREAD of all three
  for (int seq = 0; seq < 3; ++seq) xadd_order(redis, 7, seq, -1, "orders:2");
  auto got = payloads_by_channel(sub);
  EXPECT_EQ(got["orders:2"], (std::vector<std::string>{"order 0", "order 1", "order 2"}));
  EXPECT_EQ(got.size(), 1u);
  const auto c = b.bridge->counters();
  EXPECT_EQ(c.reconnects, 0u);
  EXPECT_TRUE(c.connected);
  EXPECT_EQ(c.streams_read, 1u);  // orders:2
}

// ---- observability -----------------------------------------------------------------------

TEST(Bridge, CountersArePublishedLocallyAndShownByShmbusStats) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  Host host(chat_config(redis.port(), 7, Mode::kEnvelope));
  auto bus = Bus::connect(host.daemon.options());
  bus.publish("chat:x", "counted");
  ASSERT_TRUE(wait_until([&] { return host.bridge->counters().exported == 1; }));
  std::string report;
  ASSERT_TRUE(wait_until([&] {
    auto sub = Subscription::open(host.daemon.options());
    sub.subscribe({host.bridge->stats_channel()}, StartAt::earliest());
    while (auto m = sub.next(0ns)) report = std::string(m->text());
    return report.find("\"exported\":1") != std::string::npos;
  })) << report;
  EXPECT_NE(report.find("\"host_id\":7"), std::string::npos) << report;
  EXPECT_NE(report.find("\"queue_full\":0"), std::string::npos) << report;

  const char* cli = std::getenv("SHMBUS_CLI");
  if (cli == nullptr) GTEST_SKIP() << "SKIPPED: SHMBUS_CLI (the shmbus binary) is not set";
  const std::string command = std::string(cli) + " --bus " + host.daemon.bus() + " --socket " +
                              host.daemon.socket_path() + " stats";
  FILE* out = popen(command.c_str(), "r");
  ASSERT_NE(out, nullptr);
  std::string text;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof buffer, out)) text.append(buffer, n);
  EXPECT_EQ(pclose(out), 0) << text;
  EXPECT_NE(text.find("bridge host 7 -> 127.0.0.1:" + std::to_string(redis.port()) +
                      ": connected, exported 1"),
            std::string::npos)
      << text;
}

TEST(Bridge, StopsRelayingWhenTheLocalDaemonGoesAway) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  Host host(chat_config(redis.port(), 1, Mode::kEnvelope));
  ASSERT_TRUE(host.connected());
  EXPECT_FALSE(host.bridge->local_bus_gone());
  host.daemon.stop();
  ASSERT_TRUE(wait_until([&] { return host.bridge->local_bus_gone(); }));
  host.bridge->stop();  // returns: neither thread is stuck on the missing daemon
}

// ---- config and envelope (no Redis needed) -----------------------------------------------

TEST(BridgeConfig, ExampleFileParses) {
  const auto config = load_bridge_config(SHMBUS_SOURCE_DIR "/tools/bridge/shmbus-bridge.toml");
  EXPECT_EQ(config.host_id, 1);
  ASSERT_EQ(config.exports.size(), 1u);
  EXPECT_EQ(config.exports[0].pattern, "chat:*");
  EXPECT_EQ(config.queue_bytes, 64ull << 20);
}

TEST(BridgeConfig, ErrorsNameTheKeyTheLimitAndTheWayOut) {
  auto error_of = [](const std::string& text) {
    try {
      parse_bridge_config(text, "b.toml");
    } catch (const BridgeConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string rule = "[[export]]\npattern = \"chat:*\"\n";
  EXPECT_NE(error_of(rule).find("bridge.host_id must be set"), std::string::npos);
  EXPECT_NE(error_of("[bridge]\nhost_id = 1\nhostid = 2\n" + rule)
                .find("b.toml:3:1: unknown key 'bridge.hostid'"),
            std::string::npos)
      << error_of("[bridge]\nhost_id = 1\nhostid = 2\n" + rule);
  EXPECT_NE(
      error_of("[bridge]\nhost_id = 70000\n" + rule).find("accepted: an integer from 1 to 65534"),
      std::string::npos);
  EXPECT_NE(error_of("[bridge]\nhost_id = 1\n[[import]]\npattern = \"o:*\"\ndurable = true\n")
                .find("needs bridge.state_file"),
            std::string::npos);
  EXPECT_NE(error_of("[bridge]\nhost_id = 1\n[[import]]\npattern = \"o:*\"\nmode = \"json\"\n")
                .find("accepted: \"envelope\" or \"raw\""),
            std::string::npos);
  EXPECT_NE(error_of("[bridge]\nhost_id = 1\nqueue_bytes = \"lots\"\n" + rule)
                .find("not a positive byte size"),
            std::string::npos);
  EXPECT_NE(error_of("[redis]\npubsub = \"fast\"\n[bridge]\nhost_id = 1\n" + rule)
                .find("accepted: \"classic\" (PUBLISH / SUBSCRIBE) or \"sharded\""),
            std::string::npos);
  // Sharded and classic never meet: a channel exported one way and imported the other.
  const std::string sharded = "[redis]\npubsub = \"sharded\"\n[bridge]\nhost_id = 1\n";
  EXPECT_NE(error_of(sharded + "[[export]]\npattern = \"*\"\n[[import]]\npattern = \"orders\"\n")
                .find("channel 'orders' would be exported by [[export]] '*' with PUBLISH but "
                      "imported by its exact rule with SSUBSCRIBE"),
            std::string::npos);
  EXPECT_NE(error_of(sharded + "[[export]]\npattern = \"orders\"\n[[import]]\npattern = \"ord*\"\n")
                .find("add an [[import]] rule for exactly \"orders\""),
            std::string::npos);
  EXPECT_NO_THROW(parse_bridge_config(
      sharded + "[[export]]\npattern = \"orders\"\n[[export]]\npattern = \"*\"\n[[import]]\n"
                "pattern = \"orders\"\n",
      "b.toml"));
  EXPECT_TRUE(
      parse_bridge_config("[redis]\npubsub = \"sharded\"\n[bridge]\nhost_id = 1\n" + rule, "b.toml")
          .sharded);
  // Cluster mode: seed nodes, sharded by default; what a cluster cannot do is refused.
  const BridgeConfig cluster = parse_bridge_config(
      "[redis]\nnodes = [\"10.0.0.1:7000\", \"[::1]:7001\"]\n[bridge]\nhost_id = 1\n" + rule,
      "b.toml");
  ASSERT_EQ(cluster.redis_nodes.size(), 2u);
  EXPECT_EQ(cluster.redis_nodes[0].host, "10.0.0.1");
  EXPECT_EQ(cluster.redis_nodes[1].host, "::1");
  EXPECT_EQ(cluster.redis_nodes[1].port, 7001);
  EXPECT_TRUE(cluster.sharded);
  EXPECT_EQ(cluster.redis_description(), "cluster 10.0.0.1:7000,::1:7001");
  const std::string nodes = "[redis]\nnodes = [\"h:7000\"]\n";
  EXPECT_NE(error_of("[redis]\nnodes = [\"h\"]\n[bridge]\nhost_id = 1\n" + rule)
                .find("'h' is not host:port"),
            std::string::npos);
  EXPECT_NE(error_of("[redis]\nnodes = []\n[bridge]\nhost_id = 1\n" + rule)
                .find("redis.nodes must be a list of \"host:port\" strings"),
            std::string::npos);
  EXPECT_NE(error_of(nodes + "pubsub = \"classic\"\n[bridge]\nhost_id = 1\n" + rule)
                .find("set redis.host and port to any one node instead"),
            std::string::npos);
  EXPECT_NE(error_of(nodes + "db = 2\n[bridge]\nhost_id = 1\n" + rule).find("database 0 only"),
            std::string::npos);
  EXPECT_NE(error_of(nodes + "prefix = \"{app}:\"\n[bridge]\nhost_id = 1\n" + rule)
                .find("pick a prefix without braces"),
            std::string::npos);
  EXPECT_NE(error_of("[bridge]\nhost_id = 1\n").find("no [[export]] or [[import]] rule"),
            std::string::npos);
  EXPECT_NE(error_of("[bridge]\nhost_id = 1\n[[export]]\npattern = \"__shmbus:x\"\n")
                .find("reserved prefix"),
            std::string::npos);
}

// ---- the connection's own buffers and reply arena ------------------------------------------

RedisEndpoint local_endpoint(const RedisServer& redis) {
  RedisEndpoint e;
  e.host = "127.0.0.1";
  e.port = redis.port();
  return e;
}

// Every reply shape hiredis parses, pipelined so replies span reads and feed slices: a 1 MiB
// binary string, nil, an integer, an error, a nested XREAD reply, an array of 50,000 that
// spans reads, and 20,000 small ones.
TEST(RedisConnection, ParsesEveryReplyShapeThroughItsOwnBuffersAndArena) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  RedisConnection c(local_endpoint(redis));
  std::string big(1 << 20, 'b');
  big[7] = '\0';
  big.replace(1000, 2, "\r\n");  // binary-safe: a NUL and a CRLF inside the value
  c.append({"SET", "big", big});
  c.append({"GET", "big"});
  c.append({"GET", "missing"});
  c.append({"INCRBY", "n", "41"});
  c.append({"LPUSH", "big", "x"});  // WRONGTYPE
  c.append({"XADD", "s", "1-1", "field", "value"});
  c.append({"XREAD", "COUNT", "10", "STREAMS", "s", "0"});
  // An array far longer than one read: it is built across next_reply() calls.
  constexpr int kListLength = 50000;
  std::vector<std::string> numbers;
  for (int i = 0; i < kListLength; ++i) numbers.push_back(std::to_string(i));
  std::vector<std::string_view> rpush{"RPUSH", "list"};
  rpush.insert(rpush.end(), numbers.begin(), numbers.end());
  c.append(rpush);
  c.append({"LRANGE", "list", "0", "-1"});
  constexpr int kPings = 20000;
  for (int i = 0; i < kPings; ++i) c.append({"ECHO", numbers[i]});

  std::vector<std::string> seen;  // one line per reply, copied before the next is read
  auto describe = [](const redisReply* r) {
    switch (r->type) {
      case REDIS_REPLY_STRING: return "string " + std::to_string(r->len);
      case REDIS_REPLY_STATUS: return "status " + std::string(reply_text(r));
      case REDIS_REPLY_ERROR: return "error " + std::string(reply_text(r)).substr(0, 9);
      case REDIS_REPLY_INTEGER: return "integer " + std::to_string(r->integer);
      case REDIS_REPLY_NIL: return std::string("nil");
      default: return "array " + std::to_string(r->elements);
    }
  };
  const size_t expected = 9 + kPings;
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (seen.size() < expected && std::chrono::steady_clock::now() < deadline) {
    if (c.output_pending()) c.flush();
    pollfd fd = c.poll_entry();
    poll(&fd, 1, 100);
    c.read();
    while (const redisReply* r = c.next_reply()) {
      if (seen.size() == 1) {
        ASSERT_EQ(r->type, REDIS_REPLY_STRING);
        EXPECT_TRUE(reply_text(r) == big) << "the 1 MiB value came back changed";
      }
      if (seen.size() == 6) {  // [[s, [[1-1, [field, value]]]]]
        ASSERT_EQ(r->type, REDIS_REPLY_ARRAY);
        ASSERT_EQ(r->elements, 1u);
        const redisReply* stream = r->element[0];
        ASSERT_EQ(stream->elements, 2u);
        EXPECT_EQ(reply_text(stream->element[0]), "s");
        const redisReply* entry = stream->element[1]->element[0];
        EXPECT_EQ(reply_text(entry->element[0]), "1-1");
        EXPECT_EQ(reply_text(entry->element[1]->element[0]), "field");
        EXPECT_EQ(reply_text(entry->element[1]->element[1]), "value");
      }
      if (seen.size() == 8) {
        ASSERT_EQ(r->type, REDIS_REPLY_ARRAY);
        ASSERT_EQ(r->elements, size_t{kListLength});
        for (int i = 0; i < kListLength; ++i)
          ASSERT_EQ(reply_text(r->element[i]), numbers[i]) << "element " << i;
      }
      if (seen.size() >= 9) {
        EXPECT_EQ(reply_text(r), numbers[seen.size() - 9]) << "replies out of order";
        EXPECT_EQ(r->str[r->len], '\0') << "NUL-terminated, as hiredis's own";
      }
      seen.push_back(describe(r));
    }
  }
  ASSERT_EQ(seen.size(), expected);
  EXPECT_EQ(seen[0], "status OK");
  EXPECT_EQ(seen[1], "string 1048576");
  EXPECT_EQ(seen[2], "nil");
  EXPECT_EQ(seen[3], "integer 41");
  EXPECT_EQ(seen[4], "error WRONGTYPE");
  EXPECT_EQ(seen[5], "string 3");  // the XADD's id
  EXPECT_EQ(seen[6], "array 1");
  EXPECT_EQ(seen[7], "integer " + std::to_string(kListLength));
  EXPECT_EQ(seen[8], "array " + std::to_string(kListLength));
  EXPECT_EQ(c.output_bytes(), 0u);
}

// A closed connection is an error from read(), not a silent stop.
TEST(RedisConnection, ReadOnAClosedConnectionThrows) {
  RedisServer redis;
  REQUIRE_REDIS(redis);
  RedisConnection c(local_endpoint(redis));
  c.append({"QUIT"});
  while (!c.flush()) std::this_thread::sleep_for(1ms);
  bool closed = false;
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!closed && std::chrono::steady_clock::now() < deadline) {
    pollfd fd{c.fd(), POLLIN, 0};
    poll(&fd, 1, 100);
    try {
      c.read();
      while (c.next_reply()) {
      }
    } catch (const std::runtime_error& e) {
      closed = std::string(e.what()).find("connection closed") != std::string::npos;
      ASSERT_TRUE(closed) << e.what();
    }
  }
  EXPECT_TRUE(closed);
}

TEST(Envelope, RoundTripsAndRefusesWhatIsNotVersionOne) {
  std::string bytes;
  encode_envelope({3, 41, 1234567}, bytes_of(std::string("payload")), bytes);
  ASSERT_EQ(bytes.size(), kEnvelopeHeaderBytes + 7);
  std::string why;
  auto d = decode_envelope(bytes_of(bytes), why);
  ASSERT_TRUE(d) << why;
  EXPECT_EQ(d->header.origin, 3);
  EXPECT_EQ(d->header.sequence, 41u);
  EXPECT_EQ(d->header.publish_unix_ns, 1234567u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(d->payload.data()), d->payload.size()),
            "payload");
  auto refused = [&](std::string b, const char* expected) {
    std::string reason;
    EXPECT_FALSE(decode_envelope(bytes_of(b), reason));
    EXPECT_NE(reason.find(expected), std::string::npos) << reason;
  };
  refused(bytes.substr(0, 23), "shorter than its 24-byte header");
  std::string bad = bytes;
  bad[0] = 'X';
  refused(bad, "no envelope magic");
  bad = bytes;
  bad[6] = 1;  // flags
  refused(bad, "flags 1");
  bad = bytes;
  bad[4] = 0;  // origin 0
  bad[5] = 0;
  refused(bad, "origin 0 is not a host id");
}

}  // namespace
}  // namespace shmbus::bridge
