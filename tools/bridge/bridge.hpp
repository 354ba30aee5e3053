// shmbus-bridge's core: relays channels between one local bus and one Redis server.
//
// Built as a library so tests run several bridges in-process; main.cpp adds the command line,
// the config file and signals.
//
// Data flow
//   export: a local Subscription psubscribes the [[export]] patterns; each message published
//           on this host (Message::origin == 0) is wrapped (envelope mode) or kept as is (raw)
//           and PUBLISHed (XADDed, durable rules) by the same thread that read it, on the
//           publishing connection it owns; it waits in the outbound queue only while that
//           connection is away or has kMaxInFlight commands unanswered.
//   import: the Redis thread SUBSCRIBEs / PSUBSCRIBEs only what local subscribers want within
//           the [[import]] rules (and XREADs the streams of durable rules: by key for
//           channels subscribed by name, found by SCAN for patterns), checks what arrives,
//           and publishes it locally with Message::origin = the sender's host id.
//
// No echoes, no loops, no duplicates
//   - Locally: imported messages carry a non-zero origin and the exporter skips them, so
//     nothing imported is ever exported again (no loop between bridges, whatever the rules).
//   - From Redis, envelope mode: a message whose envelope names this host is our own export
//     coming back through our subscription, and is dropped (counted as an echo).
//   - From Redis, raw mode (no envelope to read): the bridge remembers a hash of each raw
//     payload it PUBLISHes on a channel its own subscriber connection covers. Redis delivers our
//     own publishes back in the order we sent them, so an arriving payload equal to one we
//     remembered for that channel is our echo and is dropped. Every heartbeat the bridge
//     PUBLISHes (same connection as the exports) is a barrier: when it arrives, any remembered
//     entry sent before it that has not come back never will (the subscription changed
//     meanwhile) and is forgotten. The one case this cannot tell apart: a foreign client
//     publishing exactly the same bytes on the same channel while our own copy was not
//     echoed because a SUBSCRIBE for that channel was in flight; that foreign copy is then
//     taken for our echo.
//   - Redis delivers a message once per matching subscription (SUBSCRIBE chat:1 plus
//     PSUBSCRIBE chat:* gives two copies). The bridge imports exactly one: the channel
//     delivery if it holds the channel, else the delivery of the first of its patterns (in
//     sorted order) that matches. Which subscriptions it holds is tracked from the
//     subscribe/unsubscribe confirmations in the same reply stream as the messages, so this
//     choice agrees with what Redis actually sent, even while subscriptions change.
//
// Threading: two threads, each message handled by one of them from end to end.
//   - The export thread (exporter.hpp) owns the export Subscription, the publishing Redis
//     connection (`pub`: exports and heartbeats, replies read for the in-flight
//     bookkeeping), the outbound queue, and a Bus used to read local interest and publish
//     the counters.
//   - The Redis thread owns the link's life (bridge.cpp: connect with backoff, heartbeat
//     timeout, disconnect), the subscriber connection (pubsub_imports.hpp), the stream
//     connection (durable_streams.hpp), and the Bus that publishes imports
//     (local_imports.hpp). It hands each new `pub` to the export thread, which retires it
//     when the link's generation moves on (bridge_shared.hpp, "The link").
// They share the interest snapshot (under a mutex), the raw-mode echo bookkeeping (under
// another: PUBLISHed on one thread, echoed back on the other), the link hand-off, and the
// counters (atomics): all in BridgeShared (bridge_shared.hpp).
#pragma once

#include <spdlog/logger.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "bridge_config.hpp"
#include "shmbus/bus.hpp"

namespace shmbus::bridge {

// Why a message was not relayed. Every reason is a counter.
enum class Drop : int {
  kQueueFull,        // outbound queue at its limit (Redis down or slow): oldest dropped
  kInFlight,         // sent to Redis when the connection broke; fate unknown (pub/sub)
  kLocalLapped,      // the export subscriber fell a ring behind locally
  kRedisError,       // Redis refused the PUBLISH / XADD
  kOversized,        // payload over max_payload_bytes, or over the local channel's limit
  kCorruptEnvelope,  // not a version-1 envelope on an envelope rule
  kBadChannel,       // channel name outside the prefix, empty or over 1024 bytes
  kNotImported,      // matched a Redis subscription but no [[import]] rule
  kLocalRefused,     // the local bus refused the channel, or a pub/sub import found the
                     // back-pressure ring full (durable imports wait instead)
  kStopped,          // still queued (or an XADD unacknowledged) when the bridge stopped
  kCount,
};
const char* drop_name(Drop reason);

struct CounterSnapshot {
  uint64_t exported = 0;            // messages sent to Redis (PUBLISH / XADD acknowledged)
  uint64_t imported = 0;            // messages published on the local bus from Redis
  uint64_t echoes_suppressed = 0;   // our own exports coming back, not imported
  uint64_t duplicates_dropped = 0;  // durable entries read twice (after a resend)
  uint64_t lost_in_transit = 0;     // envelope sequence gaps: published at the origin, never
                                    // received here (while subscribed)
  uint64_t dropped[static_cast<int>(Drop::kCount)] = {};
  uint64_t reconnects = 0;
  uint64_t heartbeat_timeouts = 0;
  uint64_t subscribe_commands = 0;    // SUBSCRIBE / PSUBSCRIBE / SSUBSCRIBE commands sent
  uint64_t unsubscribe_commands = 0;  // UNSUBSCRIBE / PUNSUBSCRIBE / SUNSUBSCRIBE commands sent
  uint64_t redis_subscriptions = 0;   // channels, patterns and sharded channels held now
  uint64_t streams_read = 0;          // durable streams followed now (read position known)
  uint64_t queue_depth = 0;
  uint64_t queue_bytes = 0;       // keys and bodies queued
  uint64_t queue_held_bytes = 0;  // memory the queue holds for them (its buffers' capacity)
  uint64_t lag_last_ns = 0;       // origin publish -> local publish, last imported envelope
  uint64_t lag_max_ns = 0;        // the largest since the previous stats report
  bool connected = false;
  uint64_t dropped_total() const;
  uint64_t dropped_by(Drop reason) const { return dropped[static_cast<int>(reason)]; }
};

class Bridge {
 public:
  // Validates the config, connects to the local bus (throws shmbus::Error when no daemon
  // answers) and starts both threads. Redis need not be up: the bridge keeps trying.
  Bridge(BridgeConfig config, ConnectOptions local, std::shared_ptr<spdlog::logger> logger);
  ~Bridge();  // stop()
  Bridge(const Bridge&) = delete;
  Bridge& operator=(const Bridge&) = delete;

  // Stops both threads and saves the durable read positions and sequences. Idempotent.
  void stop();

  CounterSnapshot counters() const;
  // The counters as one JSON object, as published on the stats channel.
  std::string counters_json() const;
  // The local channel where the counters are published every stats_interval.
  std::string stats_channel() const;
  // True once the local shmbusd has gone away: the bridge relays nothing more (its owner
  // should stop it and exit, so that a service manager restarts it with the daemon).
  bool local_bus_gone() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace shmbus::bridge
