// shmbusd configuration: a TOML file (see daemon/shmbusd.toml, which documents every key).
//
//   [bus]        arena_bytes, idle_ttl_seconds
//   [defaults]   ring_bytes, max_ring_bytes, max_message_bytes, back_pressure, max_subscribers
//   [limits]     max_shared_memory, max_channels, max_subscriptions_per_client, max_clients,
//                max_connections_per_user, max_channels_per_user, max_shared_memory_per_user,
//                max_unread_reply_bytes, unread_reply_timeout_ms, hello_timeout_ms,
//                slot_return_timeout_ms
//   [[channel]]  pattern + any of the [defaults] keys; the first rule whose pattern matches a
//                channel decides its settings, unset keys inherit [defaults]
//   [[access]]   pattern, publish, subscribe: who may publish to and subscribe to channels
//                matching pattern (user and group names or ids); the first matching rule
//                decides, and a channel no rule matches is open to every client
//
// Byte sizes are an integer or a string with a binary unit: "512B", "64KiB", "1 MiB", "4GiB".
// Everything is validated when the file is read, so the daemon never discovers a bad setting
// at the first publish on some channel: unknown keys and tables are errors (a typo must not
// silently fall back to a default), and every error names the file position, the full key
// (rules are counted from 1 in file order: channel[1] is the first [[channel]] table), what
// is wrong and what is accepted.
//
// Thread safety: parse_config/load_config are reentrant; a Config is a plain value.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace shmbus::daemon {

// Per-channel ring settings after rules are applied.
struct ChannelSettings {
  uint64_t ring_bytes = 64 * 1024;  // data bytes, power of two >= 4096
  // The largest ring a client may ask for when it creates the channel (OPEN_CHANNEL);
  // a client may always ask for up to ring_bytes. 0 or a power of two >= 4096.
  uint64_t max_ring_bytes = 0;
  uint32_t max_message_bytes = 0;  // 0: the largest the ring carries (ring_bytes/2 - 32)
  bool back_pressure = false;
  uint32_t max_subscribers = 16;  // reader slots per ring, 1..65536
  std::string rule = "defaults";  // which rule decided (its pattern) - for error messages

  uint64_t largest_ring_a_client_may_ask() const {
    return max_ring_bytes > ring_bytes ? max_ring_bytes : ring_bytes;
  }

  friend bool operator==(const ChannelSettings&, const ChannelSettings&) = default;
};

struct ChannelRule {    // one [[channel]] table; unset keys inherit [defaults]
  std::string pattern;  // Redis glob (required)
  std::optional<uint64_t> ring_bytes;
  std::optional<uint64_t> max_ring_bytes;
  std::optional<uint32_t> max_message_bytes;
  std::optional<bool> back_pressure;
  std::optional<uint32_t> max_subscribers;

  friend bool operator==(const ChannelRule&, const ChannelRule&) = default;
};

// Who a rule lets in: anyone, a user, or the members of a group.
struct Principal {
  enum class Kind { kAnyone, kUser, kGroup };
  Kind kind = Kind::kAnyone;
  uint32_t id = 0;   // uid or gid
  std::string text;  // as written ("alice", "@orders", "1001", "*"), for messages

  friend bool operator==(const Principal&, const Principal&) = default;
};

// One [[access]] table. Its index + 1 is the channel's access class (0: no rule matched);
// channels of one class share arenas, so the kernel can grant them per class.
struct AccessRule {
  std::string pattern;  // Redis glob (required)
  std::vector<Principal> publish;
  std::vector<Principal> subscribe;

  friend bool operator==(const AccessRule&, const AccessRule&) = default;
};

// A connected client's identity, from its socket (SO_PEERCRED, SO_PEERGROUPS).
struct PeerIdentity {
  uint32_t uid = 0;
  uint32_t gid = 0;
  std::vector<uint32_t> groups;  // supplementary
};

struct Config {
  std::string source = "built-in defaults";  // file path, for messages
  // [bus]
  uint64_t arena_bytes = 256ull << 20;  // virtual size of each shared-memory arena (sparse)
  std::chrono::seconds idle_ttl{60};    // idle channels are reclaimed after this; 0: never
  // [defaults]
  ChannelSettings defaults;
  // [limits]
  uint64_t max_shared_memory = 1ull << 30;  // shared memory the bus may reserve
  uint32_t max_channels = 200000;
  // channels + patterns per subscription connection
  uint32_t max_subscriptions_per_client = 200000;
  uint32_t max_clients = 4096;
  // Per user (uid): connections open plus those closed without goodbye whose processes
  // still run (each keeps its doorbell and a pidfd); 0: max_clients.
  uint32_t max_connections_per_user = 0;
  // Per user: channels its clients created that are still live, and the shared memory
  // they reserve (rings, reader tables, descriptors); 0: only the bus-wide limits.
  uint32_t max_channels_per_user = 0;
  uint64_t max_shared_memory_per_user = 0;
  // Control messages the daemon keeps for a client that has not read them: requests wait
  // while less than a frame is left (the daemon reads no more of them), an event past it
  // closes the connection. At least 2 MiB.
  uint64_t max_unread_reply_bytes = 2ull << 20;
  // A client that leaves its replies unread this long (its socket takes nothing) is closed.
  std::chrono::milliseconds unread_reply_timeout{30000};
  // A connection that has not said HELLO this long after connecting is closed.
  std::chrono::milliseconds hello_timeout{5000};
  // A reader slot a client was told to give back (unsubscribe, detach) and still holds
  // after this is taken back by the daemon.
  std::chrono::milliseconds slot_return_timeout{10000};
  std::vector<ChannelRule> rules;  // first matching rule wins
  std::vector<AccessRule> access;  // first matching rule wins

  // The per-user limits in force (a 0 in the file means the bus-wide limit).
  uint32_t connections_per_user() const {
    return max_connections_per_user != 0 ? max_connections_per_user : max_clients;
  }

  // Settings for `channel`: defaults overridden by the set keys of the first rule whose
  // pattern matches (Redis glob rules, as PSUBSCRIBE). `rule` names the deciding pattern.
  ChannelSettings settings_for(std::string_view channel) const;
  // The access class of `channel`: 1 + the index of the first [[access]] rule whose pattern
  // matches it, or 0 if none does (open to everyone).
  uint32_t access_class_of(std::string_view channel) const;
  // Whether `who` may publish to / subscribe to channels of class `access_class`. Root and
  // the daemon's own user (`daemon_uid`) always may: the kernel lets them read any of the
  // daemon's memory anyway.
  bool may_publish(uint32_t access_class, const PeerIdentity& who, uint32_t daemon_uid) const;
  bool may_subscribe(uint32_t access_class, const PeerIdentity& who, uint32_t daemon_uid) const;

  // Compares every field, `source` included.
  friend bool operator==(const Config&, const Config&) = default;
};

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Parses and validates `toml_text`; `source_name` (usually the file path) prefixes every
// message and becomes Config::source. Throws ConfigError, and nothing else.
Config parse_config(std::string_view toml_text, std::string_view source_name);

// Reads `path` and parses it. Throws ConfigError, and nothing else; an unreadable file's
// message names the path and the system's reason.
Config load_config(const std::string& path);

// Largest message a ring of `ring_bytes` data bytes carries (what max_message_bytes = 0
// means for it). Same rule as the ring itself (RingRef::largest_payload).
uint32_t largest_message_for_ring(uint64_t ring_bytes);

}  // namespace shmbus::daemon
