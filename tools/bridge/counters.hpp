// The bridge's counters: bumped by both of its threads, read together for the once-a-period
// report (log, `shmbus stats`) and Bridge::counters(). Relaxed atomics: each is a count of
// its own, and a report one message stale is still a true report of a moment.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>

#include "bridge.hpp"

namespace shmbus::bridge {

struct Counters {
  std::atomic<uint64_t> exported{0}, imported{0}, echoes{0}, duplicates{0}, lost_in_transit{0},
      reconnects{0}, heartbeat_timeouts{0}, subscribe_commands{0}, unsubscribe_commands{0},
      redis_subscriptions{0}, streams_read{0}, queue_depth{0}, queue_bytes{0}, queue_held_bytes{0},
      lag_last{0}, lag_max{0};
  std::atomic<uint64_t> dropped[static_cast<int>(Drop::kCount)] = {};
  std::atomic<bool> connected{false};

  CounterSnapshot snapshot() const;

  // Counts `n` drops for `reason`. True at most once a second per reason, for the caller
  // to log then: a flood of bad input must not become a flood of log lines.
  bool count_drop(Drop reason, uint64_t n);

 private:
  std::array<std::atomic<int64_t>, static_cast<int>(Drop::kCount)> last_drop_log_{};  // ns
};

// The report's JSON: a snapshot, with this host's id and Redis address and the time.
std::string counters_json(const CounterSnapshot& s, uint16_t host_id, const std::string& redis);

// Whether anything a reader of the log would want to see happened between two reports:
// messages moved, dropped, suppressed or lost, the link went up or down or reconnected, or
// the outbound queue changed (it grows, unsent, while Redis is down).
bool changed_since(const CounterSnapshot& before, const CounterSnapshot& now);

}  // namespace shmbus::bridge
