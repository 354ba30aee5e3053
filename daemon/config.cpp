#include "config.hpp"

#include <grp.h>
#include <pwd.h>
#include <toml++/toml.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <limits>
#include <memory>
#include <sstream>
#include <system_error>
#include <utility>

#include "byte_size.hpp"
#include "glob.hpp"
#include "layout.hpp"
#include "ring.hpp"

namespace shmbus::daemon {
namespace {

constexpr uint64_t kKiB = uint64_t{1} << 10;
constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr uint64_t kTiB = uint64_t{1} << 40;

// The ring's own limits (RingRef::format refuses anything outside them); checking here turns
// a failure at some channel's first publish into an error at startup.
constexpr uint64_t kMinRingBytes = 4096;
constexpr uint64_t kMaxRingBytes = kTiB;
constexpr uint32_t kMaxSubscribers = 65536;
// Ring's cap on one payload (RingRef::largest_payload never exceeds it).
constexpr uint64_t kMaxMessageBytes = 0x7fffffff;
// ShmRef stores offsets in 64-byte units in 32 bits: an arena cannot exceed 256 GiB.
constexpr uint64_t kMinArenaBytes = kMiB;
constexpr uint64_t kMaxArenaBytes = 256 * kGiB;
constexpr uint64_t kMinSharedMemory = kMiB;
constexpr uint32_t kMaxChannels = 16'000'000;
// The control arena holds the directory and a descriptor of the longest name per channel
// (Registry::create_control_arena): max_channels alone keeps it within what a ShmRef
// addresses.
static_assert(layout::kPageSize + layout::directory_bytes(kMaxChannels) +
                  uint64_t{kMaxChannels} * layout::descriptor_bytes(layout::kMaxChannelName) <=
              kMaxArenaBytes);
// A doorbell bit is 24 bits of a ShmRef (layout.hpp), and bit 0 is the control bit.
constexpr int64_t kMaxSubscriptionsPerClient = int64_t{layout::ShmRef::kMaxBit};
// Unread control output kept per client: a frame (1 MiB) must fit above the level at which
// requests wait (Connections).
constexpr uint64_t kMinUnreadReplyBytes = 2 * kMiB;
constexpr uint64_t kMaxUnreadReplyBytes = kGiB;
// Timeouts in [limits]: the daemon looks at them on its 1 s tick, so below 100 ms means
// nothing more; a day is far beyond any useful one.
constexpr int64_t kMinTimeoutMs = 100;
constexpr int64_t kMaxTimeoutMs = 24LL * 3600 * 1000;
// A year is far beyond any useful idle timeout, and keeps `now + ttl` far from overflowing
// any clock's representation; 0 is the way to say "never".
constexpr int64_t kMaxIdleTtlSeconds = 365LL * 24 * 3600;
// A channel name is at most this long (its descriptor holds it), so a longer pattern could
// only ever match names the bus cannot hold.
constexpr size_t kMaxPatternBytes = layout::kMaxChannelName;
// A config file is a few KiB; anything this large is the wrong file (or /dev/zero).
constexpr uint64_t kMaxConfigFileBytes = 16 * kMiB;

constexpr std::string_view kByteSizeForms =
    "write an integer number of bytes or a string with a unit, e.g. \"512B\", \"64KiB\", "
    "\"1 MiB\", \"4GiB\" (units: B, KiB, MiB, GiB)";
constexpr std::string_view kKnownTables = "[bus], [defaults], [limits], [[channel]], [[access]]";
constexpr std::string_view kAccessKeys = "pattern, publish, subscribe";
constexpr std::string_view kPrincipalForms =
    "a user name or uid (\"alice\", \"1001\"), a group name or gid after @ (\"@orders\", "
    "\"@1002\"), or \"*\" for everyone";
constexpr std::string_view kBusKeys = "arena_bytes, idle_ttl_seconds";
constexpr std::string_view kRingKeys =
    "ring_bytes, max_ring_bytes, max_message_bytes, back_pressure, max_subscribers";
constexpr std::string_view kRuleKeys =
    "pattern, ring_bytes, max_ring_bytes, max_message_bytes, back_pressure, max_subscribers";
constexpr std::string_view kLimitsKeys =
    "max_shared_memory, max_channels, max_subscriptions_per_client, max_clients, "
    "max_connections_per_user, max_channels_per_user, max_shared_memory_per_user, "
    "max_unread_reply_bytes, unread_reply_timeout_ms, hello_timeout_ms, slot_return_timeout_ms";

// "64 KiB" when exact in a binary unit, else "65535 bytes": suggestions read like the
// values a user would write.
std::string format_bytes(uint64_t bytes) {
  if (bytes != 0) {
    for (const auto& [unit, name] : {std::pair{kTiB, "TiB"}, std::pair{kGiB, "GiB"},
                                     std::pair{kMiB, "MiB"}, std::pair{kKiB, "KiB"}}) {
      if (bytes % unit == 0) return std::to_string(bytes / unit) + " " + name;
    }
  }
  return std::to_string(bytes) + " bytes";
}

// "379 GiB" for sizes far from any round number.
std::string gib_rounded_up(uint64_t bytes) {
  return std::to_string((bytes + kGiB - 1) / kGiB) + " GiB";
}

std::string type_name(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    case toml::node_type::none: break;
  }
  return "nothing";
}

// `text` between `mark`s, shortened and made printable so a message stays one short line.
std::string quote(std::string_view text, char mark = '"') {
  constexpr size_t kShown = 80;  // enough to recognise a value
  std::string out(1, mark);
  for (char c : text.substr(0, kShown)) {
    if (c == mark || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      out += '?';  // keep the message on one line
    } else {
      out += c;
    }
  }
  if (text.size() > kShown) out += "...";
  return out + mark;
}

// The value as the user wrote it (near enough), for "key = value must ..." messages.
std::string render(const toml::node& node) {
  if (auto v = node.as_integer()) return std::to_string(v->get());
  if (auto v = node.as_string()) return quote(v->get());
  if (auto v = node.as_boolean()) return v->get() ? "true" : "false";
  if (auto v = node.as_floating_point()) {
    std::ostringstream out;
    out << v->get();
    return out.str();
  }
  return type_name(node);
}

// Where each ring key of [defaults] or one [[channel]] was written, so cross-checks done
// after the whole file is read still point at the right line.
struct RingKeys {
  std::optional<uint64_t> ring_bytes;
  std::optional<uint64_t> max_ring_bytes;
  std::optional<uint32_t> max_message_bytes;
  std::optional<bool> back_pressure;
  std::optional<uint32_t> max_subscribers;
  // toml::source_position has no initialisers: {} makes an unset one read as line 0.
  toml::source_region table_at{}, ring_at{}, max_ring_at{}, message_at{}, subscribers_at{};
};

class Parser {
 public:
  explicit Parser(std::string_view source) : source_(source) {}

  Config parse(std::string_view text) {
    toml::table root;
    try {
      root = toml::parse(text, source_);
    } catch (const toml::parse_error& e) {
      fail(e.source(), "TOML syntax error: " + std::string(e.description()));
    }
    Config config;
    config.source = source_;
    RingKeys defaults;
    std::vector<RingKeys> rule_keys;
    for (const auto& [key, node] : in_file_order(root)) {
      const std::string name(key->str());
      if (name == "bus") {
        parse_bus(require_table(*key, *node, "[bus]"), config);
      } else if (name == "defaults") {
        const toml::table& table = require_table(*key, *node, "[defaults]");
        defaults.table_at = table.source();
        parse_ring_table(table, "defaults", kRingKeys, defaults, nullptr);
      } else if (name == "limits") {
        parse_limits(require_table(*key, *node, "[limits]"), config);
      } else if (name == "channel") {
        const toml::array* rules = node->as_array();
        if (!rules)
          fail(key->source(),
               "'channel' must be an array of tables: write [[channel]] (two "
               "brackets) once per rule, found " +
                   type_name(*node));
        for (size_t i = 0; i < rules->size(); ++i) {
          const std::string scope = "channel[" + std::to_string(i + 1) + "]";
          const toml::table* table = (*rules)[i].as_table();
          if (!table)
            fail((*rules)[i].source(), scope + " must be a table of keys (" +
                                           std::string(kRuleKeys) + "), found " +
                                           type_name((*rules)[i]));
          RingKeys keys;
          keys.table_at = table->source();
          ChannelRule rule;
          parse_ring_table(*table, scope, kRuleKeys, keys, &rule);
          rule.ring_bytes = keys.ring_bytes;
          rule.max_ring_bytes = keys.max_ring_bytes;
          rule.max_message_bytes = keys.max_message_bytes;
          rule.back_pressure = keys.back_pressure;
          rule.max_subscribers = keys.max_subscribers;
          config.rules.push_back(std::move(rule));
          rule_keys.push_back(std::move(keys));
        }
      } else if (name == "access") {
        const toml::array* rules = node->as_array();
        if (!rules)
          fail(key->source(),
               "'access' must be an array of tables: write [[access]] (two brackets) once per "
               "rule, found " +
                   type_name(*node));
        for (size_t i = 0; i < rules->size(); ++i) {
          const std::string scope = "access[" + std::to_string(i + 1) + "]";
          const toml::table* table = (*rules)[i].as_table();
          if (!table)
            fail((*rules)[i].source(), scope + " must be a table of keys (" +
                                           std::string(kAccessKeys) + "), found " +
                                           type_name((*rules)[i]));
          config.access.push_back(parse_access(*table, scope));
          for (size_t j = 0; j + 1 < config.access.size(); ++j)
            if (config.access[j].pattern == config.access.back().pattern)
              fail(table->source(), scope + ".pattern " + quote(config.access.back().pattern) +
                                        " repeats access[" + std::to_string(j + 1) +
                                        "]'s; the first matching rule wins, so this rule would "
                                        "never apply; merge the two rules");
        }
      } else {
        fail(key->source(), std::string(node->is_table() ? "unknown table '" : "unknown key '") +
                                name + "'; known tables: " + std::string(kKnownTables));
      }
    }
    ChannelSettings& d = config.defaults;
    if (defaults.ring_bytes) d.ring_bytes = *defaults.ring_bytes;
    if (defaults.max_ring_bytes) d.max_ring_bytes = *defaults.max_ring_bytes;
    if (defaults.max_message_bytes) d.max_message_bytes = *defaults.max_message_bytes;
    if (defaults.back_pressure) d.back_pressure = *defaults.back_pressure;
    if (defaults.max_subscribers) d.max_subscribers = *defaults.max_subscribers;

    check_ring(config, defaults, nullptr, 0);
    for (size_t i = 0; i < config.rules.size(); ++i) {
      check_duplicate_pattern(config, i);
      check_ring(config, rule_keys[i], &config.rules[i], i + 1);
    }
    check_arenas(config);
    return config;
  }

 private:
  using Entry = std::pair<const toml::key*, const toml::node*>;

  // toml::table is ordered by key name; walking it in file order makes the first error
  // reported the first one in the file.
  static std::vector<Entry> in_file_order(const toml::table& table) {
    std::vector<Entry> entries;
    for (const auto& [key, node] : table) entries.emplace_back(&key, &node);
    std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
      const auto& pa = a.first->source().begin;
      const auto& pb = b.first->source().begin;
      return std::pair(pa.line, pa.column) < std::pair(pb.line, pb.column);
    });
    return entries;
  }

  std::string at(const toml::source_region& where) const {
    if (where.begin.line == 0) return source_ + ": ";
    return source_ + ":" + std::to_string(where.begin.line) + ":" +
           std::to_string(where.begin.column) + ": ";
  }

  [[noreturn]] void fail(const toml::source_region& where, const std::string& message) const {
    throw ConfigError(at(where) + message);
  }

  const toml::table& require_table(const toml::key& key, const toml::node& node,
                                   std::string_view header) const {
    if (const toml::table* table = node.as_table()) return *table;
    fail(key.source(), "'" + std::string(key.str()) + "' must be a table: write " +
                           std::string(header) + " and its keys below it, found " +
                           type_name(node));
  }

  [[noreturn]] void unknown_key(const toml::key& key, const std::string& scope,
                                std::string_view known) const {
    fail(key.source(), "unknown key '" + scope + "." + std::string(key.str()) +
                           "'; known keys: " + std::string(known));
  }

  // --- scalar readers: type errors, with what is accepted ----------------------------------

  uint64_t byte_size(const toml::node& node, const std::string& key) const {
    if (auto v = node.as_integer()) {
      if (v->get() < 0)
        fail(node.source(),
             key + " = " + render(node) + " must not be negative; " + std::string(kByteSizeForms));
      return static_cast<uint64_t>(v->get());
    }
    if (auto v = node.as_string()) {
      bool overflow = false;
      if (auto bytes = parse_byte_size(v->get(), overflow)) return *bytes;
      if (overflow)
        fail(node.source(), key + " = " + render(node) + " is too large to be a byte size");
      fail(node.source(),
           key + " = " + render(node) + " is not a byte size; " + std::string(kByteSizeForms));
    }
    fail(node.source(), key + " = " + render(node) + " is not a byte size (found " +
                            type_name(node) + "); " + std::string(kByteSizeForms));
  }

  // A byte size shown with its value in bytes when the user wrote a unit.
  static std::string shown_bytes(const toml::node& node, uint64_t bytes) {
    std::string shown = render(node);
    if (node.is_string()) shown += " (" + std::to_string(bytes) + " bytes)";
    return shown;
  }

  int64_t integer(const toml::node& node, const std::string& key, std::string_view accepted) const {
    if (auto v = node.as_integer()) return v->get();
    fail(node.source(), key + " = " + render(node) + " must be an integer (found " +
                            type_name(node) + "); accepted: " + std::string(accepted));
  }

  uint32_t count(const toml::node& node, const std::string& key, int64_t min, int64_t max) const {
    const std::string accepted =
        "an integer from " + std::to_string(min) + " to " + std::to_string(max);
    const int64_t value = integer(node, key, accepted);
    if (value < min || value > max)
      fail(node.source(), key + " = " + render(node) + " is out of range; accepted: " + accepted);
    return static_cast<uint32_t>(value);
  }

  // A timeout in milliseconds: long enough to be more than a tick of the daemon's clock
  // apart from zero, short of a day.
  std::chrono::milliseconds milliseconds(const toml::node& node, const std::string& key) const {
    return std::chrono::milliseconds(count(node, key, kMinTimeoutMs, kMaxTimeoutMs));
  }

  bool boolean(const toml::node& node, const std::string& key) const {
    if (auto v = node.as_boolean()) return v->get();
    fail(node.source(), key + " = " + render(node) +
                            " must be true or false (a TOML boolean, "
                            "without quotes), found " +
                            type_name(node));
  }

  // --- tables -------------------------------------------------------------------------------

  void parse_bus(const toml::table& table, Config& config) {
    for (const auto& [key, node] : in_file_order(table)) {
      const std::string name(key->str());
      const std::string full = "bus." + name;
      if (name == "arena_bytes") {
        const uint64_t bytes = byte_size(*node, full);
        if (bytes % layout::kPageSize != 0 || bytes < kMinArenaBytes || bytes > kMaxArenaBytes)
          fail(node->source(), full + " = " + shown_bytes(*node, bytes) +
                                   " must be a multiple of 4096 bytes from 1 MiB to 256 GiB "
                                   "(e.g. \"256MiB\", \"4GiB\")");
        config.arena_bytes = bytes;
        arena_at_ = node->source();
      } else if (name == "idle_ttl_seconds") {
        const std::string accepted = "an integer from 0 to " + std::to_string(kMaxIdleTtlSeconds) +
                                     " (one year); 0 means idle channels are never reclaimed";
        const int64_t seconds = integer(*node, full, accepted);
        if (seconds < 0 || seconds > kMaxIdleTtlSeconds)
          fail(node->source(),
               full + " = " + render(*node) + " is out of range; accepted: " + accepted);
        config.idle_ttl = std::chrono::seconds(seconds);
      } else {
        unknown_key(*key, "bus", kBusKeys);
      }
    }
  }

  void parse_limits(const toml::table& table, Config& config) {
    constexpr int64_t kU32Max = std::numeric_limits<uint32_t>::max();
    for (const auto& [key, node] : in_file_order(table)) {
      const std::string name(key->str());
      const std::string full = "limits." + name;
      if (name == "max_shared_memory") {
        const uint64_t bytes = byte_size(*node, full);
        if (bytes < kMinSharedMemory)
          fail(node->source(), full + " = " + shown_bytes(*node, bytes) +
                                   " must be at least 1 MiB (e.g. \"1GiB\")");
        config.max_shared_memory = bytes;
        shared_memory_at_ = node->source();
      } else if (name == "max_channels") {
        config.max_channels = count(*node, full, 1, kMaxChannels);
        channels_at_ = node->source();
      } else if (name == "max_subscriptions_per_client") {
        config.max_subscriptions_per_client = count(*node, full, 1, kMaxSubscriptionsPerClient);
        subscriptions_at_ = node->source();
      } else if (name == "max_clients") {
        config.max_clients = count(*node, full, 1, kU32Max);
        clients_at_ = node->source();
      } else if (name == "max_connections_per_user") {
        config.max_connections_per_user = count(*node, full, 0, kU32Max);
      } else if (name == "max_channels_per_user") {
        config.max_channels_per_user = count(*node, full, 0, kMaxChannels);
      } else if (name == "max_shared_memory_per_user") {
        const uint64_t bytes = byte_size(*node, full);
        if (bytes != 0 && bytes < kMinSharedMemory)
          fail(node->source(), full + " = " + shown_bytes(*node, bytes) +
                                   " must be 0 (only max_shared_memory applies) or at least "
                                   "1 MiB (e.g. \"256MiB\")");
        config.max_shared_memory_per_user = bytes;
      } else if (name == "max_unread_reply_bytes") {
        const uint64_t bytes = byte_size(*node, full);
        if (bytes < kMinUnreadReplyBytes || bytes > kMaxUnreadReplyBytes)
          fail(node->source(), full + " = " + shown_bytes(*node, bytes) +
                                   " must be from 2 MiB (a reply frame may take 1 MiB, and "
                                   "requests wait while less than that is left) to 1 GiB");
        config.max_unread_reply_bytes = bytes;
      } else if (name == "unread_reply_timeout_ms") {
        config.unread_reply_timeout = milliseconds(*node, full);
      } else if (name == "hello_timeout_ms") {
        config.hello_timeout = milliseconds(*node, full);
      } else if (name == "slot_return_timeout_ms") {
        config.slot_return_timeout = milliseconds(*node, full);
      } else {
        unknown_key(*key, "limits", kLimitsKeys);
      }
    }
  }

  // [defaults] (rule == nullptr) or one [[channel]] table. Only what each key alone can tell
  // is checked here; check_ring() checks the keys against each other once all are known.
  void parse_ring_table(const toml::table& table, const std::string& scope, std::string_view known,
                        RingKeys& keys, ChannelRule* rule) {
    bool has_pattern = false;
    for (const auto& [key, node] : in_file_order(table)) {
      const std::string name(key->str());
      const std::string full = scope + "." + name;
      if (name == "ring_bytes") {
        const uint64_t bytes = byte_size(*node, full);
        if (!std::has_single_bit(bytes) || bytes < kMinRingBytes || bytes > kMaxRingBytes)
          fail(node->source(), full + " = " + shown_bytes(*node, bytes) +
                                   " must be a power of two of at least 4096 bytes and at most "
                                   "1 TiB (e.g. \"4KiB\", \"64KiB\", \"1MiB\")");
        keys.ring_bytes = bytes;
        keys.ring_at = node->source();
      } else if (name == "max_ring_bytes") {
        const uint64_t bytes = byte_size(*node, full);
        if (bytes != 0 &&
            (!std::has_single_bit(bytes) || bytes < kMinRingBytes || bytes > kMaxRingBytes))
          fail(node->source(), full + " = " + shown_bytes(*node, bytes) +
                                   " must be 0 (clients may ask for up to ring_bytes) or a power "
                                   "of two of at least 4096 bytes and at most 1 TiB (e.g. "
                                   "\"1MiB\", \"128MiB\")");
        keys.max_ring_bytes = bytes;
        keys.max_ring_at = node->source();
      } else if (name == "max_message_bytes") {
        const uint64_t bytes = byte_size(*node, full);
        if (bytes > kMaxMessageBytes)
          fail(node->source(), full + " = " + shown_bytes(*node, bytes) +
                                   " is too large: a message is at most " +
                                   std::to_string(kMaxMessageBytes) +
                                   " bytes (2 GiB - 1); 0 means the largest the ring carries");
        keys.max_message_bytes = static_cast<uint32_t>(bytes);
        keys.message_at = node->source();
      } else if (name == "back_pressure") {
        keys.back_pressure = boolean(*node, full);
      } else if (name == "max_subscribers") {
        keys.max_subscribers = count(*node, full, 1, kMaxSubscribers);
        keys.subscribers_at = node->source();
      } else if (rule != nullptr && name == "pattern") {
        const toml::value<std::string>* pattern = node->as_string();
        if (!pattern || pattern->get().empty() || pattern->get().size() > kMaxPatternBytes)
          fail(node->source(), full + " = " + render(*node) +
                                   " must be a non-empty string of "
                                   "at most " +
                                   std::to_string(kMaxPatternBytes) +
                                   " bytes: a Redis glob such as \"user:*\"");
        rule->pattern = pattern->get();
        pattern_at_.push_back(node->source());
        has_pattern = true;
      } else {
        unknown_key(*key, scope, known);
      }
    }
    if (rule != nullptr && !has_pattern)
      fail(table.source(), scope +
                               " has no pattern; every [[channel]] rule needs one, e.g. "
                               "pattern = \"user:*\"");
  }

  // One [[access]] table: a pattern, and who may publish and subscribe (each a list; a key
  // left out grants nobody).
  AccessRule parse_access(const toml::table& table, const std::string& scope) const {
    AccessRule rule;
    bool has_pattern = false;
    for (const auto& [key, node] : in_file_order(table)) {
      const std::string name(key->str());
      const std::string full = scope + "." + name;
      if (name == "pattern") {
        const toml::value<std::string>* pattern = node->as_string();
        if (!pattern || pattern->get().empty() || pattern->get().size() > kMaxPatternBytes)
          fail(node->source(), full + " = " + render(*node) +
                                   " must be a non-empty string of at "
                                   "most " +
                                   std::to_string(kMaxPatternBytes) +
                                   " bytes: a Redis glob such as \"orders:*\"");
        rule.pattern = pattern->get();
        has_pattern = true;
      } else if (name == "publish" || name == "subscribe") {
        const toml::array* list = node->as_array();
        if (!list)
          fail(node->source(), full + " = " + render(*node) +
                                   " must be a list of principals, "
                                   "e.g. [\"alice\", \"@orders\"]; each is " +
                                   std::string(kPrincipalForms));
        auto& out = name == "publish" ? rule.publish : rule.subscribe;
        for (size_t i = 0; i < list->size(); ++i)
          out.push_back(principal((*list)[i], full + "[" + std::to_string(i + 1) + "]"));
      } else {
        unknown_key(*key, scope, kAccessKeys);
      }
    }
    if (!has_pattern)
      fail(table.source(), scope +
                               " has no pattern; every [[access]] rule needs one, e.g. "
                               "pattern = \"orders:*\"");
    return rule;
  }

  // "*", "alice", "1001", "@orders", "@1002", resolved to ids now: a name that does not exist
  // is an error at startup, not a rule that silently lets nobody in.
  Principal principal(const toml::node& node, const std::string& key) const {
    const toml::value<std::string>* value = node.as_string();
    if (!value || value->get().empty())
      fail(node.source(), key + " = " + render(node) + " must be " + std::string(kPrincipalForms));
    const std::string& text = value->get();
    Principal p;
    p.text = text;
    if (text == "*") return p;
    const bool group = text.front() == '@';
    const std::string name = group ? text.substr(1) : text;
    p.kind = group ? Principal::Kind::kGroup : Principal::Kind::kUser;
    if (!name.empty() && name.find_first_not_of("0123456789") == std::string::npos &&
        name.size() <= 10) {
      const uint64_t id = std::stoull(name);
      if (id <= std::numeric_limits<uint32_t>::max()) {
        p.id = static_cast<uint32_t>(id);
        return p;
      }
    }
    if (const std::optional<uint32_t> id = group ? gid_of(name) : uid_of(name)) {
      p.id = *id;
      return p;
    }
    fail(node.source(), key + " = " + quote(text) + ": no such " + (group ? "group" : "user") +
                            " '" + name + "' (getent " + (group ? "group " : "passwd ") + name +
                            "); use " + std::string(kPrincipalForms));
  }

  static std::optional<uint32_t> uid_of(const std::string& name) {
    std::vector<char> buffer(16384);
    passwd entry{};
    passwd* found = nullptr;
    if (getpwnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &found) != 0 || !found)
      return std::nullopt;
    return found->pw_uid;
  }
  static std::optional<uint32_t> gid_of(const std::string& name) {
    std::vector<char> buffer(65536);
    group entry{};
    group* found = nullptr;
    if (getgrnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &found) != 0 || !found)
      return std::nullopt;
    return found->gr_gid;
  }

  // --- cross-checks ---------------------------------------------------------------------------

  // A repeated pattern can never decide anything (the first match wins): almost certainly a
  // copy-paste slip, and silently ignoring half of it is what this parser exists to prevent.
  void check_duplicate_pattern(const Config& config, size_t index) const {
    for (size_t j = 0; j < index; ++j) {
      if (config.rules[j].pattern == config.rules[index].pattern)
        fail(pattern_at_[index], "channel[" + std::to_string(index + 1) + "].pattern " +
                                     quote(config.rules[index].pattern) + " repeats channel[" +
                                     std::to_string(j + 1) +
                                     "]'s; the first matching rule wins, so this rule "
                                     "would never apply; merge the two rules");
    }
  }

  // Checks the effective settings of [defaults] (rule == nullptr) or of rule `number`
  // (1-based) against each other and against the arena and shared-memory limits.
  void check_ring(const Config& config, const RingKeys& keys, const ChannelRule* rule,
                  size_t number) const {
    const ChannelSettings& d = config.defaults;
    const uint64_t ring = keys.ring_bytes.value_or(d.ring_bytes);
    const uint32_t message = keys.max_message_bytes.value_or(d.max_message_bytes);
    const uint32_t subscribers = keys.max_subscribers.value_or(d.max_subscribers);
    const bool ring_inherited = rule != nullptr && !keys.ring_bytes;
    const bool message_inherited = rule != nullptr && !keys.max_message_bytes;
    const std::string label = rule == nullptr ? std::string("[defaults]")
                                              : "channel[" + std::to_string(number) + "] (" +
                                                    quote(rule->pattern, '\'') + ")";
    // Point at the key that most likely needs changing; fall back to the table header.
    auto first_set = [&](std::initializer_list<const toml::source_region*> regions) {
      for (const toml::source_region* r : regions)
        if (r->begin.line != 0) return *r;
      return keys.table_at;
    };

    const uint32_t largest = largest_message_for_ring(ring);
    if (message > largest) {
      const uint64_t needed = std::bit_ceil(2 * uint64_t{message} + 2 * layout::kFrameHeaderBytes);
      std::string text = label + ": max_message_bytes " + std::to_string(message) +
                         (message_inherited ? " (inherited from [defaults])" : "") +
                         " exceeds what a ring of " + std::to_string(ring) + " bytes" +
                         (ring_inherited ? " (ring_bytes inherited from [defaults])" : "") +
                         " carries (" + std::to_string(largest) + "); set ring_bytes to at least " +
                         format_bytes(needed) + (rule ? " in this rule" : "") +
                         ", or lower max_message_bytes (0 means the largest the ring carries)";
      fail(first_set({&keys.message_at, &keys.ring_at}), text);
    }

    // A ring lives in one block of one arena (after the arena's header page), its reader
    // table in another, and the pages of both are reserved when the channel is created:
    // the configured ring, and the largest one a client may ask for.
    const uint64_t max_ring = keys.max_ring_bytes.value_or(d.max_ring_bytes);
    if (max_ring > ring)
      check_block(config, label, max_ring, subscribers, "max_ring_bytes",
                  first_set({&keys.max_ring_at, &keys.subscribers_at, &arena_at_}),
                  first_set({&shared_memory_at_, &keys.max_ring_at, &keys.subscribers_at}));
    check_block(config, label, ring, subscribers, "ring_bytes",
                first_set({&keys.ring_at, &keys.subscribers_at, &arena_at_}),
                first_set({&shared_memory_at_, &keys.ring_at, &keys.subscribers_at}));
  }

  // A ring of `ring` bytes (the value of `key` in `label`) with `subscribers` slots must fit
  // in an arena and in max_shared_memory; the errors point at `arena_at` / `memory_at`.
  void check_block(const Config& config, const std::string& label, uint64_t ring,
                   uint32_t subscribers, const std::string& key,
                   const toml::source_region& arena_at,
                   const toml::source_region& memory_at) const {
    const uint64_t block =
        layout::ring_block_bytes(ring) +
        layout::align_up(layout::reader_table_bytes(subscribers), layout::kPageSize);
    const uint64_t usable = config.arena_bytes - layout::kPageSize;
    if (block > usable) {
      const uint64_t arena_needed = layout::align_up(block + layout::kPageSize, kMiB);
      std::string way_out =
          arena_needed <= kMaxArenaBytes
              ? "raise bus.arena_bytes to at least " + format_bytes(arena_needed) + ", or lower " +
                    key
              : "lower " + key +
                    ": bus.arena_bytes is at most 256 GiB, so the largest ring is 128 GiB";
      fail(arena_at, label + ": a ring of " + format_bytes(ring) +
                         (key == "ring_bytes" ? "" : " (" + key + ")") + " with " +
                         std::to_string(subscribers) + " subscriber slots needs a block of " +
                         std::to_string(block) + " bytes, more than an arena of " +
                         format_bytes(config.arena_bytes) +
                         " (bus.arena_bytes) holds after its header page; " + way_out);
    }
    if (block > config.max_shared_memory) {
      fail(memory_at, "limits.max_shared_memory = " + format_bytes(config.max_shared_memory) +
                          " is less than one ring of " + label + " reserves (" +
                          std::to_string(block) + " bytes for " + format_bytes(ring) + " of data" +
                          (key == "ring_bytes" ? "" : ", its " + key) +
                          "); raise limits.max_shared_memory to at least " +
                          format_bytes(layout::align_up(block, kMiB)) + ", or lower " + key);
    }
  }

  // The daemon's fixed arenas, sized from [limits] when it starts (Registry): each must be
  // addressable by a ShmRef, and the memory reserved before any channel exists (the bus
  // directory) plus one subscriber's doorbell must fit max_shared_memory, or the daemon
  // would start and then fail at its first subscriber.
  void check_arenas(const Config& config) const {
    auto first_set = [&](std::initializer_list<const toml::source_region*> regions) {
      for (const toml::source_region* r : regions)
        if (r->begin.line != 0) return *r;
      return toml::source_region{};
    };
    const uint64_t stride = layout::doorbell_stride(config.max_subscriptions_per_client + 1);
    const std::string subscriptions = "limits.max_subscriptions_per_client = " +
                                      std::to_string(config.max_subscriptions_per_client);
    // Departing clients keep their doorbells until their processes exit: twice max_clients.
    const uint64_t doorbell_arena = layout::kPageSize + 2 * uint64_t{config.max_clients} * stride;
    if (doorbell_arena > kMaxArenaBytes)
      fail(first_set({&clients_at_, &subscriptions_at_}),
           "limits.max_clients = " + std::to_string(config.max_clients) + " with " + subscriptions +
               " needs a doorbell arena of " + gib_rounded_up(doorbell_arena) +
               " (2 * max_clients doorbells of " + format_bytes(stride) +
               "), more than the 256 GiB a shared-memory reference can address; lower "
               "max_clients or max_subscriptions_per_client");
    const uint64_t directory = layout::directory_bytes(config.max_channels);
    if (directory + stride > config.max_shared_memory)
      fail(first_set({&shared_memory_at_, &subscriptions_at_, &channels_at_}),
           "limits.max_shared_memory = " + format_bytes(config.max_shared_memory) +
               " is less than the bus directory (" + format_bytes(directory) +
               " for max_channels = " + std::to_string(config.max_channels) +
               ") and one subscriber's doorbell (" + format_bytes(stride) + " for " +
               subscriptions +
               ") need, so no subscriber could connect; raise "
               "limits.max_shared_memory to at least " +
               format_bytes(layout::align_up(directory + stride, kMiB)) +
               ", or lower max_subscriptions_per_client");
  }

  std::string source_;
  toml::source_region arena_at_{};
  toml::source_region shared_memory_at_{};
  toml::source_region channels_at_{};
  toml::source_region subscriptions_at_{};
  toml::source_region clients_at_{};
  std::vector<toml::source_region> pattern_at_;
};

}  // namespace

uint32_t largest_message_for_ring(uint64_t ring_bytes) {
  return RingRef::largest_payload(ring_bytes);
}

uint32_t Config::access_class_of(std::string_view channel) const {
  for (size_t i = 0; i < access.size(); ++i)
    if (glob_match(access[i].pattern, channel)) return static_cast<uint32_t>(i + 1);
  return 0;
}

namespace {

bool admits(const std::vector<Principal>& list, const PeerIdentity& who) {
  for (const Principal& p : list) {
    switch (p.kind) {
      case Principal::Kind::kAnyone: return true;
      case Principal::Kind::kUser:
        if (p.id == who.uid) return true;
        break;
      case Principal::Kind::kGroup:
        if (p.id == who.gid ||
            std::find(who.groups.begin(), who.groups.end(), p.id) != who.groups.end())
          return true;
        break;
    }
  }
  return false;
}

}  // namespace

bool Config::may_publish(uint32_t access_class, const PeerIdentity& who,
                         uint32_t daemon_uid) const {
  if (access_class == 0 || who.uid == 0 || who.uid == daemon_uid) return true;
  return access_class <= access.size() && admits(access[access_class - 1].publish, who);
}

bool Config::may_subscribe(uint32_t access_class, const PeerIdentity& who,
                           uint32_t daemon_uid) const {
  if (access_class == 0 || who.uid == 0 || who.uid == daemon_uid) return true;
  return access_class <= access.size() && admits(access[access_class - 1].subscribe, who);
}

ChannelSettings Config::settings_for(std::string_view channel) const {
  ChannelSettings settings = defaults;
  for (const ChannelRule& rule : rules) {
    if (!glob_match(rule.pattern, channel)) continue;
    if (rule.ring_bytes) settings.ring_bytes = *rule.ring_bytes;
    if (rule.max_ring_bytes) settings.max_ring_bytes = *rule.max_ring_bytes;
    if (rule.max_message_bytes) settings.max_message_bytes = *rule.max_message_bytes;
    if (rule.back_pressure) settings.back_pressure = *rule.back_pressure;
    if (rule.max_subscribers) settings.max_subscribers = *rule.max_subscribers;
    settings.rule = rule.pattern;
    break;
  }
  return settings;
}

Config parse_config(std::string_view toml_text, std::string_view source_name) {
  try {
    return Parser(source_name).parse(toml_text);
  } catch (const ConfigError&) {
    throw;
  } catch (const std::exception& e) {
    // Callers handle one exception type; anything else (e.g. bad_alloc) still names the file.
    throw ConfigError(std::string(source_name) + ": cannot parse config: " + e.what());
  }
}

Config load_config(const std::string& path) {
  std::string text;
  try {
    struct Closer {
      void operator()(std::FILE* f) const { std::fclose(f); }
    };
    std::unique_ptr<std::FILE, Closer> file(std::fopen(path.c_str(), "rb"));
    if (!file)
      throw ConfigError(path +
                        ": cannot open config file: " + std::system_category().message(errno));
    char buffer[64 * 1024];
    for (;;) {
      const size_t got = std::fread(buffer, 1, sizeof buffer, file.get());
      text.append(buffer, got);
      if (text.size() > kMaxConfigFileBytes)
        throw ConfigError(path + ": config file is larger than " +
                          format_bytes(kMaxConfigFileBytes) + "; is this the right file?");
      if (got < sizeof buffer) {
        if (std::ferror(file.get()))
          throw ConfigError(path +
                            ": cannot read config file: " + std::system_category().message(errno));
        break;
      }
    }
  } catch (const ConfigError&) {
    throw;
  } catch (const std::exception& e) {
    throw ConfigError(path + ": cannot read config file: " + e.what());
  }
  return parse_config(text, path);
}

}  // namespace shmbus::daemon
