// Pattern interest between bridges on a cluster (tools/bridge/pattern_adverts.hpp) without
// Redis: the advertisement's text both ways and every malformed kind refused, what
// RemoteInterest keeps and answers, and where partition channels land.
#include "pattern_adverts.hpp"

#include <gtest/gtest.h>

#include <set>
#include <string>

#include "key_slot.hpp"

namespace shmbus::bridge {
namespace {

using Clock = RemoteInterest::Clock;

TEST(PatternAdverts, RoundTripsAnyBytes) {
  PatternAdvert advert;
  advert.host_id = 7;
  advert.generation = 1234567890123ULL;
  advert.hello = true;
  advert.globs = {std::string("a b\0c", 5), "chat:*", "{room}*", std::string(1024, '\xff')};
  std::sort(advert.globs.begin(), advert.globs.end());
  std::string why;
  const auto back = decode_advert(encode_advert(advert), why);
  ASSERT_TRUE(back.has_value()) << why;
  EXPECT_EQ(*back, advert);
  // No globs at all: a host whose pattern subscribers left.
  advert.globs.clear();
  advert.hello = false;
  EXPECT_EQ(decode_advert(encode_advert(advert), why), advert);
}

TEST(PatternAdverts, SortsAndDeduplicates) {
  std::string why;
  const auto advert = decode_advert("shmbus-interest 1 3 9 0 62 61 62", why);  // b a b
  ASSERT_TRUE(advert.has_value()) << why;
  EXPECT_EQ(advert->globs, (std::vector<std::string>{"a", "b"}));
}

TEST(PatternAdverts, RefusesMalformedAdvertisements) {
  std::string many = "shmbus-interest 1 3 9 0";
  for (size_t i = 0; i <= kMaxAdvertGlobs; ++i) many += " 61";
  const std::string too_long =
      "shmbus-interest 1 3 9 0 " + std::string(2 * (kMaxAdvertGlobBytes + 1), 'a');
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "not a shmbus interest"},
      {"hello 1 3 9 0", "not a shmbus interest"},
      {"shmbus-interest 2 3 9 0", "another version"},
      {"shmbus-interest 1 0 9 0", "host id"},
      {"shmbus-interest 1 65535 9 0", "host id"},
      {"shmbus-interest 1 x 9 0", "host id"},
      {"shmbus-interest 1 3", "generation"},
      {"shmbus-interest 1 3 -9 0", "generation"},
      {"shmbus-interest 1 3 9 2", "hello flag"},
      {"shmbus-interest 1 3 9", "hello flag"},
      {"shmbus-interest 1 3 9 0 6", "hex"},    // odd
      {"shmbus-interest 1 3 9 0 6G", "hex"},   // not hex
      {"shmbus-interest 1 3 9 0 6A", "hex"},   // upper case
      {"shmbus-interest 1 3 9 0  61", "hex"},  // an empty glob between two spaces
      {many, "more than 1024 globs"},
      {too_long, "1 to 1024 bytes"},
  };
  for (const auto& [text, needle] : cases) {
    std::string why;
    EXPECT_FALSE(decode_advert(text, why).has_value()) << text.substr(0, 60);
    EXPECT_NE(why.find(needle), std::string::npos) << text.substr(0, 60) << ": " << why;
  }
}

PatternAdvert advert(uint16_t host, uint64_t generation, std::vector<std::string> globs) {
  return {host, generation, false, std::move(globs)};
}

TEST(RemoteInterest, KeepsOtherHostsNewestGlobs) {
  RemoteInterest remote(1);
  const auto t0 = Clock::now();
  EXPECT_FALSE(remote.take(advert(1, 5, {"*"}), t0));  // our own
  EXPECT_TRUE(remote.empty());
  EXPECT_TRUE(remote.take(advert(2, 5, {"chat:*", "news:*"}), t0));
  EXPECT_TRUE(remote.take(advert(3, 1, {"chat:*"}), t0));
  // The same glob from two hosts is sent once.
  EXPECT_EQ(remote.matching("chat:1"), (std::vector<std::string_view>{"chat:*"}));
  EXPECT_EQ(remote.matching("news:1"), (std::vector<std::string_view>{"news:*"}));
  EXPECT_TRUE(remote.matching("other").empty());
  EXPECT_FALSE(remote.take(advert(2, 4, {"*"}), t0));  // older than what host 2 sent
  EXPECT_TRUE(remote.take(advert(2, 6, {"*"}), t0));   // newer: replaces all of host 2's
  EXPECT_EQ(remote.matching("news:1"), (std::vector<std::string_view>{"*"}));
  EXPECT_EQ(remote.matching("chat:1"), (std::vector<std::string_view>{"*", "chat:*"}));
  EXPECT_EQ(remote.hosts(), 2u);
}

TEST(RemoteInterest, ForgetsHostsNotHeardFrom) {
  RemoteInterest remote(1);
  const auto t0 = Clock::now();
  remote.take(advert(2, 1, {"a*"}), t0);
  remote.take(advert(3, 1, {"b*"}), t0 + std::chrono::seconds(2));
  EXPECT_EQ(remote.matching("a1").size(), 1u);
  // A repeat of the same generation says the host is still there.
  EXPECT_FALSE(remote.take(advert(2, 1, {"a*"}), t0 + std::chrono::seconds(3)));
  remote.expire(t0 + std::chrono::seconds(3));
  EXPECT_EQ(remote.hosts(), 1u);  // host 3, last heard at 2 s
  EXPECT_EQ(remote.matching("a1").size(), 1u);
  EXPECT_TRUE(remote.matching("b1").empty());
  remote.expire(t0 + std::chrono::seconds(10));
  EXPECT_TRUE(remote.empty());
  EXPECT_TRUE(remote.matching("a1").empty());
}

TEST(RemoteInterest, ManyChannelsDoNotGrowWithoutBound) {
  RemoteInterest remote(1);
  remote.take(advert(2, 1, {"c:*"}), Clock::now());
  for (int i = 0; i < 20000; ++i) ASSERT_EQ(remote.matching("c:" + std::to_string(i)).size(), 1u);
  EXPECT_TRUE(remote.matching("d:1").empty());
}

TEST(PatternPartitions, SpreadOverSlotsWhateverTheGlob) {
  for (const std::string& glob :
       std::vector<std::string>{"chat:*", "{room}*", "}{", std::string("\0*", 2)}) {
    std::set<uint16_t> slots;
    for (uint32_t k = 0; k < kPatternPartitions; ++k) {
      const std::string channel = partition_channel("app:", glob, k);
      EXPECT_TRUE(channel.starts_with("app:__shmbus:p:{"));
      // The slot depends on the glob and k only: the prefix is outside the tag.
      EXPECT_EQ(key_slot(channel), key_slot(partition_channel("", glob, k)));
      slots.insert(key_slot(channel));
    }
    EXPECT_GE(slots.size(), kPatternPartitions - 2) << "partitions of one glob share slots";
  }
  for (const char* channel : {"a", "chat:room1", "x{y}z"}) {
    EXPECT_LT(pattern_partition(channel), kPatternPartitions);
    EXPECT_EQ(pattern_partition(channel), key_slot(channel) % kPatternPartitions);
  }
}

}  // namespace
}  // namespace shmbus::bridge
