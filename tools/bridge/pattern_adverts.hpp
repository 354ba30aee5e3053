// Pattern interest between bridges on a Redis Cluster (docs/CLUSTER.md, "Patterns"):
// sharded pub/sub has no patterns, so each bridge advertises the Redis globs its local
// pattern subscribers need, and an exporter sends a message that one of another host's
// globs matches once more, to that glob's partition channel, which the host subscribes.
//
//   - An advertisement is one line of text, published on a classic channel: the format
//     word and version, the host id, a generation (newer replaces older), whether it asks
//     the others to advertise at once (a bridge that just started), and the globs in hex
//     (any bytes fit). It comes off the network: decode_advert() checks every field and
//     every limit, and says what was wrong.
//   - RemoteInterest keeps what the other hosts advertised, forgets a host not heard from
//     for a while, and answers, per exported channel, which distinct globs want it.
//   - Partition channels spread one glob's traffic over kPatternPartitions slots: the hash
//     tag holds the glob in hex (a glob's own braces would end the tag) and the partition.
//
// Thread safety: values and a class for one thread (the export thread's).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "string_hash.hpp"

namespace shmbus::bridge {

inline constexpr size_t kMaxAdvertGlobs = 1024;
inline constexpr size_t kMaxAdvertGlobBytes = 1024;
inline constexpr uint32_t kPatternPartitions = 16;

struct PatternAdvert {
  uint16_t host_id = 0;     // 1..65534
  uint64_t generation = 0;  // newer (larger) replaces older from the same host
  bool hello = false;       // asks the other hosts to advertise now
  std::vector<std::string> globs;
  bool operator==(const PatternAdvert&) const = default;
};

std::string encode_advert(const PatternAdvert& advert);
// nullopt, with `why` set, unless `payload` is a well-formed advertisement within the
// limits. The globs come back sorted, each once.
std::optional<PatternAdvert> decode_advert(std::string_view payload, std::string& why);

class RemoteInterest {
 public:
  using Clock = std::chrono::steady_clock;
  explicit RemoteInterest(uint16_t own_host_id) : own_host_id_(own_host_id) {}

  // Takes an advertisement heard at `now`. False if ignored: our own, or not newer than
  // the last one from its host.
  bool take(const PatternAdvert& advert, Clock::time_point now);
  // Forgets the hosts last heard before `before` (a host that stopped or lost Redis).
  void expire(Clock::time_point before);
  // The distinct globs of other hosts that match `channel` (Redis glob rules), each once.
  // The list stays valid until the next take() or expire() that changes anything.
  const std::vector<std::string_view>& matching(std::string_view channel);

  size_t hosts() const { return hosts_.size(); }
  bool empty() const { return globs_.empty(); }

 private:
  struct Host {
    uint64_t generation = 0;
    std::vector<std::string> globs;
    Clock::time_point heard;
  };
  void forget(const Host& host);  // drops its globs' references
  void changed() { matches_.clear(); }

  uint16_t own_host_id_;
  std::map<uint16_t, Host> hosts_;
  std::map<std::string, uint32_t, std::less<>> globs_;  // glob -> hosts advertising it
  // Per channel, what matching() found; cleared on any change, and when it grows past
  // kMaxCachedChannels (an exporter of many channels must not grow it without bound).
  static constexpr size_t kMaxCachedChannels = 4096;
  StringMap<std::vector<std::string_view>> matches_;
};

// The partition of `channel` among a glob's kPatternPartitions channels.
uint32_t pattern_partition(std::string_view channel);
// The shard channel of partition `k` of `glob`, under the bridge's Redis prefix.
std::string partition_channel(std::string_view prefix, std::string_view glob, uint32_t k);

}  // namespace shmbus::bridge
