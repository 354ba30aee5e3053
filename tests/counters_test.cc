// The bridge's counters (tools/bridge/counters.hpp) without Redis: the report shows what
// was counted, and drops are counted every time but logged at most once a second.
#include "counters.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

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
  const auto j = nlohmann::json::parse(c.json(9, "127.0.0.1:6379"));
  EXPECT_EQ(j["host_id"], 9);
  EXPECT_EQ(j["redis"], "127.0.0.1:6379");
  EXPECT_EQ(j["connected"], true);
  EXPECT_EQ(j["exported"], 5);
  EXPECT_EQ(j["lag_last_us"], 2);
  EXPECT_EQ(j["dropped"][drop_name(Drop::kOversized)], 2);
  EXPECT_GT(j["unix_ms"].get<uint64_t>(), 1'600'000'000'000u);
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
