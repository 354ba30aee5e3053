// shmbus-bridge configuration: a TOML file (tools/bridge/shmbus-bridge.toml documents every
// key).
//
//   [redis]   host, port, nodes, user, password, db, prefix, connect_timeout_ms, pubsub
//   [bridge]  host_id, queue_messages, queue_bytes, max_payload_bytes, interest_interval_ms,
//             unsubscribe_linger_ms, heartbeat_interval_ms, heartbeat_timeout_ms,
//             backoff_initial_ms, backoff_max_ms, stats_interval_ms, stream_scan_interval_ms,
//             state_file
//   [[export]] / [[import]]  pattern, mode ("envelope" | "raw"), durable, stream_maxlen
//
// As with shmbusd.toml, unknown keys are errors and every error names the file position, the
// key, what is wrong and what is accepted.
//
// Thread safety: parse_bridge_config is reentrant; a BridgeConfig is a plain value.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace shmbus::bridge {

enum class Mode {
  kEnvelope,  // origin host id, sequence, publish time, then the payload (envelope.hpp)
  kRaw,       // the payload byte for byte, for plain Redis clients on the same channels
};
const char* mode_name(Mode mode);

struct Rule {
  std::string pattern;  // Redis glob over local channel names
  Mode mode = Mode::kEnvelope;
  bool durable = false;             // through a Redis Stream (XADD / XREAD) instead of PUBLISH
  uint64_t stream_maxlen = 100000;  // XADD MAXLEN ~ N: the retained window of a durable rule
};

// Reserved channels: the bridge neither exports nor imports names under this prefix, and
// publishes its own counters on kStatsChannelPrefix + host id.
inline constexpr std::string_view kReservedPrefix = "__shmbus:";
inline constexpr std::string_view kStatsChannelPrefix = "__shmbus:bridge:";

// Host id used as Message::origin for raw imports, whose real origin is unknown.
inline constexpr uint16_t kUnknownOrigin = 0xffff;

// A Redis Cluster seed node: "host:port" in the file.
struct RedisNodeAddress {
  std::string host;
  int port = 0;
};

struct BridgeConfig {
  std::string source = "built-in defaults";  // file path, for messages
  // [redis]
  std::string redis_host = "127.0.0.1";
  int redis_port = 6379;
  // Seed nodes of a Redis Cluster: non-empty turns cluster mode on (shard_routing.hpp), and
  // host / port are not used.
  std::vector<RedisNodeAddress> redis_nodes;
  std::string redis_user;      // ACL user (Redis 6+); empty: AUTH with the password alone
  std::string redis_password;  // empty: no AUTH
  int redis_db = 0;            // SELECT, for streams; pub/sub ignores databases
  std::string redis_prefix;    // prepended to every Redis channel / stream key
  std::chrono::milliseconds connect_timeout{1000};
  // pubsub = "sharded": exact-channel envelope rules travel by SPUBLISH / SSUBSCRIBE
  // (Redis >= 7.0), the commands Redis Cluster routes to one shard; "classic" (the default)
  // keeps PUBLISH / SUBSCRIBE for all. Every bridge of a deployment must agree.
  bool sharded = false;
  // [bridge]
  uint16_t host_id = 0;  // 1..65534, unique among bridged hosts (required)
  uint64_t queue_messages = 100000;
  uint64_t queue_bytes = 64ull << 20;
  uint64_t max_payload_bytes = 1ull << 20;
  std::chrono::milliseconds interest_interval{100};
  std::chrono::milliseconds unsubscribe_linger{2000};
  std::chrono::milliseconds heartbeat_interval{1000};
  std::chrono::milliseconds heartbeat_timeout{3000};
  std::chrono::milliseconds backoff_initial{100};
  std::chrono::milliseconds backoff_max{5000};
  std::chrono::milliseconds stats_interval{1000};
  // Durable imports for local pattern subscribers: how often Redis is SCANned for the
  // streams the patterns match (a stream is read by key; it cannot be subscribed by pattern).
  std::chrono::milliseconds stream_scan_interval{1000};
  std::string state_file;  // durable read positions and per-origin sequences; required when a
                           // durable import exists
  std::vector<Rule> exports;
  std::vector<Rule> imports;

  // The first rule whose pattern matches `channel`, or nullptr.
  static const Rule* first_match(const std::vector<Rule>& rules, std::string_view channel);
  bool cluster() const { return !redis_nodes.empty(); }
  // "host:port", or "cluster host:port,host:port" for the seeds: for logs and counters.
  std::string redis_description() const;
  // Whether the channels of `rule` travel by the sharded commands: pubsub = "sharded", and
  // the rule names one channel (no glob), in envelope mode (plain Redis clients of raw
  // rules pick their own commands), not durable (streams).
  bool shards(const Rule& rule) const;
};

class BridgeConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Parses and validates `toml_text`; `source_name` prefixes every message. Throws
// BridgeConfigError only.
BridgeConfig parse_bridge_config(std::string_view toml_text, std::string_view source_name);
// Reads and parses a file.
BridgeConfig load_bridge_config(const std::string& path);
// Checks a config built in code (tests): the same rules as the file parser.
void validate_bridge_config(const BridgeConfig& config);

}  // namespace shmbus::bridge
