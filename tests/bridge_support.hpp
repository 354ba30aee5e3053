// What the bridge's end-to-end tests share (tests/bridge_test.cc on one redis-server,
// tests/bridge_cluster_test.cc on a Redis Cluster): in-process hosts (a daemon and its
// bridge), short timings, and publishers and collectors that count every message.
#pragma once

#include <gtest/gtest.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "bridge.hpp"
#include "bridge_config.hpp"
#include "daemon_support.hpp"
#include "shmbus/shmbus.hpp"

namespace shmbus::bridge {

using namespace std::chrono_literals;
using test::TestDaemon;

template <typename Pred>
inline bool wait_until(Pred pred, std::chrono::milliseconds timeout = 10s) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return pred();
}

// Bridges log nowhere, unless SHMBUS_TEST_LOG is set (to debug a failing test).
inline std::shared_ptr<spdlog::logger> quiet_logger() {
  if (std::getenv("SHMBUS_TEST_LOG") != nullptr) return spdlog::default_logger();
  return std::make_shared<spdlog::logger>("bridge-test",
                                          std::make_shared<spdlog::sinks::null_sink_mt>());
}

// Short intervals so faults are noticed, and interest followed, within a test's time.
inline BridgeConfig fast_config(int port, uint16_t host_id) {
  BridgeConfig c;
  c.redis_port = port;
  c.host_id = host_id;
  c.interest_interval = 20ms;
  c.unsubscribe_linger = 300ms;
  c.heartbeat_interval = 100ms;
  c.heartbeat_timeout = 1000ms;
  c.backoff_initial = 20ms;
  c.backoff_max = 200ms;
  c.connect_timeout = 200ms;
  c.stats_interval = 200ms;
  c.stream_scan_interval = 100ms;
  return c;
}

// A directory for a bridge's state file, removed when the test ends, failed or not.
// Declared before the Host that writes into it, so the bridge has stopped by then.
struct TempDir {
  explicit TempDir(const std::string& name)
      : path(std::filesystem::temp_directory_path() / (name + "-" + std::to_string(getpid()))) {
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::filesystem::path path;
};

// A bridge's log lines, kept for the test to read.
struct CapturedLog {
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink =
      std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(256);
  std::shared_ptr<spdlog::logger> logger = std::make_shared<spdlog::logger>("captured", sink);
  // The lines containing `needle`.
  size_t count(const std::string& needle) const {
    size_t n = 0;
    for (const auto& line : sink->last_formatted()) n += line.find(needle) != std::string::npos;
    return n;
  }
};

// A bridge of host 1 with pubsub = "sharded" importing `channels` by exact envelope rules
// (the rules the sharded commands carry).
inline BridgeConfig sharded_importer(int port, const std::vector<std::string>& channels) {
  BridgeConfig c = fast_config(port, 1);
  c.sharded = true;
  for (const auto& channel : channels) c.imports.push_back({channel, Mode::kEnvelope, false, 0});
  return c;
}

// The daemon of a test host: clients may ask for rings of up to 16 MiB (lossless_channel).
inline daemon::Config host_daemon_config() {
  daemon::Config config = test::small_test_config();
  config.defaults.max_ring_bytes = 16 << 20;
  return config;
}

// One "host": a daemon on a private bus and its bridge.
struct Host {
  explicit Host(BridgeConfig config, std::shared_ptr<spdlog::logger> logger = quiet_logger()) {
    start(std::move(config), std::move(logger));
  }
  void start(BridgeConfig config, std::shared_ptr<spdlog::logger> logger = quiet_logger()) {
    bridge = std::make_unique<Bridge>(std::move(config), daemon.options(), std::move(logger));
  }
  // Waits until the bridge is connected to Redis.
  bool connected() const {
    return wait_until([&] { return bridge->counters().connected; });
  }
  TestDaemon daemon{host_daemon_config()};
  std::unique_ptr<Bridge> bridge;
};

struct Received {
  std::string channel;
  std::string payload;
  uint16_t origin;
};

// Everything `sub` delivers until nothing comes for `quiet`.
inline std::vector<Received> drain(Subscription& sub, std::chrono::milliseconds quiet = 500ms) {
  std::vector<Received> out;
  while (auto m = sub.next(quiet))
    out.push_back({std::string(m->channel), std::string(m->text()), m->origin});
  return out;
}

// Publishes "0", "1", ... on `channel` at about `rate` per second until `stop`.
struct SteadyPublisher {
  SteadyPublisher(const ConnectOptions& options, std::string channel, int rate)
      : thread([this, options, channel, rate] {
          auto bus = Bus::connect(options);
          auto ch = bus.channel(channel);
          const auto period = std::chrono::microseconds(1'000'000 / rate);
          auto next = std::chrono::steady_clock::now();
          while (!stop) {
            ch.publish(std::to_string(sent));
            ++sent;
            next += period;
            std::this_thread::sleep_until(next);
          }
        }) {}
  ~SteadyPublisher() { finish(); }
  void finish() {
    stop = true;
    if (thread.joinable()) thread.join();
  }
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> sent{0};
  std::thread thread;
};

// Collects the numbers a subscription receives, on its own thread.
struct Collector {
  enum class By { kName, kPattern };
  Collector(const ConnectOptions& options, std::string channel, By by = By::kName)
      : sub(Subscription::open(options)) {
    if (by == By::kName)
      sub.subscribe({channel});
    else
      sub.psubscribe({channel});
    thread = std::thread([this] {
      while (!stop) {
        if (auto m = sub.next(20ms)) {
          std::lock_guard<std::mutex> lock(mutex);
          numbers.push_back(std::stoull(std::string(m->text())));
          lapped += m->lost_before;
        }
      }
    });
  }
  ~Collector() { finish(); }
  void finish() {
    stop = true;
    if (thread.joinable()) thread.join();
  }
  size_t count() {
    std::lock_guard<std::mutex> lock(mutex);
    return numbers.size();
  }
  // Whether the numbers run one by one: none lost, none twice.
  bool consecutive() {
    std::lock_guard<std::mutex> lock(mutex);
    for (size_t i = 1; i < numbers.size(); ++i)
      if (numbers[i] != numbers[i - 1] + 1) return false;
    return true;
  }
  Subscription sub;
  std::atomic<bool> stop{false};
  std::mutex mutex;
  std::vector<uint64_t> numbers;
  uint64_t lapped = 0;  // lost on the local ring (a burst outran this subscriber), as reported
  std::thread thread;
};

// The numbers below `sent` the collector has not received, as runs ("5-9 12-12").
inline std::string missing_runs(Collector& collector, uint64_t sent) {
  std::set<uint64_t> got;
  {
    std::lock_guard<std::mutex> lock(collector.mutex);
    got.insert(collector.numbers.begin(), collector.numbers.end());
  }
  std::string runs;
  for (uint64_t n = 0; n < sent; ++n) {
    if (got.count(n)) continue;
    const uint64_t first = n;
    while (n + 1 < sent && !got.count(n + 1)) ++n;
    runs += std::to_string(first) + "-" + std::to_string(n) + " ";
  }
  return runs;
}

inline void expect_no_duplicates_in_order(const std::vector<uint64_t>& numbers) {
  for (size_t i = 1; i < numbers.size(); ++i)
    ASSERT_LT(numbers[i - 1], numbers[i]) << "duplicate or out of order at " << i;
}

}  // namespace shmbus::bridge
