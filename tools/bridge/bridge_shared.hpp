// What the bridge's two threads share (bridge.cpp wires them): the
// configuration, the log and counters, the stop and wake-up signals, the local interest
// the export thread reads for the Redis thread, the link hand-over between them, and the
// raw-mode echo ledger. Each member says which thread writes it and what guards it.
//
// The export thread's own state is in exporter.hpp; the Redis thread's in
// pubsub_imports.hpp, durable_streams.hpp, local_imports.hpp, and the link's in
// Bridge::Impl (bridge.cpp), which is a BridgeShared.
#pragma once

#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "bridge.hpp"
#include "bridge_config.hpp"
#include "counters.hpp"
#include "echo_ledger.hpp"
#include "glob.hpp"
#include "origin_sequences.hpp"
#include "redis_connection.hpp"
#include "shard_routing.hpp"

namespace shmbus::bridge {

using Clock = std::chrono::steady_clock;

// Redis channel, pattern or stream names; looked up by string_view too.
using NameSet = std::set<std::string, std::less<>>;

// Whether any of `patterns` (Redis globs) matches `name`.
inline bool any_glob_matches(const NameSet& patterns, std::string_view name) {
  return std::any_of(patterns.begin(), patterns.end(),
                     [&](const std::string& p) { return glob_match(p, name); });
}

// What local subscribers want, in Redis names.
struct Interest {
  NameSet channels;         // SUBSCRIBE
  NameSet shard_channels;   // SSUBSCRIBE (BridgeConfig::shards)
  NameSet patterns;         // PSUBSCRIBE
  NameSet streams;          // XREAD (durable rules)
  NameSet stream_patterns;  // SCAN MATCH, then XREAD what it finds (durable rules)
  bool operator==(const Interest&) const = default;
};

inline std::span<const std::byte> bytes_of(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// RedisConnection sends with MSG_NOSIGNAL, but hiredis writes AUTH and SELECT with
// write() while connecting: on a connection Redis closed, that raises SIGPIPE, which
// would kill the whole process. Blocked in the threads that write to Redis, it stays
// pending and write() fails with EPIPE instead, without touching the host program's
// signal handling.
inline void block_sigpipe() {
  sigset_t pipe_signal;
  sigemptyset(&pipe_signal);
  sigaddset(&pipe_signal, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_signal, nullptr);
}

struct BridgeShared {
  // Makes the wake-up descriptor (throws std::system_error) and this run's heartbeat
  // channel (unique per process and run: `nonce` is random).
  BridgeShared(BridgeConfig config_in, std::shared_ptr<spdlog::logger> logger, uint64_t nonce);
  ~BridgeShared();
  BridgeShared(const BridgeShared&) = delete;
  BridgeShared& operator=(const BridgeShared&) = delete;

  const BridgeConfig config;
  const std::shared_ptr<spdlog::logger> log;
  const std::string heartbeat_channel;  // Redis name, under the reserved prefix
  const int wake_fd;                    // wakes the Redis thread's poll(); written by either thread
  std::atomic<bool> stopping{false};
  // Set by either thread when the local daemon is gone: nothing left to relay to or from.
  std::atomic<bool> local_bus_gone{false};

  std::mutex mutex;  // guards interest, interest_generation, interest_read
  Interest interest;
  uint64_t interest_generation = 0;
  bool interest_read = false;  // the export thread has published interest at least once

  // The link: one set of Redis connections per shard (shard_routing.hpp: one on a single
  // server, one per primary on a cluster), shared by the two threads.
  //   - The Redis thread connects (blocking up to connect_timeout per connection, which the
  //     export thread must never do: it would stop draining the local ring) and decides
  //     when the link is dead (a connection fails, heartbeats stop coming back, or the
  //     cluster's topology changed). Every connect and every disconnect bumps
  //     link_generation.
  //   - The publishing connections go to the export thread through `handoff`, set with a
  //     new generation and dropped when the generation moves on (both under link_mutex).
  //     The export thread adopts them and retires them (settling what was in flight on
  //     them) as soon as the generation moves on. The Redis thread bumps the generation
  //     before it clears `connected`, so whoever saw the bridge disconnected sees the
  //     export thread queue from then on.
  //   - A failure the export thread meets on a publishing connection is reported through
  //     failed_generation (and pub_failure); the Redis thread then disconnects the whole
  //     link and reconnects with backoff (rediscovering a cluster), as for a failure of its
  //     own.
  std::atomic<uint64_t> link_generation{0};
  std::atomic<uint64_t> failed_generation{0};
  // The newest heartbeat the export thread put on the link's publishing connections (under
  // link_mutex): heartbeat n goes out on every shard at once. The Redis thread times a link
  // out only on a heartbeat sent on that link that did not come back on every shard: an
  // export thread held up by the local bus sends none, which says nothing about Redis.
  struct HeartbeatSent {
    uint64_t generation = 0;
    uint64_t number = 0;
    Clock::time_point at{};
  };
  HeartbeatSent newest_heartbeat;
  // What the export thread adopts: a publishing connection per shard of `routing`.
  struct LinkHandoff {
    std::vector<std::unique_ptr<RedisConnection>> pubs;
    std::shared_ptr<const ShardRouting> routing;
  };
  std::mutex link_mutex;  // guards handoff, pub_failure, newest_heartbeat, link_generation's writes
  std::unique_ptr<LinkHandoff> handoff;
  std::string pub_failure;
  bool pub_failure_topology = false;  // pub_failure is a topology change (TopologyChanged)

  // Raw-mode echo suppression spans both threads: the export thread remembers a raw payload
  // when it PUBLISHes it on a channel the subscriber connection covers (sent_*, kept by the
  // Redis thread), and the Redis thread recognises and forgets it when it comes back on
  // `sub`. Raw exports are classic PUBLISHes, which travel on shard 0's connection pair,
  // and an entry is forgotten only once a later heartbeat came back on every shard.
  // Remembering happens before the PUBLISH is written, so an echo can never arrive
  // before its entry. echo_mutex guards sent_channels and sent_patterns (written only by the
  // Redis thread, which may read them without it) and raw_echoes.
  std::mutex echo_mutex;
  NameSet sent_channels, sent_patterns;
  EchoLedger raw_echoes;  // guarded by echo_mutex (echo_ledger.hpp)

  Counters counters;  // both threads (counters.hpp)

  void wake() {
    const uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_fd, &one, sizeof one);
  }

  // Counts `n` drops and logs them at most once a second per reason. `detail` is a string,
  // or a callable that builds one: it runs only when the line is logged, so a drop per
  // message (a full queue while Redis is away) builds no string.
  template <typename Detail>
  void drop(Drop reason, uint64_t n, Detail&& detail) {
    if (!counters.count_drop(reason, n)) return;  // logged within the last second
    const auto text = [&]() -> std::string {
      if constexpr (std::is_invocable_v<Detail>)
        return detail();
      else
        return std::string(detail);
    };
    log->warn("dropped {} message(s): {}: {} (total {})", n, drop_name(reason), text(),
              counters.dropped[static_cast<int>(reason)].load());
  }

  CounterSnapshot snapshot() const { return counters.snapshot(); }
  std::string json() const { return json(counters.snapshot()); }
  std::string json(const CounterSnapshot& s) const {
    return bridge::counters_json(s, config.host_id, config.redis_description());
  }

  std::string stats_channel() const {
    return std::string(kStatsChannelPrefix) + std::to_string(config.host_id);
  }

  // Either thread, under echo_mutex (the Redis thread may also call it without).
  bool covered_by_sent(std::string_view channel) const {
    return sent_channels.count(channel) || any_glob_matches(sent_patterns, channel);
  }

  // The local name of a Redis channel or stream key the bridge made (prefix + name).
  std::string_view local_name(std::string_view redis_name) const {
    return redis_name.substr(std::min(redis_name.size(), config.redis_prefix.size()));
  }

  // Notes `name` as unwanted since `now` unless it was already; true (and the note gone)
  // once that has lasted unsubscribe_linger. The caller drops the note of a wanted name.
  bool linger_over(std::unordered_map<std::string, Clock::time_point>& unwanted,
                   const std::string& name, Clock::time_point now) const {
    auto [since, fresh] = unwanted.try_emplace(name, now);
    if (fresh || now - since->second < config.unsubscribe_linger) return false;
    unwanted.erase(since);
    return true;
  }

  // Records a message taken from `origin` (origin_sequences.hpp), counting what it shows
  // lost in transit.
  void record_sequence(OriginSequences& states, SequenceState* last, uint16_t origin,
                       uint64_t sequence, uint64_t publish_unix_ns, bool durable) {
    const LossChange change =
        bridge::record_sequence(states, last, origin, sequence, publish_unix_ns, durable);
    if (change.lost) counters.lost_in_transit.fetch_add(change.lost, std::memory_order_relaxed);
    if (change.found) counters.lost_in_transit.fetch_sub(change.found, std::memory_order_relaxed);
  }
};

}  // namespace shmbus::bridge
