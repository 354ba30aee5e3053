// Per-channel counters read straight from shared memory: no round trip to the daemon, and
// nothing on the publish path waits for a reader of them.
//
// Thread safety: a StatsReader is used by one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "shmbus/bus.hpp"

namespace shmbus {

struct ChannelStats {
  std::string channel;
  uint64_t published = 0;      // messages published (claimed sequence numbers)
  uint64_t payload_bytes = 0;  // payload bytes published
  uint32_t subscribers = 0;    // subscriptions reading the ring right now
  uint32_t receivers = 0;      // what publish() returns now (channel + pattern matches)
  uint64_t lost = 0;           // messages current subscribers were lapped over
  uint64_t delivered = 0;      // messages current subscribers consumed
  uint64_t last_publish_unix_ns = 0;
  uint64_t ring_bytes = 0;
  uint32_t max_message_bytes = 0;
  bool back_pressure = false;
  uint64_t repaired_frames = 0;  // frames of crashed publishers padded over by the daemon
};

struct BusStats {
  int32_t daemon_pid = 0;
  uint64_t started_unix_ns = 0;
  std::vector<ChannelStats> channels;
};

class SHMBUS_CXX_API StatsReader {
 public:
  // Asks the daemon once which bus it serves, then maps that bus's shared memory
  // read-only; throws Error(kNoDaemon) naming the socket if no daemon answers.
  static StatsReader open(const ConnectOptions& options = {});
  StatsReader(StatsReader&&) noexcept;
  StatsReader& operator=(StatsReader&&) noexcept;
  ~StatsReader();

  const std::string& bus_name() const;

  // A snapshot of every live channel (optionally only those matching a glob pattern).
  BusStats read(std::string_view pattern = {});

 private:
  struct State;
  explicit StatsReader(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace shmbus
