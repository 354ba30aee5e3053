// bridge_bench: bus A -> shmbus-bridge -> Redis -> shmbus-bridge -> bus B, next to a plain
// hiredis publisher/subscriber pair on the same redis-server, in the same run.
//
//   build/bench/bridge_bench [--messages N] [--runs N] [--samples N] [--payload BYTES]
//                            [--only plain|bridged]
//
// Throughput is measured --runs times (default 5) for each path, the two alternating, so
// a slow spell of the machine falls on both; min, median and max are printed, and the
// ratio is of the medians.
// --only runs one of the two paths (the other's row prints zeros): for a profiler, whose
// record should hold one path alone.
//
// Throughput: N messages published as fast as the path takes them (the local channel is a
// back-pressure one, so nothing is lost before the bridge), counted at the far subscriber.
// The plain pair pipelines PUBLISH the way the bridge does (up to 16384 in flight).
// Latency: one message at a time, the next sent when the previous arrived; the payload
// carries CLOCK_MONOTONIC at publish; percentiles of publish -> receive.
//
// Everything runs in this process except redis-server (in-process daemons and bridges):
// on 2 vCPUs every thread competes with Redis itself, as it would on one small host.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/sinks/null_sink.h>

#include "bridge.hpp"
#include "daemon_support.hpp"
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

void percentiles(std::vector<uint64_t>& ns, Result& r) {
  if (ns.empty()) return;
  std::sort(ns.begin(), ns.end());
  auto at = [&](double q) { return static_cast<double>(ns[static_cast<size_t>(q * (ns.size() - 1))]) / 1e3; };
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

// ---- plain Redis pair ----

Result plain_throughput(const shmbus::test::RedisServer& redis, uint64_t messages, size_t payload) {
  Result result;
  redisContext* sub = redis.connect();
  freeReplyObject(redisCommand(sub, "SUBSCRIBE bench:plain"));
  std::atomic<uint64_t> received{0};
  Clock::time_point first{}, last{};
  std::thread reader([&] {
    for (uint64_t i = 0; i < messages; ++i) {
      void* reply = nullptr;
      if (redisGetReply(sub, &reply) != REDIS_OK) break;
      freeReplyObject(reply);
      last = Clock::now();
      if (i == 0) first = last;
      received.store(i + 1, std::memory_order_relaxed);
    }
  });
  redisContext* pub = redis.connect();
  const std::string body(payload, 'p');
  constexpr uint64_t kWindow = 16384;
  uint64_t sent = 0, acked = 0;
  while (acked < messages) {
    while (sent < messages && sent - acked < kWindow) {
      redisAppendCommand(pub, "PUBLISH bench:plain %b", body.data(), body.size());
      ++sent;
    }
    void* reply = nullptr;
    if (redisGetReply(pub, &reply) != REDIS_OK) break;
    freeReplyObject(reply);
    ++acked;
  }
  reader.join();
  result.received = received;
  const double seconds = std::chrono::duration<double>(last - first).count();
  if (seconds > 0) result.messages_per_second = static_cast<double>(result.received - 1) / seconds;
  redisFree(pub);
  redisFree(sub);
  return result;
}

Result plain_latency(const shmbus::test::RedisServer& redis, int samples, size_t payload) {
  Result result;
  redisContext* sub = redis.connect();
  freeReplyObject(redisCommand(sub, "SUBSCRIBE bench:plain:lat"));
  redisContext* pub = redis.connect();
  std::vector<uint64_t> ns;
  for (int i = 0; i < samples; ++i) {
    const std::string body = stamped(payload);
    redisAppendCommand(pub, "PUBLISH bench:plain:lat %b", body.data(), body.size());
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

// ---- bridged: bus A -> Redis -> bus B ----

struct BridgedPair {
  BridgedPair(int port) {
    for (uint16_t id : {1, 2}) {
      shmbus::bridge::BridgeConfig c;
      c.redis_port = port;
      c.host_id = id;
      c.queue_messages = 10'000'000;
      c.queue_bytes = 1ull << 30;
      c.interest_interval = 20ms;
      c.stats_interval = 60'000ms;
      c.exports.push_back({"bench:*", shmbus::bridge::Mode::kEnvelope, false, 0});
      c.imports.push_back({"bench:*", shmbus::bridge::Mode::kEnvelope, false, 0});
      auto log = std::make_shared<spdlog::logger>("bench", std::make_shared<spdlog::sinks::null_sink_mt>());
      bridges.push_back(std::make_unique<shmbus::bridge::Bridge>(
          c, (id == 1 ? a : b).options(), log));
    }
  }
  shmbus::test::TestDaemon a, b;
  std::vector<std::unique_ptr<shmbus::bridge::Bridge>> bridges;
};

bool wait_subscribed(shmbus::bridge::Bridge& bridge, uint64_t n) {
  const auto deadline = Clock::now() + 10s;
  while (Clock::now() < deadline) {
    if (bridge.counters().redis_subscriptions == n) return true;
    std::this_thread::sleep_for(5ms);
  }
  return false;
}

Result bridged_throughput(BridgedPair& pair, uint64_t messages, size_t payload) {
  Result result;
  // Rings large enough for a burst on both buses: the figure is the path's, not a lapped
  // subscriber's.
  shmbus::ChannelOptions big;
  big.ring_bytes = 16 << 20;
  auto receiving_bus = shmbus::Bus::connect(pair.b.options());
  auto receiving_ring = receiving_bus.channel("bench:tput", big);
  auto sub = shmbus::Subscription::open(pair.b.options());
  sub.subscribe({"bench:tput"});
  if (!wait_subscribed(*pair.bridges[1], 2)) return result;
  auto bus = shmbus::Bus::connect(pair.a.options());
  shmbus::ChannelOptions options;
  options.back_pressure = true;  // the export subscriber is never lapped
  options.ring_bytes = 16 << 20;
  auto channel = bus.channel("bench:tput", options);
  std::thread publisher([&] {
    const std::string body(payload, 'b');
    for (uint64_t i = 0; i < messages; ++i) channel.publish(body);
  });
  Clock::time_point first{}, last{};
  while (result.received < messages) {
    auto m = sub.next(2s);
    if (!m) break;
    last = Clock::now();
    if (result.received == 0) first = last;
    ++result.received;
  }
  publisher.join();
  const double seconds = std::chrono::duration<double>(last - first).count();
  if (seconds > 0) result.messages_per_second = static_cast<double>(result.received - 1) / seconds;
  return result;
}

Result bridged_latency(BridgedPair& pair, int samples, size_t payload) {
  Result result;
  auto sub = shmbus::Subscription::open(pair.b.options());
  sub.subscribe({"bench:lat"});
  // Sleeps at once, as the plain pair's subscriber blocks in read(): spinning here would
  // hold the CPU that the bridge's export thread, woken by our publish, is placed on.
  sub.set_spin(0ns);
  if (!wait_subscribed(*pair.bridges[1], 3)) return result;  // heartbeat, tput, lat (lingering)
  auto bus = shmbus::Bus::connect(pair.a.options());
  auto channel = bus.channel("bench:lat");
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
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--messages") messages = std::stoull(argv[i + 1]);
    else if (flag == "--samples") samples = std::stoi(argv[i + 1]);
    else if (flag == "--runs") runs = std::max(1, std::stoi(argv[i + 1]));
    else if (flag == "--payload") payload = std::stoul(argv[i + 1]);
    else if (flag == "--only" && (std::string(argv[i + 1]) == "plain" ||
                                  std::string(argv[i + 1]) == "bridged"))
      only = argv[i + 1];
    else {
      std::fprintf(stderr,
                   "usage: %s [--messages N] [--runs N] [--samples N] [--payload BYTES] "
                   "[--only plain|bridged]\n",
                   argv[0]);
      return 2;
    }
  }
  shmbus::test::RedisServer redis;
  if (!redis.ok()) {
    std::fprintf(stderr, "SKIPPED: %s\n", redis.error().c_str());
    return 77;
  }
  const bool plain = only != "bridged", bridged = only != "plain";
  std::optional<BridgedPair> pair;
  if (bridged) pair.emplace(redis.port());
  std::vector<Result> plain_t, bridged_t;
  for (int r = 0; r < runs; ++r) {
    if (plain) plain_t.push_back(plain_throughput(redis, messages, payload));
    // The bridged payload is an envelope: 24 bytes more on the wire than the plain pair's.
    if (bridged) bridged_t.push_back(bridged_throughput(*pair, messages, payload));
  }
  Result plain_l, bridged_l;
  if (plain) plain_l = plain_latency(redis, samples, payload);
  if (bridged) {
    bridged_l = bridged_latency(*pair, samples, payload);
    for (auto& b : pair->bridges) std::fprintf(stderr, "%s\n", b->counters_json().c_str());
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
  const Spread plain_s = spread(plain_t), bridged_s = spread(bridged_t);
  std::printf("%zu-byte payloads, %llu messages per run, %d runs of each path (alternating), "
              "%d latency samples\n",
              payload, static_cast<unsigned long long>(messages), runs, samples);
  std::printf("%-34s %10s %10s %10s %9s %9s %9s\n", "path", "min msg/s", "median", "max",
              "p50 us", "p90 us", "p99 us");
  auto row = [](const char* name, const Spread& t, const Result& l) {
    std::printf("%-34s %10.0f %10.0f %10.0f %9.1f %9.1f %9.1f\n", name, t.min, t.median, t.max,
                l.p50_us, l.p90_us, l.p99_us);
  };
  row("plain hiredis PUBLISH -> SUBSCRIBE", plain_s, plain_l);
  row("bus A -> bridge -> Redis -> bus B", bridged_s, bridged_l);
  if (plain && bridged) {
    std::printf("bridged / plain, run by run:");
    for (int r = 0; r < runs; ++r)
      std::printf(" %.0f %%", plain_t[r].messages_per_second > 0
                                  ? 100.0 * bridged_t[r].messages_per_second /
                                        plain_t[r].messages_per_second
                                  : 0.0);
    std::printf("\n");
  }
  std::printf("bridged / plain throughput (medians): %.0f %%; added p50 latency: %.1f us\n",
              plain_s.median > 0 ? 100.0 * bridged_s.median / plain_s.median : 0.0,
              bridged_l.p50_us - plain_l.p50_us);
  for (const auto* results : {&plain_t, &bridged_t})
    for (const auto& r : *results)
      if (r.received != messages) return 1;  // a run lost messages: no figure to trust
  return 0;
}
