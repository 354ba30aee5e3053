#include "counters.hpp"

#include <chrono>
#include <nlohmann/json.hpp>

namespace shmbus::bridge {

CounterSnapshot Counters::snapshot() const {
  CounterSnapshot s;
  s.exported = exported;
  s.imported = imported;
  s.echoes_suppressed = echoes;
  s.duplicates_dropped = duplicates;
  s.lost_in_transit = lost_in_transit;
  for (int i = 0; i < static_cast<int>(Drop::kCount); ++i) s.dropped[i] = dropped[i];
  s.reconnects = reconnects;
  s.heartbeat_timeouts = heartbeat_timeouts;
  s.subscribe_commands = subscribe_commands;
  s.unsubscribe_commands = unsubscribe_commands;
  s.redis_subscriptions = redis_subscriptions;
  s.streams_read = streams_read;
  s.queue_depth = queue_depth;
  s.queue_bytes = queue_bytes;
  s.queue_held_bytes = queue_held_bytes;
  s.lag_last_ns = lag_last;
  s.lag_max_ns = lag_max;
  s.connected = connected;
  return s;
}

std::string counters_json(const CounterSnapshot& s, uint16_t host_id, const std::string& redis) {
  nlohmann::json j;
  j["host_id"] = host_id;
  j["redis"] = redis;
  j["connected"] = s.connected;
  j["exported"] = s.exported;
  j["imported"] = s.imported;
  j["echoes_suppressed"] = s.echoes_suppressed;
  j["duplicates_dropped"] = s.duplicates_dropped;
  j["lost_in_transit"] = s.lost_in_transit;
  nlohmann::json by_reason = nlohmann::json::object();
  for (int i = 0; i < static_cast<int>(Drop::kCount); ++i)
    by_reason[drop_name(static_cast<Drop>(i))] = s.dropped[i];
  j["dropped"] = by_reason;
  j["reconnects"] = s.reconnects;
  j["heartbeat_timeouts"] = s.heartbeat_timeouts;
  j["subscribe_commands"] = s.subscribe_commands;
  j["unsubscribe_commands"] = s.unsubscribe_commands;
  j["redis_subscriptions"] = s.redis_subscriptions;
  j["streams_read"] = s.streams_read;
  j["queue_depth"] = s.queue_depth;
  j["queue_bytes"] = s.queue_bytes;
  j["queue_held_bytes"] = s.queue_held_bytes;
  j["lag_last_us"] = s.lag_last_ns / 1000;
  j["lag_max_us"] = s.lag_max_ns / 1000;
  j["unix_ms"] = std::chrono::duration_cast<std::chrono::milliseconds>(
                     std::chrono::system_clock::now().time_since_epoch())
                     .count();
  return j.dump();
}

bool changed_since(const CounterSnapshot& before, const CounterSnapshot& now) {
  for (int i = 0; i < static_cast<int>(Drop::kCount); ++i)
    if (before.dropped[i] != now.dropped[i]) return true;
  return before.exported != now.exported || before.imported != now.imported ||
         before.echoes_suppressed != now.echoes_suppressed ||
         before.duplicates_dropped != now.duplicates_dropped ||
         before.lost_in_transit != now.lost_in_transit || before.reconnects != now.reconnects ||
         before.heartbeat_timeouts != now.heartbeat_timeouts || before.connected != now.connected ||
         before.queue_depth != now.queue_depth;
}

bool Counters::count_drop(Drop reason, uint64_t n) {
  dropped[static_cast<int>(reason)].fetch_add(n, std::memory_order_relaxed);
  const int64_t now = std::chrono::steady_clock::now().time_since_epoch().count();
  auto& last = last_drop_log_[static_cast<int>(reason)];
  int64_t previous = last.load(std::memory_order_relaxed);
  if (now - previous < std::chrono::nanoseconds(std::chrono::seconds(1)).count()) return false;
  // One of the threads that find the second over wins the line.
  return last.compare_exchange_strong(previous, now);
}

}  // namespace shmbus::bridge
