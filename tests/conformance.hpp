// What the Redis conformance suites share: deliveries and their comparison, the script
// alphabets and generator, and the Redis side (hiredis connections to a redis-server the
// test started). Used by conformance_test.cc (the library) and conformance_cli_test.cc
// (the shmbus CLI).
#pragma once

#include <hiredis/hiredis.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "redis_server.hpp"

namespace shmbus::conformance {

// One delivery as a subscriber saw it.
struct Delivery {
  bool pmessage = false;
  std::string pattern, channel, payload;
  uint64_t lost_before = 0;  // shmbus only: not part of the comparison key
  auto key() const { return std::tie(pmessage, pattern, channel, payload); }
  bool operator<(const Delivery& o) const { return key() < o.key(); }
  bool operator==(const Delivery& o) const { return key() == o.key(); }
};

inline std::string show(const std::string& bytes) {
  std::string out;
  for (unsigned char c : bytes) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    }
  }
  return out.size() > 40 ? out.substr(0, 40) + "...(" + std::to_string(bytes.size()) + " B)" : out;
}

inline std::string show(const Delivery& d) {
  return (d.pmessage ? "pmessage " + show(d.pattern) + " " : "message ") + show(d.channel) + " " +
         show(d.payload);
}

// Compares what one subscriber received from Redis and from shmbus: in order, per channel
// and across channels (each payload is unique, so a message's deliveries are grouped by
// payload). Where shmbus lapped a subscriber that Redis kept buffering (a slow
// subscriber, one of the differences on purpose), the messages it skipped must be exactly
// the ones it reported in lost_before, just before the next one it delivered. Returns a
// description of the first difference, or "".
inline std::string compare(const std::vector<Delivery>& redis,
                           const std::vector<Delivery>& shmbus) {
  struct Channel {
    std::vector<std::string> order;  // payloads in order of first delivery
    std::map<std::string, uint64_t> lost_before;
  };
  auto group = [](const std::vector<Delivery>& all) {
    std::map<std::string, Channel> channels;
    std::map<std::string, std::multiset<Delivery>> reasons;  // payload -> its deliveries
    for (const Delivery& d : all) {
      auto& seen = reasons[d.payload];
      if (seen.empty()) {
        channels[d.channel].order.push_back(d.payload);
        channels[d.channel].lost_before[d.payload] = d.lost_before;
      }
      seen.insert(d);
    }
    return std::pair{channels, reasons};
  };
  const auto [redis_channels, redis_reasons] = group(redis);
  const auto [shmbus_channels, shmbus_reasons] = group(shmbus);
  // Across channels: shmbus's messages (those it did not skip) come in Redis's order.
  std::map<std::string, size_t> redis_rank;  // payload -> place of its first delivery
  for (const Delivery& d : redis) redis_rank.emplace(d.payload, redis_rank.size());
  const Delivery* previous = nullptr;
  for (const Delivery& d : shmbus) {
    const auto rank = redis_rank.find(d.payload);
    if (rank == redis_rank.end()) continue;  // reported below
    if (previous != nullptr && previous->payload != d.payload &&
        redis_rank.at(previous->payload) > rank->second)
      return "shmbus delivered " + show(*previous) + " before " + show(d) +
             ", Redis the other way round";
    previous = &d;
  }
  for (const auto& [payload, deliveries] : shmbus_reasons) {
    const auto it = redis_reasons.find(payload);
    if (it == redis_reasons.end())
      return "shmbus delivered " + show(*deliveries.begin()) + ", Redis did not";
    if (it->second != deliveries)
      return "for payload " + show(payload) + " Redis delivered " +
             std::to_string(it->second.size()) + " time(s) (" + show(*it->second.begin()) +
             "), shmbus " + std::to_string(deliveries.size()) + " (" + show(*deliveries.begin()) +
             ")";
  }
  for (const auto& [name, redis_channel] : redis_channels) {
    static const Channel kNone;
    const auto found = shmbus_channels.find(name);
    const Channel& ours = found == shmbus_channels.end() ? kNone : found->second;
    size_t r = 0;
    for (const std::string& payload : ours.order) {
      // Skip what shmbus says it lost just before this one; then it must be Redis's next.
      for (uint64_t lost = ours.lost_before.at(payload); lost > 0; --lost, ++r)
        if (r >= redis_channel.order.size() || redis_channel.order[r] == payload)
          return "on " + show(name) + " shmbus reported more lost than it skipped";
      if (r >= redis_channel.order.size() || redis_channel.order[r] != payload)
        return "on " + show(name) + ", where Redis delivered " +
               (r < redis_channel.order.size() ? show(redis_channel.order[r]) : "nothing") +
               ", shmbus delivered " + show(payload) + " (no loss reported in between)";
      ++r;
    }
    if (r < redis_channel.order.size())
      return "Redis delivered " + show(redis_channel.order[r]) + " on " + show(name) +
             ", shmbus did not (and reported no loss after it)";
  }
  return "";
}

// What the random scripts are made of.
inline const std::vector<std::string> kChannels = {
    "a",     "b",    "ab",   "a*",          "[x]",      "x",          "h?llo", "hello",
    "hallo", "a\\b", "\xff", "caf\xc3\xa9", "news.art", "news.music", "-dash"};
inline const std::vector<std::string> kPatterns = {"*",     "a*",   "?",        "[ab]",  "[^a]*",
                                                   "\\*",   "a\\*", "h[ae]llo", "h?llo", "news.*",
                                                   "[[]x]", "\xff", "[a-c]*",   "*o",    "\\[x\\]"};

struct Script {
  std::mt19937 rng;
  size_t largest;  // the channels' max_message_bytes
  Script(uint32_t seed, size_t largest_message) : rng(seed), largest(largest_message) {}
  size_t below(size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); }
  std::vector<std::string> some(const std::vector<std::string>& from, size_t max) {
    std::vector<std::string> out;
    for (size_t n = 1 + below(max); n > 0; --n) out.push_back(from[below(from.size())]);
    return out;
  }
  // Unique per step, so deliveries of one message can be told apart from another's.
  std::string payload(int step) {
    std::string p = "#" + std::to_string(step) + ":";
    switch (below(6)) {
      case 0: break;                                             // (almost) empty
      case 1: p += std::string("\0\x01\xff\n\r", 5); break;      // binary
      case 2: p += std::string(largest - p.size(), 'x'); break;  // as large as allowed
      default:
        for (size_t n = below(64); n > 0; --n) p += static_cast<char>(below(256));
    }
    return p;
  }
};

// The seeds a suite runs: 1 to `default_last` (or to $`soak_variable`), or
// $SHMBUS_CONFORMANCE_SEED alone.
inline std::pair<uint32_t, uint32_t> seed_range(const char* soak_variable, uint32_t default_last) {
  const char* soak = std::getenv(soak_variable);
  const char* only = std::getenv("SHMBUS_CONFORMANCE_SEED");
  if (only != nullptr)
    return {static_cast<uint32_t>(std::atoi(only)), static_cast<uint32_t>(std::atoi(only))};
  return {1, soak != nullptr ? static_cast<uint32_t>(std::atoi(soak)) : default_last};
}

// The Redis side: one connection per publisher and per subscriber.
class RedisSide {
 public:
  RedisSide(const test::RedisServer& server, int subscribers, int publishers) {
    for (int i = 0; i < subscribers + publishers + 1; ++i) {
      redisContext* c = server.connect();
      if (c == nullptr || c->err != 0) throw std::runtime_error("cannot connect to redis-server");
      const timeval timeout{5, 0};
      redisSetTimeout(c, timeout);
      contexts_.push_back(c);
    }
    subscribers_ = subscribers;
  }
  ~RedisSide() {
    for (redisContext* c : contexts_) redisFree(c);
  }
  redisContext* sub(int i) { return contexts_[static_cast<size_t>(i)]; }
  redisContext* pub(int i) { return contexts_[static_cast<size_t>(subscribers_ + i)]; }
  redisContext* control() { return contexts_.back(); }

  // A command with binary arguments; its reply (owned by the caller).
  static redisReply* command(redisContext* c, const std::string& verb,
                             const std::vector<std::string>& args) {
    std::vector<const char*> argv{verb.c_str()};
    std::vector<size_t> lengths{verb.size()};
    for (const auto& a : args) {
      argv.push_back(a.data());
      lengths.push_back(a.size());
    }
    return static_cast<redisReply*>(
        redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lengths.data()));
  }

  // PUBLISH from publisher i: the receiver count (-1 without a reply).
  long long publish(int i, const std::string& channel, const std::string& payload) {
    return integer(command(pub(i), "PUBLISH", {channel, payload}));
  }
  // PUBSUB CHANNELS [pattern] (none if empty), sorted.
  std::vector<std::string> channels(const std::string& pattern) {
    std::vector<std::string> args{"CHANNELS"};
    if (!pattern.empty()) args.push_back(pattern);
    redisReply* r = command(control(), "PUBSUB", args);
    std::vector<std::string> names;
    for (size_t k = 0; r != nullptr && k < r->elements; ++k)
      names.emplace_back(r->element[k]->str, r->element[k]->len);
    freeReplyObject(r);
    std::sort(names.begin(), names.end());
    return names;
  }
  // PUBSUB NUMSUB: each channel's count, in argument order.
  std::vector<long long> numsub(const std::vector<std::string>& names) {
    std::vector<std::string> args{"NUMSUB"};
    args.insert(args.end(), names.begin(), names.end());
    redisReply* r = command(control(), "PUBSUB", args);
    std::vector<long long> counts;
    for (size_t k = 1; r != nullptr && k < r->elements; k += 2)
      counts.push_back(r->element[k]->integer);
    freeReplyObject(r);
    return counts;
  }
  long long numpat() { return integer(command(control(), "PUBSUB", {"NUMPAT"})); }

  // Sends a subscription change without waiting: its confirmations come in the stream.
  void change(int i, const std::string& verb, const std::vector<std::string>& args) {
    std::vector<const char*> argv{verb.c_str()};
    std::vector<size_t> lengths{verb.size()};
    for (const auto& a : args) {
      argv.push_back(a.data());
      lengths.push_back(a.size());
    }
    redisAppendCommandArgv(sub(i), static_cast<int>(argv.size()), argv.data(), lengths.data());
    int done = 0;
    while (!done) redisBufferWrite(sub(i), &done);
  }

  // Everything subscriber i received until now: a PING (answered in subscribed mode with a
  // "pong") goes after every PUBLISH already answered, so its reply closes the batch.
  std::vector<Delivery> drain(int i) {
    change(i, "PING", {});
    std::vector<Delivery> got;
    for (;;) {
      void* raw = nullptr;
      if (redisGetReply(sub(i), &raw) != REDIS_OK || raw == nullptr)
        throw std::runtime_error("redis subscriber: no reply");
      redisReply* r = static_cast<redisReply*>(raw);
      const std::string kind = r->type == REDIS_REPLY_ARRAY && r->elements > 0
                                   ? std::string(r->element[0]->str, r->element[0]->len)
                               : r->type == REDIS_REPLY_STATUS ? std::string(r->str, r->len)
                                                               : "";
      if (kind == "message" && r->elements == 3) {
        got.push_back({false, "", std::string(r->element[1]->str, r->element[1]->len),
                       std::string(r->element[2]->str, r->element[2]->len)});
      } else if (kind == "pmessage" && r->elements == 4) {
        got.push_back({true, std::string(r->element[1]->str, r->element[1]->len),
                       std::string(r->element[2]->str, r->element[2]->len),
                       std::string(r->element[3]->str, r->element[3]->len)});
      } else if (kind == "pong" || kind == "PONG") {
        freeReplyObject(r);
        return got;
      }
      freeReplyObject(r);  // (un)subscribe confirmations
    }
  }

 private:
  static long long integer(redisReply* r) {
    const long long value = r != nullptr ? r->integer : -1;
    freeReplyObject(r);
    return value;
  }

  std::vector<redisContext*> contexts_;
  int subscribers_ = 0;
};

}  // namespace shmbus::conformance
