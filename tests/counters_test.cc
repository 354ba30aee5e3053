// The bridge's counters (tools/bridge/counters.hpp) without Redis: the report shows what
// was counted, and drops are counted every time but logged at most once a second.
#include "counters.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace shmbus::bridge {
namespace {

TEST(Counters, TheReportShowsWhatWasCounted) {
  Counters c;
  c.exported += 5;
  c.imported += 3;
  c.connected = true;
  c.lag_last = 2500;
  c.count_drop(Drop::kOversized, 2);
  const CounterSnapshot s = c.snapshot();
  EXPECT_EQ(s.exported, 5u);
  EXPECT_EQ(s.imported, 3u);
  EXPECT_EQ(s.dropped[static_cast<int>(Drop::kOversized)], 2u);
  const auto j = nlohmann::json::parse(counters_json(c.snapshot(), 9, "127.0.0.1:6379"));
  // Every key `shmbus stats` and the log show, no more, no fewer.
  std::vector<std::string> keys;
  for (const auto& [key, value] : j.items()) keys.push_back(key);
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(keys, (std::vector<std::string>{"connected",
                                            "dropped",
                                            "duplicates_dropped",
                                            "echoes_suppressed",
                                            "exported",
                                            "heartbeat_timeouts",
                                            "host_id",
                                            "imported",
                                            "lag_last_us",
                                            "lag_max_us",
                                            "lost_in_transit",
                                            "queue_bytes",
                                            "queue_depth",
                                            "queue_held_bytes",
                                            "reconnects",
                                            "redis",
                                            "redis_subscriptions",
                                            "streams_read",
                                            "subscribe_commands",
                                            "unix_ms",
                                            "unsubscribe_commands"}));
  EXPECT_EQ(j["host_id"], 9);
  EXPECT_EQ(j["redis"], "127.0.0.1:6379");
  EXPECT_EQ(j["connected"], true);
  EXPECT_EQ(j["exported"], 5);
  EXPECT_EQ(j["lag_last_us"], 2);
  EXPECT_EQ(j["dropped"][drop_name(Drop::kOversized)], 2);
  EXPECT_GT(j["unix_ms"].get<uint64_t>(), 1'600'000'000'000u);
}

TEST(Counters, ALineIsWorthInfoWhenAnythingHappened) {
  Counters c;
  const CounterSnapshot idle = c.snapshot();
  EXPECT_FALSE(changed_since(idle, c.snapshot()));
  c.lag_last = 99;  // a gauge of the last message: not news by itself
  EXPECT_FALSE(changed_since(idle, c.snapshot()));
  for (auto bump : {+[](Counters& k) { ++k.exported; }, +[](Counters& k) { ++k.imported; },
                    +[](Counters& k) { ++k.duplicates; }, +[](Counters& k) { ++k.reconnects; },
                    +[](Counters& k) { ++k.queue_depth; }, +[](Counters& k) { k.connected = true; },
                    +[](Counters& k) { k.count_drop(Drop::kRedisError, 1); }}) {
    Counters fresh;
    const CounterSnapshot before = fresh.snapshot();
    bump(fresh);
    EXPECT_TRUE(changed_since(before, fresh.snapshot()));
  }
}

TEST(Counters, DropsAreAllCountedButLoggedAtMostOnceASecondPerReason) {
  Counters c;
  int logged = 0;
  for (int i = 0; i < 1000; ++i) logged += c.count_drop(Drop::kQueueFull, 1);
  EXPECT_EQ(logged, 1);
  EXPECT_TRUE(c.count_drop(Drop::kOversized, 1));  // another reason has its own second
  EXPECT_EQ(c.snapshot().dropped[static_cast<int>(Drop::kQueueFull)], 1000u);
}

}  // namespace
}  // namespace shmbus::bridge
