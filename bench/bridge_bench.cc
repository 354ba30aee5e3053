// bridge_bench: bus A -> shmbus-bridge -> Redis -> shmbus-bridge -> bus B, next to two plain
// publisher/subscriber pairs on the same redis-server, in the same run.
//
//   build/bench/bridge_bench [--messages N] [--runs N] [--samples N] [--payload BYTES]
//                            [--only hiredis|lean|bridged|sharded] [--cluster]
//
// Two bridged paths: classic (a glob rule, PUBLISH / SUBSCRIBE) and sharded
// ([redis] pubsub = "sharded" with exact-channel rules, SPUBLISH / SSUBSCRIBE). --cluster
// starts a 3-primary Redis Cluster and adds three paths through it:
//   - classic, the two bridges on different nodes: what classic pub/sub costs when every
//     PUBLISH is broadcast to every node;
//   - the many-channel pair (issue 17's benchmark): --channels exact channels (default 64)
//     published round-robin, through one Redis (pubsub = "sharded") and through the
//     cluster in cluster mode ([redis] nodes), with each node's SPUBLISH count printed as
//     the load per shard.
//
// Throughput is measured --runs times (default 5) for each path, the paths alternating, so
// a slow spell of the machine falls on all; min, median and max are printed, and the
// ratios are of the medians. --only runs one path (the others' rows print zeros): for a
// profiler, whose record should hold one path alone.
//
// Throughput: N messages published as fast as the path takes them (the local channel is a
// back-pressure one, so nothing is lost before the bridge), counted at the far subscriber.
// Both plain pairs pipeline PUBLISH the way the bridge does (up to 16384 in flight).
// Latency: one message at a time, the next sent when the previous arrived; the payload
// carries CLOCK_MONOTONIC at publish; percentiles of publish -> receive.
//
// Everything runs in this process except redis-server (in-process daemons and bridges):
// on 2 vCPUs every thread competes with Redis itself, as it would on one small host.
#include <poll.h>
#include <spdlog/sinks/null_sink.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "bridge.hpp"
#include "daemon_support.hpp"
#include "redis_cluster.hpp"
#include "redis_connection.hpp"
#include "redis_server.hpp"
#include "shmbus/shmbus.hpp"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

uint64_t now_ns() {
  return static_cast<uint64_t>(Clock::now().time_since_epoch().count());
}

struct Result {
  double messages_per_second = 0;
  uint64_t received = 0;
  double p50_us = 0, p90_us = 0, p99_us = 0;
};

// Arrivals at a path's far end: the rate is of the messages after the first, over the
// span from the first arrival to the last.
struct Arrivals {
  Clock::time_point first{}, last{};
  uint64_t count = 0;
  void arrived() {
    last = Clock::now();
    if (count++ == 0) first = last;
  }
  Result result() const {
    Result r;
    r.received = count;
    const double seconds = std::chrono::duration<double>(last - first).count();
    if (seconds > 0) r.messages_per_second = static_cast<double>(count - 1) / seconds;
    return r;
  }
};

void percentiles(std::vector<uint64_t>& ns, Result& r) {
  if (ns.empty()) return;
  std::sort(ns.begin(), ns.end());
  auto at = [&](double q) {
    return static_cast<double>(ns[static_cast<size_t>(q * (ns.size() - 1))]) / 1e3;
  };
  r.p50_us = at(0.50);
  r.p90_us = at(0.90);
  r.p99_us = at(0.99);
}

std::string stamped(size_t payload) {
  std::string s(std::max<size_t>(payload, 8), 'x');
  const uint64_t t = now_ns();
  std::memcpy(s.data(), &t, 8);
  return s;
}
uint64_t stamp_of(const char* p) {
  uint64_t t;
  std::memcpy(&t, p, 8);
  return t;
}

// ---- plain Redis pairs ----
//
// Two publisher/subscriber pairs on the same redis-server, as a yardstick for the bridge.
// The hiredis pair is an ordinary client: hiredis's formatting, buffers and reply objects,
// as most applications use it. The lean pair uses the bridge's own RedisConnection (its own
// buffers, replies built in an arena), so Redis, not the client's malloc, sets its pace:
// it is the measure of what Redis itself carries, and the one the goal is judged on.

Result hiredis_throughput(const shmbus::test::RedisServer& redis, uint64_t messages,
                          size_t payload) {
  redisContext* sub = redis.connect();
  freeReplyObject(redisCommand(sub, "SUBSCRIBE bench:hiredis"));
  Arrivals arrivals;  // the reader's; read after it joined
  std::thread reader([&] {
    while (arrivals.count < messages) {
      void* reply = nullptr;
      if (redisGetReply(sub, &reply) != REDIS_OK) break;
      freeReplyObject(reply);
      arrivals.arrived();
    }
  });
  redisContext* pub = redis.connect();
  const std::string body(payload, 'p');
  constexpr uint64_t kWindow = 16384;
  uint64_t sent = 0, acked = 0;
  while (acked < messages) {
    while (sent < messages && sent - acked < kWindow) {
      redisAppendCommand(pub, "PUBLISH bench:hiredis %b", body.data(), body.size());
      ++sent;
    }
    void* reply = nullptr;
    if (redisGetReply(pub, &reply) != REDIS_OK) break;
    freeReplyObject(reply);
    ++acked;
  }
  reader.join();
  redisFree(pub);
  redisFree(sub);
  return arrivals.result();
}

Result hiredis_latency(const shmbus::test::RedisServer& redis, int samples, size_t payload) {
  Result result;
  redisContext* sub = redis.connect();
  freeReplyObject(redisCommand(sub, "SUBSCRIBE bench:hiredis:lat"));
  redisContext* pub = redis.connect();
  std::vector<uint64_t> ns;
  for (int i = 0; i < samples; ++i) {
    const std::string body = stamped(payload);
    redisAppendCommand(pub, "PUBLISH bench:hiredis:lat %b", body.data(), body.size());
    int done = 0;
    while (!done) redisBufferWrite(pub, &done);
    redisReply* r = nullptr;
    if (redisGetReply(sub, reinterpret_cast<void**>(&r)) != REDIS_OK) break;
    ns.push_back(now_ns() - stamp_of(r->element[2]->str));
    freeReplyObject(r);
    void* ack = nullptr;
    redisGetReply(pub, &ack);
    freeReplyObject(ack);
    std::this_thread::sleep_for(200us);
  }
  result.received = ns.size();
  percentiles(ns, result);
  redisFree(pub);
  redisFree(sub);
  return result;
}

using shmbus::bridge::RedisConnection;

RedisConnection connect_to(const shmbus::test::RedisServer& redis) {
  shmbus::bridge::RedisEndpoint endpoint;
  endpoint.host = "127.0.0.1";
  endpoint.port = redis.port();
  return RedisConnection(endpoint);
}

// Writes what `c` holds and waits up to `timeout` for the socket to have more to read.
// False when nothing came.
bool exchange(RedisConnection& c, std::chrono::milliseconds timeout) {
  if (c.output_pending()) c.flush();
  pollfd fd = c.poll_entry();
  if (poll(&fd, 1, static_cast<int>(timeout.count())) <= 0) return false;
  c.read();
  return true;
}

// The next reply on `c`, waiting for it up to 2 s; nullptr if none came.
const redisReply* await_reply(RedisConnection& c) {
  const auto deadline = Clock::now() + 2s;
  for (;;) {
    if (const redisReply* r = c.next_reply()) return r;
    if (Clock::now() >= deadline) return nullptr;
    exchange(c, 100ms);
  }
}

Result lean_throughput(const shmbus::test::RedisServer& redis, uint64_t messages, size_t payload) {
  RedisConnection sub = connect_to(redis);
  sub.append({"SUBSCRIBE", "bench:plain"});
  if (!await_reply(sub)) return {};
  Arrivals arrivals;  // the reader's; read after it joined
  std::thread reader([&] {
    while (arrivals.count < messages && exchange(sub, 2000ms))
      while (sub.next_reply()) arrivals.arrived();
  });
  RedisConnection pub = connect_to(redis);
  const std::string body(payload, 'p');
  constexpr uint64_t kWindow = 16384;
  uint64_t sent = 0, acked = 0;
  while (acked < messages) {
    while (sent < messages && sent - acked < kWindow) {
      pub.append({"PUBLISH", "bench:plain", body});
      ++sent;
    }
    if (!exchange(pub, 2000ms)) break;
    while (pub.next_reply()) ++acked;
  }
  reader.join();
  return arrivals.result();
}

Result lean_latency(const shmbus::test::RedisServer& redis, int samples, size_t payload) {
  Result result;
  RedisConnection sub = connect_to(redis);
  sub.append({"SUBSCRIBE", "bench:plain:lat"});
  if (!await_reply(sub)) return result;
  RedisConnection pub = connect_to(redis);
  std::vector<uint64_t> ns;
  for (int i = 0; i < samples; ++i) {
    const std::string body = stamped(payload);
    pub.append({"PUBLISH", "bench:plain:lat", body});
    pub.flush();
    const redisReply* r = await_reply(sub);
    if (r == nullptr || r->elements < 3) break;
    ns.push_back(now_ns() - stamp_of(r->element[2]->str));
    if (!await_reply(pub)) break;
    std::this_thread::sleep_for(200us);
  }
  result.received = ns.size();
  percentiles(ns, result);
  return result;
}

// ---- bridged: bus A -> Redis -> bus B ----

// The channels of the many-channel paths.
std::vector<std::string> many_channels(int n) {
  std::vector<std::string> names;
  for (int i = 0; i < n; ++i) names.push_back("bench:m" + std::to_string(i));
  return names;
}

struct BridgedPair {
  struct Wiring {
    int port_a = 0, port_b = 0;  // bridge 1's Redis, bridge 2's
    bool sharded = false;
    std::vector<shmbus::bridge::RedisNodeAddress> nodes;  // both bridges in cluster mode
    int channels = 0;       // > 0: exact rules for many_channels(channels) and bench:lat
    uint16_t first_id = 1;  // host ids from here
  };
  explicit BridgedPair(const Wiring& w) {
    for (uint16_t id : {1, 2}) {
      shmbus::bridge::BridgeConfig c;
      c.redis_port = id == 1 ? w.port_a : w.port_b;
      c.redis_nodes = w.nodes;
      c.host_id = static_cast<uint16_t>(w.first_id + id - 1);
      c.queue_messages = 10'000'000;
      c.queue_bytes = 1ull << 30;
      c.interest_interval = 20ms;
      c.stats_interval = 60'000ms;
      c.sharded = w.sharded || !w.nodes.empty();
      // Sharded: the bench channels by name (exact-channel rules are the sharded ones).
      std::vector<std::string> patterns = many_channels(w.channels);
      if (w.channels > 0)
        patterns.push_back("bench:lat");
      else if (c.sharded)
        patterns = {"bench:tput", "bench:lat"};
      else
        patterns = {"bench:*"};
      for (const auto& pattern : patterns) {
        c.exports.push_back({pattern, shmbus::bridge::Mode::kEnvelope, false, 0});
        c.imports.push_back({pattern, shmbus::bridge::Mode::kEnvelope, false, 0});
      }
      auto log = std::make_shared<spdlog::logger>("bench",
                                                  std::make_shared<spdlog::sinks::null_sink_mt>());
      bridges.push_back(
          std::make_unique<shmbus::bridge::Bridge>(c, (id == 1 ? a : b).options(), log));
    }
  }
  // Clients may ask for the 16 MiB rings the bench uses.
  static shmbus::daemon::Config daemon_config() {
    shmbus::daemon::Config config = shmbus::test::small_test_config();
    config.defaults.max_ring_bytes = 16 << 20;
    return config;
  }
  shmbus::test::TestDaemon a{daemon_config()}, b{daemon_config()};
  std::vector<std::unique_ptr<shmbus::bridge::Bridge>> bridges;
};

// Publishes probes on `channel` until one reaches `sub` through both bridges (so bridge 2
// follows the channel on Redis), then drains the probes still on their way. Counting the
// bridge's Redis subscriptions instead depends on which earlier ones still linger.
bool path_ready(shmbus::Channel& channel, shmbus::Subscription& sub) {
  const auto deadline = Clock::now() + 10s;
  bool arrived = false;
  while (!arrived && Clock::now() < deadline) {
    channel.publish("probe");
    arrived = sub.next(20ms).has_value();
  }
  while (sub.next(100ms)) {
  }
  return arrived;
}

Result bridged_throughput(BridgedPair& pair, uint64_t messages, size_t payload) {
  // Rings large enough for a burst on both buses: the figure is the path's, not a lapped
  // subscriber's.
  shmbus::ChannelOptions big;
  big.ring_bytes = 16 << 20;
  auto receiving_bus = shmbus::Bus::connect(pair.b.options());
  auto receiving_ring = receiving_bus.channel("bench:tput", big);
  auto sub = shmbus::Subscription::open(pair.b.options());
  sub.subscribe({"bench:tput"});
  auto bus = shmbus::Bus::connect(pair.a.options());
  shmbus::ChannelOptions options;
  options.back_pressure = true;  // the export subscriber is never lapped
  options.ring_bytes = 16 << 20;
  auto channel = bus.channel("bench:tput", options);
  if (!path_ready(channel, sub)) return {};
  std::thread publisher([&] {
    const std::string body(payload, 'b');
    for (uint64_t i = 0; i < messages; ++i) channel.publish(body);
  });
  Arrivals arrivals;
  while (arrivals.count < messages && sub.next(2s)) arrivals.arrived();
  publisher.join();
  return arrivals.result();
}

// The many-channel path: `messages` published round-robin over many_channels(n).
Result many_throughput(BridgedPair& pair, int n, uint64_t messages, size_t payload) {
  const std::vector<std::string> names = many_channels(n);
  shmbus::ChannelOptions big;
  big.ring_bytes = 2 << 20;
  auto receiving_bus = shmbus::Bus::connect(pair.b.options());
  std::vector<shmbus::Channel> receiving_rings;
  for (const auto& name : names) receiving_rings.push_back(receiving_bus.channel(name, big));
  auto sub = shmbus::Subscription::open(pair.b.options());
  sub.psubscribe({"bench:m*"});  // bridge 2 SSUBSCRIBEs each channel by name
  auto bus = shmbus::Bus::connect(pair.a.options());
  shmbus::ChannelOptions options;
  options.back_pressure = true;
  options.ring_bytes = 2 << 20;
  std::vector<shmbus::Channel> channels;
  for (const auto& name : names) channels.push_back(bus.channel(name, options));
  // Ready once a probe came through on every channel.
  std::set<std::string> arrived;
  const auto deadline = Clock::now() + 20s;
  while (arrived.size() < names.size() && Clock::now() < deadline) {
    for (size_t i = 0; i < names.size(); ++i)
      if (!arrived.count(names[i])) channels[i].publish("probe");
    while (auto m = sub.next(20ms)) arrived.insert(std::string(m->channel));
  }
  while (sub.next(200ms)) {
  }
  if (arrived.size() < names.size()) return {};
  std::thread publisher([&] {
    const std::string body(payload, 'b');
    for (uint64_t i = 0; i < messages; ++i) channels[i % channels.size()].publish(body);
  });
  Arrivals arrivals;
  while (arrivals.count < messages && sub.next(2s)) arrivals.arrived();
  publisher.join();
  return arrivals.result();
}

// SPUBLISH calls a node has served (INFO commandstats), or 0.
uint64_t spublish_calls(const shmbus::test::RedisServer& node) {
  redisReply* r = node.command("INFO commandstats");
  uint64_t calls = 0;
  if (r && r->type == REDIS_REPLY_STRING) {
    const std::string text(r->str, r->len);
    const size_t at = text.find("cmdstat_spublish:calls=");
    if (at != std::string::npos) calls = std::stoull(text.substr(at + 23));
  }
  if (r) freeReplyObject(r);
  return calls;
}

Result bridged_latency(BridgedPair& pair, int samples, size_t payload) {
  Result result;
  auto sub = shmbus::Subscription::open(pair.b.options());
  sub.subscribe({"bench:lat"});
  // Sleeps at once, as the plain pair's subscriber blocks in read(): spinning here would
  // hold the CPU that the bridge's export thread, woken by our publish, is placed on.
  sub.set_spin(0ns);
  auto bus = shmbus::Bus::connect(pair.a.options());
  auto channel = bus.channel("bench:lat");
  if (!path_ready(channel, sub)) return result;
  std::vector<uint64_t> ns;
  for (int i = 0; i < samples; ++i) {
    channel.publish(stamped(payload));
    auto m = sub.next(2s);
    if (!m) break;
    ns.push_back(now_ns() - stamp_of(reinterpret_cast<const char*>(m->payload.data())));
    std::this_thread::sleep_for(200us);
  }
  result.received = ns.size();
  percentiles(ns, result);
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t messages = 200'000;
  int samples = 5000;
  size_t payload = 64;
  int runs = 5;
  std::string only;
  bool with_cluster = false;
  int channel_count = 64;
  // --cluster takes no value; the other flags come in pairs.
  std::vector<char*> args(argv, argv + argc);
  if (auto it = std::find_if(args.begin() + 1, args.end(),
                             [](const char* a) { return std::string_view(a) == "--cluster"; });
      it != args.end()) {
    with_cluster = true;
    args.erase(it);
  }
  argc = static_cast<int>(args.size());
  argv = args.data();
  for (int i = 1; i < argc; i += 2) {
    const std::string flag = argv[i];
    const bool has_value = i + 1 < argc;
    if (has_value && flag == "--messages")
      messages = std::stoull(argv[i + 1]);
    else if (has_value && flag == "--samples")
      samples = std::stoi(argv[i + 1]);
    else if (has_value && flag == "--runs")
      runs = std::max(1, std::stoi(argv[i + 1]));
    else if (has_value && flag == "--payload")
      payload = std::stoul(argv[i + 1]);
    else if (has_value && flag == "--channels")
      channel_count = std::max(1, std::stoi(argv[i + 1]));
    else if (has_value && flag == "--only" &&
             (std::string(argv[i + 1]) == "hiredis" || std::string(argv[i + 1]) == "lean" ||
              std::string(argv[i + 1]) == "bridged" || std::string(argv[i + 1]) == "sharded"))
      only = argv[i + 1];
    else {
      std::fprintf(stderr,
                   "usage: %s [--messages N] [--runs N] [--samples N] [--payload BYTES] "
                   "[--only hiredis|lean|bridged|sharded] [--cluster [--channels N]]\n",
                   argv[0]);
      return 2;
    }
  }
  shmbus::test::RedisServer redis;
  if (!redis.ok()) {
    std::fprintf(stderr, "SKIPPED: %s\n", redis.error().c_str());
    return 77;
  }
  const bool hiredis = only.empty() || only == "hiredis";
  const bool lean = only.empty() || only == "lean";
  const bool bridged = only.empty() || only == "bridged";
  const bool sharded = only.empty() || only == "sharded";
  std::optional<BridgedPair> pair, sharded_pair, cluster_pair, many_pair, many_cluster_pair;
  if (bridged) pair.emplace(BridgedPair::Wiring{redis.port(), redis.port(), false, {}, 0, 1});
  if (sharded)
    sharded_pair.emplace(BridgedPair::Wiring{redis.port(), redis.port(), true, {}, 0, 3});
  std::optional<shmbus::test::RedisCluster> cluster;
  if (with_cluster) {
    cluster.emplace(3, 0);
    if (!cluster->ok()) {
      std::fprintf(stderr, "--cluster: %s\n", cluster->error().c_str());
      return cluster->missing().empty() ? 1 : 77;
    }
    cluster_pair.emplace(
        BridgedPair::Wiring{cluster->node(0).port(), cluster->node(1).port(), false, {}, 0, 5});
    many_pair.emplace(BridgedPair::Wiring{redis.port(), redis.port(), true, {}, channel_count, 7});
    std::vector<shmbus::bridge::RedisNodeAddress> seeds;
    for (size_t i = 0; i < cluster->size(); ++i)
      seeds.push_back({"127.0.0.1", cluster->node(i).port()});
    many_cluster_pair.emplace(BridgedPair::Wiring{0, 0, true, seeds, channel_count, 9});
  }
  std::vector<Result> hiredis_t, lean_t, bridged_t, sharded_t, cluster_t, many_t, many_cluster_t;
  for (int r = 0; r < runs; ++r) {
    if (hiredis) hiredis_t.push_back(hiredis_throughput(redis, messages, payload));
    if (lean) lean_t.push_back(lean_throughput(redis, messages, payload));
    // The bridged payload is an envelope: 24 bytes more on the wire than the plain pairs'.
    if (bridged) bridged_t.push_back(bridged_throughput(*pair, messages, payload));
    if (sharded) sharded_t.push_back(bridged_throughput(*sharded_pair, messages, payload));
    if (cluster_pair) cluster_t.push_back(bridged_throughput(*cluster_pair, messages, payload));
    if (many_pair) many_t.push_back(many_throughput(*many_pair, channel_count, messages, payload));
    if (many_cluster_pair)
      many_cluster_t.push_back(
          many_throughput(*many_cluster_pair, channel_count, messages, payload));
  }
  // The load per shard: what each node served of the many-channel runs (and their probes).
  std::vector<uint64_t> shard_load;
  if (cluster)
    for (size_t i = 0; i < cluster->size(); ++i)
      shard_load.push_back(spublish_calls(cluster->node(i)));
  Result hiredis_l, lean_l, bridged_l, sharded_l, cluster_l;
  if (hiredis) hiredis_l = hiredis_latency(redis, samples, payload);
  if (lean) lean_l = lean_latency(redis, samples, payload);
  if (bridged) {
    bridged_l = bridged_latency(*pair, samples, payload);
    for (auto& b : pair->bridges) std::fprintf(stderr, "%s\n", b->counters_json().c_str());
  }
  if (cluster_pair) cluster_l = bridged_latency(*cluster_pair, samples, payload);
  Result many_l, many_cluster_l;
  if (many_pair) many_l = bridged_latency(*many_pair, samples, payload);
  if (many_cluster_pair) {
    many_cluster_l = bridged_latency(*many_cluster_pair, samples, payload);
    for (auto& b : many_cluster_pair->bridges)
      std::fprintf(stderr, "%s\n", b->counters_json().c_str());
  }
  if (sharded) {
    sharded_l = bridged_latency(*sharded_pair, samples, payload);
    for (auto& b : sharded_pair->bridges) std::fprintf(stderr, "%s\n", b->counters_json().c_str());
  }

  struct Spread {
    double min = 0, median = 0, max = 0;
  };
  auto spread = [](const std::vector<Result>& results) {
    std::vector<double> rates;
    for (const auto& r : results) rates.push_back(r.messages_per_second);
    Spread s;
    if (rates.empty()) return s;
    std::sort(rates.begin(), rates.end());
    s.min = rates.front();
    s.max = rates.back();
    const size_t n = rates.size();
    s.median = n % 2 ? rates[n / 2] : (rates[n / 2 - 1] + rates[n / 2]) / 2;
    return s;
  };
  const Spread hiredis_s = spread(hiredis_t), lean_s = spread(lean_t),
               bridged_s = spread(bridged_t), sharded_s = spread(sharded_t),
               cluster_s = spread(cluster_t), many_s = spread(many_t),
               many_cluster_s = spread(many_cluster_t);
  std::printf(
      "%zu-byte payloads, %llu messages per run, %d runs of each path (alternating), "
      "%d latency samples\n",
      payload, static_cast<unsigned long long>(messages), runs, samples);
  std::printf("%-38s %10s %10s %10s %9s %9s %9s\n", "path", "min msg/s", "median", "max", "p50 us",
              "p90 us", "p99 us");
  auto row = [](const char* name, const Spread& t, const Result& l) {
    std::printf("%-38s %10.0f %10.0f %10.0f %9.1f %9.1f %9.1f\n", name, t.min, t.median, t.max,
                l.p50_us, l.p90_us, l.p99_us);
  };
  row("plain pair, hiredis client", hiredis_s, hiredis_l);
  row("plain pair, lean client", lean_s, lean_l);
  row("bus A -> bridge -> Redis -> bus B", bridged_s, bridged_l);
  row("the same, pubsub = \"sharded\"", sharded_s, sharded_l);
  if (cluster_pair) row("classic, via a 3-primary cluster", cluster_s, cluster_l);
  const std::string many_name = std::to_string(channel_count) + " channels, sharded, one Redis";
  const std::string many_cluster_name = std::to_string(channel_count) + " channels, cluster mode";
  if (many_pair) row(many_name.c_str(), many_s, many_l);
  if (many_cluster_pair) row(many_cluster_name.c_str(), many_cluster_s, many_cluster_l);
  auto percent = [](double a, double b) { return b > 0 ? 100.0 * a / b : 0.0; };
  if (lean && bridged) {
    std::printf("bridged / lean pair, run by run:");
    for (int r = 0; r < runs; ++r)
      std::printf(" %.0f %%",
                  percent(bridged_t[r].messages_per_second, lean_t[r].messages_per_second));
    std::printf("\n");
  }
  std::printf(
      "bridged throughput (medians): %.0f %% of the lean pair, %.0f %% of the hiredis "
      "pair\n",
      percent(bridged_s.median, lean_s.median), percent(bridged_s.median, hiredis_s.median));
  std::printf("added p50 latency: %.1f us over the lean pair, %.1f us over the hiredis pair\n",
              bridged_l.p50_us - lean_l.p50_us, bridged_l.p50_us - hiredis_l.p50_us);
  if (bridged && sharded)
    std::printf("sharded / classic bridged throughput (medians): %.0f %%; p50 %.1f us vs %.1f us\n",
                percent(sharded_s.median, bridged_s.median), sharded_l.p50_us, bridged_l.p50_us);
  if (bridged && cluster_pair)
    std::printf(
        "classic bridged through the cluster / through one Redis (medians): %.0f %%; p50 %.1f us "
        "vs %.1f us\n",
        percent(cluster_s.median, bridged_s.median), cluster_l.p50_us, bridged_l.p50_us);
  if (many_pair && many_cluster_pair) {
    std::printf(
        "%d channels: cluster mode / one Redis (medians): %.0f %% (goal: 250 %%); p50 %.1f us vs "
        "%.1f us (%+.1f us)\n",
        channel_count, percent(many_cluster_s.median, many_s.median), many_cluster_l.p50_us,
        many_l.p50_us, many_cluster_l.p50_us - many_l.p50_us);
    std::printf("load per shard, SPUBLISH calls per node (primaries serve them):");
    for (size_t i = 0; i < shard_load.size(); ++i)
      std::printf(" %llu", static_cast<unsigned long long>(shard_load[i]));
    std::printf("\n");
  }
  for (const auto* results :
       {&hiredis_t, &lean_t, &bridged_t, &sharded_t, &cluster_t, &many_t, &many_cluster_t})
    for (const auto& r : *results)
      if (r.received != messages) return 1;  // a run lost messages: no figure to trust
  return 0;
}
