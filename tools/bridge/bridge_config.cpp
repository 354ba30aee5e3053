#include "bridge_config.hpp"

#include <toml++/toml.h>

#include <fstream>
#include <sstream>

#include "byte_size.hpp"  // the same byte sizes as shmbusd.toml
#include "glob.hpp"
#include "naming.hpp"

namespace shmbus::bridge {

const char* mode_name(Mode mode) {
  return mode == Mode::kRaw ? "raw" : "envelope";
}

const Rule* BridgeConfig::first_match(const std::vector<Rule>& rules, std::string_view channel) {
  for (const auto& rule : rules)
    if (glob_match(rule.pattern, channel)) return &rule;
  return nullptr;
}

bool BridgeConfig::shards(const Rule& rule) const {
  return sharded && rule.mode == Mode::kEnvelope && !rule.durable &&
         !glob_has_wildcards(rule.pattern);
}

std::string BridgeConfig::redis_description() const {
  if (!cluster()) return redis_host + ":" + std::to_string(redis_port);
  std::string seeds = "cluster ";
  for (const auto& node : redis_nodes)
    seeds += (seeds.size() > 8 ? "," : "") + node.host + ":" + std::to_string(node.port);
  return seeds;
}

namespace {

constexpr std::string_view kRedisKeys =
    "host, port, nodes, user, password, db, prefix, connect_timeout_ms, pubsub";
constexpr std::string_view kBridgeKeys =
    "host_id, queue_messages, queue_bytes, max_payload_bytes, interest_interval_ms, "
    "unsubscribe_linger_ms, heartbeat_interval_ms, heartbeat_timeout_ms, backoff_initial_ms, "
    "backoff_max_ms, stats_interval_ms, stream_scan_interval_ms, state_file";
constexpr std::string_view kRuleKeys = "pattern, mode, durable, stream_maxlen";
constexpr std::string_view kTables = "[redis], [bridge], [[export]], [[import]]";

class Parser {
 public:
  explicit Parser(std::string_view source) : source_(source) {}

  BridgeConfig parse(std::string_view text) {
    BridgeConfig config;
    config.source = source_;
    toml::table root;
    try {
      root = toml::parse(text, source_);
    } catch (const toml::parse_error& e) {
      const auto& at = e.source().begin;
      throw BridgeConfigError(source_ + ":" + std::to_string(at.line) + ":" +
                              std::to_string(at.column) + ": " + std::string(e.description()));
    }
    for (const auto& [key, node] : root) {
      const std::string name(key.str());
      if (name == "redis") {
        for (const auto& [k, v] : table(key, node)) redis_key(config, k, v);
      } else if (name == "bridge") {
        for (const auto& [k, v] : table(key, node)) bridge_key(config, k, v);
      } else if (name == "export" || name == "import") {
        const toml::array* rules = node.as_array();
        if (rules == nullptr)
          fail(key.source(),
               "'" + name + "' must be an array of tables: write [[" + name + "]] once per rule");
        for (size_t i = 0; i < rules->size(); ++i) {
          const toml::table* t = (*rules)[i].as_table();
          const std::string scope = name + "[" + std::to_string(i + 1) + "]";
          if (t == nullptr) fail((*rules)[i].source(), scope + " must be a table");
          (name == "export" ? config.exports : config.imports).push_back(rule(*t, scope));
        }
      } else {
        fail(key.source(), "unknown table '" + name + "'; known: " + std::string(kTables));
      }
    }
    // With seed nodes, sharded pub/sub is what a cluster is for (docs/CLUSTER.md).
    if (config.cluster() && !pubsub_given_) config.sharded = true;
    try {
      validate_bridge_config(config);
    } catch (const BridgeConfigError& e) {
      throw BridgeConfigError(source_ + ": " + e.what());
    }
    return config;
  }

 private:
  [[noreturn]] void fail(const toml::source_region& where, const std::string& message) const {
    if (where.begin.line == 0) throw BridgeConfigError(source_ + ": " + message);
    throw BridgeConfigError(source_ + ":" + std::to_string(where.begin.line) + ":" +
                            std::to_string(where.begin.column) + ": " + message);
  }

  const toml::table& table(const toml::key& key, const toml::node& node) const {
    if (const toml::table* t = node.as_table()) return *t;
    fail(key.source(), "'" + std::string(key.str()) + "' must be a table: write [" +
                           std::string(key.str()) + "] and its keys below it");
  }

  std::string string(const toml::node& node, const std::string& key) const {
    if (auto v = node.as_string()) return v->get();
    fail(node.source(), key + " must be a string (in quotes)");
  }

  int64_t integer(const toml::node& node, const std::string& key, int64_t min, int64_t max) const {
    const std::string accepted =
        "an integer from " + std::to_string(min) + " to " + std::to_string(max);
    auto v = node.as_integer();
    if (!v) fail(node.source(), key + " must be " + accepted);
    if (v->get() < min || v->get() > max)
      fail(node.source(),
           key + " = " + std::to_string(v->get()) + " is out of range; accepted: " + accepted);
    return v->get();
  }

  std::chrono::milliseconds millis(const toml::node& node, const std::string& key) const {
    return std::chrono::milliseconds(integer(node, key, 1, 3'600'000));
  }

  uint64_t bytes(const toml::node& node, const std::string& key) const {
    constexpr std::string_view forms =
        "write an integer number of bytes or a string with a unit, e.g. \"512B\", \"64KiB\", "
        "\"1 MiB\" (units: B, KiB, MiB, GiB)";
    if (auto v = node.as_integer()) {
      if (v->get() > 0) return static_cast<uint64_t>(v->get());
    } else if (auto s = node.as_string()) {
      bool overflow = false;
      if (auto b = parse_byte_size(s->get(), overflow); b && *b > 0) return *b;
    }
    fail(node.source(), key + " is not a positive byte size; " + std::string(forms));
  }

  void redis_key(BridgeConfig& c, const toml::key& k, const toml::node& v) {
    const std::string key = "redis." + std::string(k.str());
    const std::string_view name = k.str();
    if (name == "host")
      c.redis_host = string(v, key);
    else if (name == "port")
      c.redis_port = static_cast<int>(integer(v, key, 1, 65535));
    else if (name == "nodes")
      c.redis_nodes = nodes(v, key);
    else if (name == "user")
      c.redis_user = string(v, key);
    else if (name == "password")
      c.redis_password = string(v, key);
    else if (name == "db")
      c.redis_db = static_cast<int>(integer(v, key, 0, 65535));
    else if (name == "prefix")
      c.redis_prefix = string(v, key);
    else if (name == "connect_timeout_ms")
      c.connect_timeout = millis(v, key);
    else if (name == "pubsub") {
      const std::string mode = string(v, key);
      if (mode != "classic" && mode != "sharded")
        fail(v.source(),
             key + " = \"" + mode +
                 "\"; accepted: \"classic\" (PUBLISH / SUBSCRIBE) or \"sharded\" "
                 "(SPUBLISH / SSUBSCRIBE for exact-channel envelope rules, Redis >= 7.0)");
      c.sharded = mode == "sharded";
      pubsub_given_ = true;
    } else
      fail(k.source(), "unknown key '" + key + "'; known keys: " + std::string(kRedisKeys));
  }

  // ["host:port", ...], at least one.
  std::vector<RedisNodeAddress> nodes(const toml::node& node, const std::string& key) const {
    constexpr std::string_view form =
        "a list of \"host:port\" strings, the cluster's seed nodes, e.g. nodes = "
        "[\"10.0.0.1:7000\", \"10.0.0.2:7000\"]";
    const toml::array* list = node.as_array();
    if (list == nullptr || list->empty())
      fail(node.source(), key + " must be " + std::string(form));
    std::vector<RedisNodeAddress> out;
    for (const toml::node& item : *list) {
      const auto text = item.as_string();
      const std::string value = text ? text->get() : std::string();
      const size_t colon = value.rfind(':');
      int port = 0;
      if (colon != std::string::npos && colon > 0 && colon + 1 < value.size() &&
          value.size() - colon <= 6 &&
          value.find_first_not_of("0123456789", colon + 1) == std::string::npos)
        port = std::stoi(value.substr(colon + 1));
      if (port < 1 || port > 65535)
        fail(item.source(),
             key + ": '" + value + "' is not host:port; it must be " + std::string(form));
      std::string host = value.substr(0, colon);
      // "[::1]:7000": the brackets only set the address apart from the port.
      if (host.size() > 2 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
      out.push_back({std::move(host), port});
    }
    return out;
  }

  void bridge_key(BridgeConfig& c, const toml::key& k, const toml::node& v) const {
    const std::string key = "bridge." + std::string(k.str());
    const std::string_view name = k.str();
    if (name == "host_id")
      c.host_id = static_cast<uint16_t>(integer(v, key, 1, 65534));
    else if (name == "queue_messages")
      c.queue_messages = static_cast<uint64_t>(integer(v, key, 1, 100'000'000));
    else if (name == "queue_bytes")
      c.queue_bytes = bytes(v, key);
    else if (name == "max_payload_bytes")
      c.max_payload_bytes = bytes(v, key);
    else if (name == "interest_interval_ms")
      c.interest_interval = millis(v, key);
    else if (name == "unsubscribe_linger_ms")
      c.unsubscribe_linger = millis(v, key);
    else if (name == "heartbeat_interval_ms")
      c.heartbeat_interval = millis(v, key);
    else if (name == "heartbeat_timeout_ms")
      c.heartbeat_timeout = millis(v, key);
    else if (name == "backoff_initial_ms")
      c.backoff_initial = millis(v, key);
    else if (name == "backoff_max_ms")
      c.backoff_max = millis(v, key);
    else if (name == "stats_interval_ms")
      c.stats_interval = millis(v, key);
    else if (name == "stream_scan_interval_ms")
      c.stream_scan_interval = millis(v, key);
    else if (name == "state_file")
      c.state_file = string(v, key);
    else
      fail(k.source(), "unknown key '" + key + "'; known keys: " + std::string(kBridgeKeys));
  }

  Rule rule(const toml::table& t, const std::string& scope) const {
    Rule r;
    bool has_pattern = false;
    for (const auto& [k, v] : t) {
      const std::string key = scope + "." + std::string(k.str());
      const std::string_view name = k.str();
      if (name == "pattern") {
        r.pattern = string(v, key);
        has_pattern = true;
      } else if (name == "mode") {
        const std::string mode = string(v, key);
        if (mode == "envelope")
          r.mode = Mode::kEnvelope;
        else if (mode == "raw")
          r.mode = Mode::kRaw;
        else
          fail(v.source(), key + " = \"" + mode + "\"; accepted: \"envelope\" or \"raw\"");
      } else if (name == "durable") {
        auto b = v.as_boolean();
        if (!b) fail(v.source(), key + " must be true or false (without quotes)");
        r.durable = b->get();
      } else if (name == "stream_maxlen") {
        r.stream_maxlen = static_cast<uint64_t>(integer(v, key, 1, 1'000'000'000));
      } else {
        fail(k.source(), "unknown key '" + key + "'; known keys: " + std::string(kRuleKeys));
      }
    }
    if (!has_pattern) fail(t.source(), scope + " needs a pattern, e.g. pattern = \"chat:*\"");
    return r;
  }

  std::string source_;
  bool pubsub_given_ = false;  // [redis] pubsub was written (else: the mode's default)
};

}  // namespace

void validate_bridge_config(const BridgeConfig& c) {
  if (c.host_id == 0 || c.host_id == kUnknownOrigin)
    throw BridgeConfigError(
        "bridge.host_id must be set to a number from 1 to 65534, unique "
        "among the hosts bridged through this Redis");
  if (c.exports.empty() && c.imports.empty())
    throw BridgeConfigError(
        "no [[export]] or [[import]] rule: the bridge would relay nothing; "
        "add e.g. [[export]] pattern = \"chat:*\"");
  bool durable_import = false;
  for (const auto* rules : {&c.exports, &c.imports}) {
    for (const auto& r : *rules) {
      try {
        validate_pattern(r.pattern);
      } catch (const std::exception& e) {
        throw BridgeConfigError("rule pattern '" + r.pattern + "': " + e.what());
      }
      if (r.pattern.starts_with(kReservedPrefix))
        throw BridgeConfigError("rule pattern '" + r.pattern + "' is under the reserved prefix " +
                                std::string(kReservedPrefix) + "; pick another name");
      if (rules == &c.imports && r.durable) durable_import = true;
    }
  }
  if (c.cluster()) {
    if (!c.sharded)
      throw BridgeConfigError(
          "redis.nodes with pubsub = \"classic\": a classic PUBLISH reaches every node of a "
          "cluster, so set redis.host and port to any one node instead, or leave pubsub out "
          "(\"sharded\" is the default with nodes)");
    if (c.redis_db != 0)
      throw BridgeConfigError("redis.db = " + std::to_string(c.redis_db) +
                              " with redis.nodes: a Redis Cluster has database 0 only");
    if (c.redis_prefix.find('{') != std::string::npos)
      throw BridgeConfigError(
          "redis.prefix '" + c.redis_prefix +
          "' holds a '{' with redis.nodes: a hash tag in the prefix would put every channel "
          "in one slot, on one node; pick a prefix without braces");
  }
  if (durable_import && c.state_file.empty())
    throw BridgeConfigError(
        "a durable [[import]] rule needs bridge.state_file, where the bridge "
        "keeps the last stream entry it read so a restart resumes there");
  if (c.heartbeat_timeout <= c.heartbeat_interval)
    throw BridgeConfigError(
        "bridge.heartbeat_timeout_ms must exceed heartbeat_interval_ms, or "
        "every connection would be declared dead");
  if (c.backoff_max < c.backoff_initial)
    throw BridgeConfigError("bridge.backoff_max_ms must be at least backoff_initial_ms");
  if (c.max_payload_bytes > (512ull << 20))
    throw BridgeConfigError(
        "bridge.max_payload_bytes over 512 MiB: Redis refuses larger values "
        "(proto-max-bulk-len)");
  // Sharded and classic pub/sub never meet: a channel exported one way and imported the
  // other would be lost without a trace. Within one file, each channel an exact-channel rule
  // names must be sharded on both sides, whichever rule comes first for it there.
  for (const auto* rules : {&c.exports, &c.imports}) {
    for (const auto& r : *rules) {
      if (!c.shards(r)) continue;
      for (const auto* other : {&c.exports, &c.imports}) {
        const Rule* first = BridgeConfig::first_match(*other, r.pattern);
        if (first == nullptr || c.shards(*first)) continue;
        const bool exported = other == &c.exports;
        throw BridgeConfigError(
            "redis.pubsub = \"sharded\": channel '" + r.pattern + "' would be " +
            (exported ? "exported by [[export]] '" : "imported by [[import]] '") + first->pattern +
            "' with " + (exported ? "PUBLISH" : "SUBSCRIBE") + " but " +
            (exported ? "imported" : "exported") + " by its exact rule with " +
            (exported ? "SSUBSCRIBE" : "SPUBLISH") + ", and the two never meet; add an " +
            (exported ? "[[export]]" : "[[import]]") + " rule for exactly \"" + r.pattern +
            "\" (envelope mode, not durable) before '" + first->pattern +
            "', or use pubsub = \"classic\"");
      }
    }
  }
}

BridgeConfig parse_bridge_config(std::string_view toml_text, std::string_view source_name) {
  return Parser(source_name).parse(toml_text);
}

BridgeConfig load_bridge_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw BridgeConfigError(path + ": cannot open the config file");
  std::ostringstream text;
  text << in.rdbuf();
  if (text.str().size() > (16u << 20))
    throw BridgeConfigError(path + ": over 16 MiB, not a bridge config");
  return parse_bridge_config(text.str(), path);
}

}  // namespace shmbus::bridge
