// The bridge's pub/sub imports: the subscriber connection's SUBSCRIBE / PSUBSCRIBE (and
// SSUBSCRIBE for sharded rules, BridgeConfig::shards), kept
// to the local interest (at once for what became wanted, after unsubscribe_linger for what
// no longer is), and what arrives on it: each message imported once however many of its
// copies Redis sends ("No duplicates" in bridge.hpp), raw echoes of our own exports
// recognised, envelope sequences counted for loss, heartbeats passed to the echo ledger.
//
// Thread safety: the Redis thread only. The subscriptions sent (sent_*) and the echo
// ledger are BridgeShared's, under its echo_mutex.
#pragma once

#include <memory>
#include <span>
#include <vector>

#include "bridge_shared.hpp"
#include "local_imports.hpp"
#include "redis_connection.hpp"

namespace shmbus::bridge {

class PubSubImports {
 public:
  PubSubImports(BridgeShared& shared, LocalImports& imports);
  ~PubSubImports();
  PubSubImports(const PubSubImports&) = delete;
  PubSubImports& operator=(const PubSubImports&) = delete;

  // The link came up with a subscriber connection per shard of `routing` (each subscribed
  // to its shard's heartbeat channel at once), or went down: every subscription sent or
  // confirmed is forgotten, so the next link subscribes to what is wanted then.
  void link_up(std::vector<std::unique_ptr<RedisConnection>> connections,
               std::shared_ptr<const ShardRouting> routing);
  void link_down();
  bool linked() const;
  // By shard; empty while down. A view of the connections held, valid until link_up() or
  // link_down(): the Redis thread polls them on every pass, without building a list.
  std::span<const std::unique_ptr<RedisConnection>> connections() const;

  // The local interest, in Redis names: channels and patterns, and the channels of sharded
  // rules (SSUBSCRIBE).
  void want(const NameSet& channels, const NameSet& patterns, const NameSet& shard_channels);
  // Appends the SUBSCRIBE / UNSUBSCRIBE commands that bring the connection to the interest.
  void apply(Clock::time_point now);
  // A reply on one of the connections. Throws std::runtime_error on an error reply, and
  // on a cluster when Redis ends a sharded subscription by itself (a slot moved).
  void on_reply(const redisReply* reply);
  // Forgets every import route (their local channels are about to close).
  void forget_routes();
  // The highest heartbeat number received on every shard's heartbeat channel.
  uint64_t newest_heartbeat_seen() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace shmbus::bridge
