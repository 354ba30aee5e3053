// Where the bridge's imports go: the local channels the Redis thread publishes what it
// takes from Redis on, opened on first use and kept open (up to kMaxOpenImportChannels),
// the publish that never waits, and the import lag counters.
//
// Thread safety: the Redis thread only. Counters and drops go to BridgeShared.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <unordered_map>

#include "bridge_shared.hpp"
#include "shmbus/bus.hpp"

namespace shmbus::bridge {

// Local channels kept open for importing; past this the cache starts over.
inline constexpr size_t kMaxOpenImportChannels = 4096;

class LocalImports {
 public:
  // Connects to the local bus (throws shmbus::Error if the daemon does not answer).
  // `before_reset` runs before the open channels are closed to make room: whoever holds a
  // Channel* from channel() must let go of it then.
  LocalImports(BridgeShared& shared, const ConnectOptions& local,
               std::function<void()> before_reset);

  // The local channel `name` (opened on first use), or nullptr when shmbusd refuses it
  // (counted as local_refused). Throws shmbus::Error when the daemon is gone.
  Channel* channel(const std::string& name);

  // Publishes an import without waiting. A full back-pressure channel drops the message
  // (counted), unless `can_retry` (the stream still holds it): then it is left to the
  // caller. Too large for the channel: dropped, counted as oversized.
  PublishStatus publish(Channel& channel, std::span<const std::byte> payload, uint16_t origin,
                        bool can_retry = false);

  // An imported message published at `publish_unix_ns` (the origin's clock): the lag
  // counters (last, and the largest since the last report).
  void note_lag(uint64_t publish_unix_ns);

 private:
  BridgeShared& shared_;
  Bus bus_;
  std::function<void()> before_reset_;
  std::unordered_map<std::string, Channel> channels_;  // by local name
};

}  // namespace shmbus::bridge
