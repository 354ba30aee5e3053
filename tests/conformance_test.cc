// Redis conformance, differential: the same seeded random scripts of SUBSCRIBE, PSUBSCRIBE,
// UNSUBSCRIBE, PUNSUBSCRIBE, PUBLISH and PUBSUB run against a real redis-server (started by
// the test) and against shmbus through the public library, and every answer is compared:
// PUBLISH receiver counts, PUBSUB CHANNELS / NUMSUB / NUMPAT, and each subscriber's
// deliveries (message or pmessage, pattern, channel, payload bytes). Subscription changes
// come while messages are still unread. Names and patterns hold glob metacharacters,
// escapes and bytes >= 0x80; payloads are nearly empty, binary, or as large as the
// channel allows.
//
// Order: each subscriber's messages are compared in order, across all its channels and
// patterns (the script's publishers run one after another, so happens-before orders every
// publish, and Redis and shmbus both deliver in publish order). The pmessages of one
// message for several patterns are compared as a set: Redis sends them in its pattern
// dictionary's order, shmbus in PSUBSCRIBE order.
//
// A slow subscriber is lapped in shmbus where Redis buffers: what it skipped must be what it
// reported in lost_before. The same scripts through the shmbus command:
// conformance_cli_test.cc.
//
//   SHMBUS_CONFORMANCE_SEEDS=500 conformance_test   # a longer soak (default 20 seeds)
//   SHMBUS_CONFORMANCE_SEED=7 conformance_test      # seed 7 alone
//   SHMBUS_CONFORMANCE_TRACE=1 conformance_test     # every step of the scripts, on stderr
#include "conformance.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

#include "daemon_support.hpp"
#include "shmbus/shmbus.hpp"

namespace shmbus {
namespace {

using namespace std::chrono_literals;

using namespace conformance;

std::vector<Delivery> drain(Subscription& sub) {
  std::vector<Delivery> got;
  // What publish() already returned for is in the rings: a few empty looks end the batch.
  for (int empty = 0; empty < 3;) {
    auto m = sub.next(empty == 0 ? 0ns : std::chrono::nanoseconds(2ms));
    if (!m) {
      ++empty;
      continue;
    }
    empty = 0;
    got.push_back({!m->pattern.empty(), std::string(m->pattern), std::string(m->channel),
                   std::string(m->text()), m->lost_before});
  }
  return got;
}

constexpr int kSubscribers = 4;
constexpr int kPublishers = 2;
constexpr int kSteps = 300;

// Runs one seeded script on both; returns the first difference, or "".
std::string run_script(uint32_t seed, const test::RedisServer& server) {
  daemon::Config config = test::small_test_config();
  test::TestDaemon daemon(config, "cf");
  RedisSide redis(server, kSubscribers, kPublishers);
  std::vector<Subscription> subs;
  std::vector<Bus> pubs;
  for (int i = 0; i < kSubscribers; ++i) subs.push_back(Subscription::open(daemon.options()));
  for (int i = 0; i < kPublishers; ++i) pubs.push_back(Bus::connect(daemon.options()));
  std::vector<std::vector<Delivery>> redis_got(kSubscribers), shmbus_got(kSubscribers);
  Script script(seed, pubs[0].channel(kChannels[0]).max_message_bytes());
  auto where = [&](int step, const std::string& what) {
    return "seed " + std::to_string(seed) + ", step " + std::to_string(step) + " (" + what + "): ";
  };
  // Redis's subscribers are read up to a PING's reply before anything is counted, so the
  // server has processed every subscription change sent before (what they read is kept);
  // shmbus's changes are confirmed when the call returns, and its subscribers are read only
  // now and then, so changes come while messages wait unread.
  auto sync_redis = [&] {
    for (int i = 0; i < kSubscribers; ++i) {
      auto r = redis.drain(i);
      redis_got[i].insert(redis_got[i].end(), r.begin(), r.end());
    }
  };
  auto drain_both = [&](int s) {
    auto r = redis.drain(s);
    redis_got[s].insert(redis_got[s].end(), r.begin(), r.end());
    auto m = drain(subs[s]);
    shmbus_got[s].insert(shmbus_got[s].end(), m.begin(), m.end());
  };
  const bool trace = std::getenv("SHMBUS_CONFORMANCE_TRACE") != nullptr;
  for (int step = 0; step < kSteps; ++step) {
    const int s = static_cast<int>(script.below(kSubscribers));
    const size_t op = script.below(20);
    if (trace) std::fprintf(stderr, "step %d: subscriber %d op %zu\n", step, s, op);
    if (op < 3) {
      const auto names = script.some(kChannels, 3);
      if (trace)
        for (auto& n : names) std::fprintf(stderr, "  sub %d SUBSCRIBE %s\n", s, show(n).c_str());
      redis.change(s, "SUBSCRIBE", names);
      subs[s].subscribe(names);
    } else if (op < 5) {
      const auto patterns = script.some(kPatterns, 2);
      if (trace)
        for (auto& n : patterns)
          std::fprintf(stderr, "  sub %d PSUBSCRIBE %s\n", s, show(n).c_str());
      redis.change(s, "PSUBSCRIBE", patterns);
      subs[s].psubscribe(patterns);
    } else if (op < 6) {
      const auto names =
          script.below(4) == 0 ? std::vector<std::string>{} : script.some(kChannels, 2);
      if (trace)
        std::fprintf(stderr, "  sub %d UNSUBSCRIBE %zu names: %s\n", s, names.size(),
                     names.empty() ? "" : show(names[0]).c_str());
      redis.change(s, "UNSUBSCRIBE", names);
      subs[s].unsubscribe(names);
    } else if (op < 7) {
      const auto patterns =
          script.below(4) == 0 ? std::vector<std::string>{} : script.some(kPatterns, 2);
      if (trace)
        std::fprintf(stderr, "  sub %d PUNSUBSCRIBE %zu: %s\n", s, patterns.size(),
                     patterns.empty() ? "" : show(patterns[0]).c_str());
      redis.change(s, "PUNSUBSCRIBE", patterns);
      subs[s].punsubscribe(patterns);
    } else if (op < 16) {
      const int p = static_cast<int>(script.below(kPublishers));
      const std::string channel = kChannels[script.below(kChannels.size())];
      const std::string payload = script.payload(step);
      sync_redis();
      if (trace) std::fprintf(stderr, "  PUBLISH %s #%d\n", show(channel).c_str(), step);
      const long long redis_count = redis.publish(p, channel, payload);
      const uint32_t shmbus_count = pubs[static_cast<size_t>(p)].publish(channel, payload);
      if (redis_count != shmbus_count)
        return where(step, "PUBLISH " + show(channel)) + "Redis counted " +
               std::to_string(redis_count) + " receivers, shmbus " + std::to_string(shmbus_count);
    } else if (op < 18) {
      drain_both(s);
    } else {
      sync_redis();
      const std::string pattern =
          script.below(3) == 0 ? "" : kPatterns[script.below(kPatterns.size())];
      if (redis.channels(pattern) != pubs[0].channels(pattern))
        return where(step, "PUBSUB CHANNELS " + show(pattern)) + "the lists differ";
      const auto redis_numsub = redis.numsub(kChannels);
      const auto numsub = pubs[0].numsub(kChannels);
      for (size_t k = 0; k < kChannels.size(); ++k)
        if (k >= redis_numsub.size() ||
            static_cast<uint64_t>(redis_numsub[k]) != numsub[k].subscribers)
          return where(step, "PUBSUB NUMSUB " + show(kChannels[k])) + "Redis " +
                 (k < redis_numsub.size() ? std::to_string(redis_numsub[k]) : "nothing") +
                 ", shmbus " + std::to_string(numsub[k].subscribers);
      const long long redis_numpat = redis.numpat();
      if (static_cast<uint64_t>(redis_numpat) != pubs[0].numpat())
        return where(step, "PUBSUB NUMPAT") + "Redis " + std::to_string(redis_numpat) +
               ", shmbus " + std::to_string(pubs[0].numpat());
    }
  }
  for (int i = 0; i < kSubscribers; ++i) {
    drain_both(i);
    const std::string difference = compare(redis_got[i], shmbus_got[i]);
    if (!difference.empty())
      return "seed " + std::to_string(seed) + ", subscriber " + std::to_string(i) + ": " +
             difference;
  }
  return "";
}

TEST(Conformance, RandomScriptsAgreeWithRedisServer) {
  test::RedisServer server;
  if (!server.ok()) GTEST_SKIP() << "SKIPPED: " << server.error();
  const auto [first, last] = seed_range("SHMBUS_CONFORMANCE_SEEDS", 20);
  for (uint32_t seed = first; seed <= last; ++seed) {
    const std::string difference = run_script(seed, server);
    ASSERT_EQ(difference, "") << "rerun this seed alone: SHMBUS_CONFORMANCE_SEED=" << seed
                              << " SHMBUS_CONFORMANCE_TRACE=1";
  }
}

}  // namespace
}  // namespace shmbus
