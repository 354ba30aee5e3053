// shmbusd configuration: defaults, the shipped example file, byte sizes, rule matching, and
// that every error names the position, the full key, what is wrong and the way out.
#include "config.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <initializer_list>
#include <sstream>
#include <string>
#include <string_view>

#include "reload.hpp"

#ifndef SHMBUS_SOURCE_DIR
#error "build with -DSHMBUS_SOURCE_DIR=\"<project source root>\" (see tests/meson.build)"
#endif

namespace shmbus::daemon {
namespace {

constexpr const char* kExamplePath = SHMBUS_SOURCE_DIR "/daemon/shmbusd.toml";

// The ConfigError message parsing `text` produces, or a test failure if it parses.
std::string error_of(std::string_view text) {
  try {
    parse_config(text, "shmbusd.toml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "parsed without error:\n" << text;
  return {};
}

// Plain find checks (gmock may be missing): each part must appear in the message.
::testing::AssertionResult contains_all(const std::string& message,
                                        std::initializer_list<std::string_view> parts) {
  for (std::string_view part : parts) {
    if (message.find(part) == std::string::npos)
      return ::testing::AssertionFailure() << "message lacks '" << part << "':\n  " << message;
  }
  return ::testing::AssertionSuccess();
}

bool starts_with(const std::string& text, std::string_view prefix) {
  return text.rfind(prefix, 0) == 0;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// --- defaults and the example file -------------------------------------------------------

TEST(Config, EmptyTextGivesBuiltInDefaults) {
  const Config config = parse_config("", "empty.toml");
  Config expected;
  expected.source = "empty.toml";
  EXPECT_EQ(config, expected);
  EXPECT_EQ(config.arena_bytes, 256ull << 20);
  EXPECT_EQ(config.idle_ttl, std::chrono::seconds(60));
  EXPECT_EQ(config.defaults.ring_bytes, 64u * 1024);
  EXPECT_EQ(config.defaults.max_message_bytes, 0u);
  EXPECT_FALSE(config.defaults.back_pressure);
  EXPECT_EQ(config.defaults.max_subscribers, 16u);
  EXPECT_EQ(config.defaults.rule, "defaults");
  EXPECT_EQ(config.max_shared_memory, 1ull << 30);
  EXPECT_EQ(config.max_channels, 200000u);
  EXPECT_EQ(config.max_subscriptions_per_client, 200000u);
  EXPECT_EQ(config.max_clients, 4096u);
  EXPECT_EQ(config.max_connections_per_user, 0u);
  EXPECT_EQ(config.connections_per_user(), 4096u);
  EXPECT_EQ(config.max_channels_per_user, 0u);
  EXPECT_EQ(config.max_shared_memory_per_user, 0u);
  EXPECT_EQ(config.slot_return_timeout, std::chrono::milliseconds(10000));
  EXPECT_EQ(config.max_unread_reply_bytes, 2u << 20);
  EXPECT_EQ(config.unread_reply_timeout, std::chrono::milliseconds(30000));
  EXPECT_EQ(config.hello_timeout, std::chrono::milliseconds(5000));
  EXPECT_TRUE(config.rules.empty());
}

TEST(Config, EmptyTablesGiveBuiltInDefaults) {
  Config config = parse_config("[bus]\n[defaults]\n[limits]\n", "x");
  config.source = Config{}.source;
  EXPECT_EQ(config, Config{});
}

TEST(Config, ExampleFileEqualsDefaults) {
  Config config = load_config(kExamplePath);
  EXPECT_EQ(config.source, kExamplePath);
  config.source = Config{}.source;
  EXPECT_EQ(config, Config{});
}

// The commented [[channel]] and [[access]] examples are what users copy, so they must stay
// valid.
TEST(Config, ExampleFileRulesAreValidWhenUncommented) {
  std::istringstream in(read_file(kExamplePath));
  std::string text, line;
  bool in_rules = false;
  int uncommented = 0;
  while (std::getline(in, line)) {
    if (starts_with(line, "# [[channel]]")) in_rules = true;
    // Uncomment "# [[channel]]" and "# key = value" lines only, not the prose around them.
    const std::string body = starts_with(line, "# ") ? line.substr(2) : "";
    const bool is_setting =
        body == "[[channel]]" || body == "[[access]]" ||
        (!body.empty() && body.find(" = ") != std::string::npos &&
         body.find_first_not_of("abcdefghijklmnopqrstuvwxyz_") == body.find(" = "));
    if (in_rules && is_setting) {
      text += body + "\n";
      ++uncommented;
    } else {
      text += line + "\n";
    }
  }
  ASSERT_GE(uncommented, 6) << "the example rules were not found";
  const Config config = parse_config(text, "example-uncommented.toml");
  ASSERT_EQ(config.rules.size(), 2u);
  ASSERT_EQ(config.access.size(), 1u);
  EXPECT_EQ(config.access_class_of("orders:7"), 1u);
  EXPECT_TRUE(config.may_subscribe(1, PeerIdentity{4321, 4321, {}}, 999));
  EXPECT_FALSE(config.may_publish(1, PeerIdentity{4321, 4321, {}}, 999));
  EXPECT_TRUE(config.may_publish(1, PeerIdentity{4321, 4321, {1002}}, 999));

  const ChannelSettings user = config.settings_for("user:12345");
  EXPECT_EQ(user.rule, "user:*");
  EXPECT_EQ(user.ring_bytes, 4096u);
  EXPECT_EQ(user.max_subscribers, 4u);
  EXPECT_FALSE(user.back_pressure);

  const ChannelSettings video = config.settings_for("video:cam1");
  EXPECT_EQ(video.rule, "video:*");
  EXPECT_EQ(video.ring_bytes, 64ull << 20);
  EXPECT_EQ(video.max_message_bytes, 8u << 20);
  EXPECT_TRUE(video.back_pressure);
  EXPECT_EQ(video.max_subscribers, 16u);  // inherited
}

// --- byte sizes ---------------------------------------------------------------------------

TEST(Config, ByteSizesAcceptIntegersAndBinaryUnits) {
  struct Case {
    std::string written;
    uint64_t bytes;
  };
  for (const Case& c :
       {Case{"2097152", 2u << 20}, Case{"\"2097152B\"", 2u << 20}, Case{"\"2048KiB\"", 2u << 20},
        Case{"\"2 MiB\"", 2u << 20}, Case{"\"4GiB\"", 4ull << 30}, Case{"\"1 GiB\"", 1ull << 30},
        Case{"\"1024 GiB\"", 1ull << 40}}) {
    const Config config = parse_config("[limits]\nmax_shared_memory = " + c.written + "\n", "x");
    EXPECT_EQ(config.max_shared_memory, c.bytes) << c.written;
  }
  const Config config = parse_config(
      "[bus]\narena_bytes = \"1GiB\"\n"
      "[defaults]\nring_bytes = \"1 MiB\"\nmax_message_bytes = \"512B\"\n",
      "x");
  EXPECT_EQ(config.arena_bytes, 1ull << 30);
  EXPECT_EQ(config.defaults.ring_bytes, 1u << 20);
  EXPECT_EQ(config.defaults.max_message_bytes, 512u);
}

TEST(Config, ByteSizesRejectOtherForms) {
  for (std::string_view written : {"\"64KB\"", "\"64kib\"", "\"64 kiB\"", "\"1.5MiB\"", "\"MiB\"",
                                   "\"65536\"", "\"\"", "\" 64KiB\"", "\"64  KiB\"", "\"64KiB \"",
                                   "\"64TiB\"", "\"0x10000\"", "65536.0", "true", "[65536]"}) {
    const std::string message = error_of("[defaults]\nring_bytes = " + std::string(written) + "\n");
    EXPECT_TRUE(starts_with(message, "shmbusd.toml:2:14: ")) << message;
    EXPECT_TRUE(contains_all(message, {"defaults.ring_bytes", "is not a byte size", "\"64KiB\"",
                                       "units: B, KiB, MiB, GiB"}))
        << written;
  }
  EXPECT_TRUE(contains_all(
      error_of("[defaults]\nring_bytes = -4096\n"),
      {"shmbusd.toml:2:14: ", "defaults.ring_bytes = -4096", "must not be negative", "\"64KiB\""}));
  EXPECT_TRUE(contains_all(error_of("[limits]\nmax_shared_memory = \"99999999999999999999B\"\n"),
                           {"shmbusd.toml:2:21: ", "limits.max_shared_memory", "too large"}));
  EXPECT_TRUE(contains_all(error_of("[limits]\nmax_shared_memory = \"17179869184GiB\"\n"),
                           {"limits.max_shared_memory", "too large"}));
}

// --- rules ----------------------------------------------------------------------------------

constexpr std::string_view kRules = R"(
[defaults]
ring_bytes = "128KiB"
max_subscribers = 8

[[channel]]
pattern = "video:hd:*"
ring_bytes = "64MiB"
back_pressure = true

[[channel]]
pattern = "video:*"
ring_bytes = "16MiB"
max_message_bytes = "1MiB"
max_subscribers = 2

[[channel]]
pattern = "user:[0-9]*"
ring_bytes = "4KiB"
)";

TEST(Config, FirstMatchingRuleWinsAndUnsetKeysInherit) {
  const Config config = parse_config(kRules, "rules.toml");
  ASSERT_EQ(config.rules.size(), 3u);
  EXPECT_EQ(config.rules[0].pattern, "video:hd:*");
  EXPECT_EQ(config.rules[0].ring_bytes, 64ull << 20);
  EXPECT_EQ(config.rules[0].max_message_bytes, std::nullopt);

  // Matches rules 1 and 2: the first decides, and what it leaves out comes from [defaults]
  // (not from rule 2).
  const ChannelSettings hd = config.settings_for("video:hd:front");
  EXPECT_EQ(hd.rule, "video:hd:*");
  EXPECT_EQ(hd.ring_bytes, 64ull << 20);
  EXPECT_TRUE(hd.back_pressure);
  EXPECT_EQ(hd.max_message_bytes, 0u);
  EXPECT_EQ(hd.max_subscribers, 8u);

  const ChannelSettings sd = config.settings_for("video:sd:back");
  EXPECT_EQ(sd.rule, "video:*");
  EXPECT_EQ(sd.ring_bytes, 16ull << 20);
  EXPECT_EQ(sd.max_message_bytes, 1u << 20);
  EXPECT_FALSE(sd.back_pressure);
  EXPECT_EQ(sd.max_subscribers, 2u);

  const ChannelSettings user = config.settings_for("user:42");
  EXPECT_EQ(user.rule, "user:[0-9]*");
  EXPECT_EQ(user.ring_bytes, 4096u);
  EXPECT_EQ(user.max_subscribers, 8u);

  // Redis glob semantics: case-sensitive, and the class must match the first byte.
  for (std::string_view other : {"user:bob", "USER:42", "news", "", "video"}) {
    const ChannelSettings s = config.settings_for(other);
    EXPECT_EQ(s.rule, "defaults") << other;
    EXPECT_EQ(s.ring_bytes, 128u * 1024) << other;
    EXPECT_EQ(s.max_subscribers, 8u) << other;
  }
}

TEST(Config, RulesAsInlineTables) {
  const Config config = parse_config(
      "channel = [{ pattern = \"a*\", ring_bytes = 8192 }, { pattern = \"b\" }]\n", "x");
  ASSERT_EQ(config.rules.size(), 2u);
  EXPECT_EQ(config.settings_for("abc").ring_bytes, 8192u);
  EXPECT_EQ(config.settings_for("b").rule, "b");
  EXPECT_EQ(config.settings_for("b").ring_bytes, 64u * 1024);
}

TEST(Config, AcceptsBoundaryValues) {
  const Config config = parse_config(R"(
[bus]
arena_bytes = "256GiB"
idle_ttl_seconds = 0
[defaults]
ring_bytes = 4096
max_message_bytes = 2016
max_subscribers = 65536
[limits]
max_shared_memory = "200GiB"
max_channels = 16000000
max_subscriptions_per_client = 16777215
max_clients = 1
[[channel]]
pattern = "huge"
ring_bytes = "128GiB"
max_message_bytes = 2147483647
max_subscribers = 1
)",
                                     "x");
  EXPECT_EQ(config.idle_ttl, std::chrono::seconds(0));
  EXPECT_EQ(config.defaults.max_subscribers, 65536u);
  EXPECT_EQ(config.max_channels, 16000000u);
  EXPECT_EQ(config.max_subscriptions_per_client, 16777215u);
  EXPECT_EQ(config.settings_for("huge").ring_bytes, 128ull << 30);
  EXPECT_EQ(config.settings_for("huge").max_message_bytes, 2147483647u);
  EXPECT_EQ(largest_message_for_ring(4096), 2016u);
  EXPECT_EQ(largest_message_for_ring(65536), 32736u);
}

// --- errors: position, key, what is wrong, what is accepted ------------------------------

TEST(ConfigErrors, RingBytesNotPowerOfTwo) {
  const std::string message = error_of(R"([defaults]
ring_bytes = "64KiB"

[[channel]]
pattern = "a"

[[channel]]
pattern = "b"
ring_bytes = 3000
)");
  EXPECT_EQ(message,
            "shmbusd.toml:9:14: channel[2].ring_bytes = 3000 must be a power of two of at least "
            "4096 bytes and at most 1 TiB (e.g. \"4KiB\", \"64KiB\", \"1MiB\")");
  EXPECT_TRUE(contains_all(error_of("[defaults]\nring_bytes = \"2KiB\"\n"),
                           {"shmbusd.toml:2:14: ", "defaults.ring_bytes = \"2KiB\" (2048 bytes)",
                            "power of two", "\"4KiB\""}));
  EXPECT_TRUE(contains_all(error_of("[defaults]\nring_bytes = \"2048GiB\"\n"),
                           {"defaults.ring_bytes", "at most 1 TiB"}));
}

TEST(ConfigErrors, UnknownKeyNamesKnownKeys) {
  EXPECT_EQ(error_of("[bus]\n[defaults]\nring_size = 4096\n"),
            "shmbusd.toml:3:1: unknown key 'defaults.ring_size'; known keys: ring_bytes, "
            "max_ring_bytes, max_message_bytes, back_pressure, max_subscribers");
  EXPECT_TRUE(contains_all(
      error_of("[bus]\narena_size = 1\n"),
      {"shmbusd.toml:2:1: ", "unknown key 'bus.arena_size'", "arena_bytes, idle_ttl_seconds"}));
  EXPECT_TRUE(
      contains_all(error_of("[limits]\nmax_client = 1\n"),
                   {"shmbusd.toml:2:1: ", "unknown key 'limits.max_client'", "max_clients"}));
  EXPECT_TRUE(contains_all(
      error_of("[[channel]]\npattern = \"a\"\n  ringbytes = 4096\n"),
      {"shmbusd.toml:3:3: ", "unknown key 'channel[1].ringbytes'", "pattern, ring_bytes"}));
  // A sub-table of a known table is an unknown key too.
  EXPECT_TRUE(contains_all(error_of("[defaults.extra]\nx = 1\n"),
                           {"unknown key 'defaults.extra'", "known keys: ring_bytes"}));
}

TEST(ConfigErrors, UnknownTablesAndMisplacedKeys) {
  EXPECT_EQ(error_of("[bus]\n[default]\nring_bytes = 4096\n"),
            "shmbusd.toml:2:2: unknown table 'default'; known tables: [bus], [defaults], "
            "[limits], [[channel]], [[access]]");
  EXPECT_TRUE(
      contains_all(error_of("arena_bytes = 4096\n"),
                   {"shmbusd.toml:1:1: ", "unknown key 'arena_bytes'", "known tables: [bus]"}));
  EXPECT_TRUE(
      contains_all(error_of("[channel]\npattern = \"a\"\n"),
                   {"shmbusd.toml:1:2: ", "'channel' must be an array of tables", "[[channel]]"}));
  EXPECT_TRUE(contains_all(error_of("bus = 5\n"),
                           {"shmbusd.toml:1:1: ", "'bus' must be a table", "[bus]"}));
  EXPECT_TRUE(contains_all(error_of("[[limits]]\n"), {"'limits' must be a table", "[limits]"}));
  EXPECT_TRUE(contains_all(error_of("channel = [1]\n"),
                           {"shmbusd.toml:1:12: ", "channel[1] must be a table", "pattern"}));
}

TEST(ConfigErrors, SyntaxErrorHasPositionAndDescription) {
  const std::string message = error_of("[bus]\narena_bytes = = 4096\n");
  EXPECT_TRUE(starts_with(message, "shmbusd.toml:2:")) << message;
  EXPECT_TRUE(contains_all(message, {"TOML syntax error: "}));
  EXPECT_GT(message.size(), std::string_view("shmbusd.toml:2:1: TOML syntax error: ").size());
  // Duplicate keys are a TOML error, reported the same way.
  EXPECT_TRUE(contains_all(error_of("[bus]\nidle_ttl_seconds = 1\nidle_ttl_seconds = 2\n"),
                           {"shmbusd.toml:3:", "TOML syntax error: "}));
}

TEST(ConfigErrors, FirstErrorInFileOrder) {
  // Tables are maps ordered by name; the error reported must still be the first in the file.
  EXPECT_TRUE(contains_all(error_of("[limits]\nmax_clients = 0\n[bus]\narena_bytes = 1\n"),
                           {"shmbusd.toml:2:", "limits.max_clients"}));
  EXPECT_TRUE(contains_all(error_of("[defaults]\nzzz = 1\naaa = 1\n"),
                           {"shmbusd.toml:2:1: ", "'defaults.zzz'"}));
}

TEST(ConfigErrors, MaxMessageBytesMustFitTheEffectiveRing) {
  // The rule's own message size against the ring it inherits.
  EXPECT_EQ(error_of("[[channel]]\npattern = \"video:*\"\nmax_message_bytes = 1048576\n"),
            "shmbusd.toml:3:21: channel[1] ('video:*'): max_message_bytes 1048576 exceeds what "
            "a ring of 65536 bytes (ring_bytes inherited from [defaults]) carries (32736); set "
            "ring_bytes to at least 4 MiB in this rule, or lower max_message_bytes (0 means the "
            "largest the ring carries)");
  // The rule's own ring too small for the message size it inherits: points at ring_bytes.
  EXPECT_TRUE(
      contains_all(error_of("[defaults]\nring_bytes = \"1MiB\"\nmax_message_bytes = \"64KiB\"\n"
                            "[[channel]]\npattern = \"user:*\"\nring_bytes = \"4KiB\"\n"),
                   {"shmbusd.toml:6:14: ", "channel[1] ('user:*')",
                    "max_message_bytes 65536 (inherited from [defaults])",
                    "a ring of 4096 bytes carries (2016)", "at least 256 KiB"}));
  // [defaults] checked against itself.
  EXPECT_TRUE(contains_all(error_of("[defaults]\nmax_message_bytes = \"32KiB\"\n"),
                           {"shmbusd.toml:2:21: ", "[defaults]: max_message_bytes 32768",
                            "carries (32736)", "at least 128 KiB"}));
  // The exact limit is accepted.
  EXPECT_NO_THROW(parse_config("[defaults]\nmax_message_bytes = 32736\n", "x"));
  EXPECT_TRUE(contains_all(error_of("[defaults]\nmax_message_bytes = 2147483648\n"),
                           {"shmbusd.toml:2:21: ", "defaults.max_message_bytes = 2147483648",
                            "2 GiB - 1", "0 means the largest"}));
}

TEST(ConfigErrors, MaxSubscribersRange) {
  for (std::string_view value : {"0", "65537", "-1"}) {
    EXPECT_TRUE(contains_all(
        error_of("[[channel]]\npattern = \"a\"\nmax_subscribers = " + std::string(value) + "\n"),
        {"shmbusd.toml:3:19: ", "channel[1].max_subscribers = ", "from 1 to 65536"}));
  }
  EXPECT_TRUE(contains_all(error_of("[defaults]\nmax_subscribers = \"16\"\n"),
                           {"shmbusd.toml:2:19: ", "defaults.max_subscribers = \"16\"",
                            "must be an integer (found a string)", "from 1 to 65536"}));
}

TEST(ConfigErrors, ArenaBytes) {
  for (std::string_view value : {"\"1000KiB\"", "1048577", "\"512KiB\"", "\"257GiB\""}) {
    EXPECT_TRUE(contains_all(
        error_of("[bus]\narena_bytes = " + std::string(value) + "\n"),
        {"shmbusd.toml:2:15: ", "bus.arena_bytes = ", "multiple of 4096", "from 1 MiB to 256 GiB"}))
        << value;
  }
}

TEST(ConfigErrors, RingMustFitInAnArenaAndInSharedMemory) {
  EXPECT_TRUE(
      contains_all(error_of("[bus]\narena_bytes = \"256MiB\"\n[[channel]]\npattern = \"video:*\"\n"
                            "ring_bytes = \"256MiB\"\n"),
                   {"shmbusd.toml:5:14: ", "channel[1] ('video:*')", "a ring of 256 MiB",
                    "bus.arena_bytes", "raise bus.arena_bytes to at least 257 MiB"}));
  EXPECT_TRUE(contains_all(error_of("[defaults]\nring_bytes = \"1024GiB\"\n"),
                           {"[defaults]", "lower ring_bytes", "largest ring is 128 GiB"}));
  EXPECT_TRUE(contains_all(
      error_of("[bus]\narena_bytes = \"4GiB\"\n[limits]\nmax_shared_memory = \"1GiB\"\n"
               "[defaults]\nring_bytes = \"1GiB\"\n"),
      {"shmbusd.toml:4:21: ", "limits.max_shared_memory = 1 GiB", "[defaults]",
       "raise limits.max_shared_memory to at least 1025 MiB"}));
}

TEST(ConfigErrors, Limits) {
  EXPECT_TRUE(contains_all(
      error_of("[limits]\nmax_shared_memory = \"1023KiB\"\n"),
      {"shmbusd.toml:2:21: ", "limits.max_shared_memory = \"1023KiB\"", "at least 1 MiB"}));
  for (std::string_view value : {"0", "16000001"}) {
    EXPECT_TRUE(
        contains_all(error_of("[limits]\nmax_channels = " + std::string(value) + "\n"),
                     {"shmbusd.toml:2:16: ", "limits.max_channels = ", "from 1 to 16000000"}));
  }
  EXPECT_TRUE(contains_all(error_of("[limits]\nmax_clients = 0\n"),
                           {"shmbusd.toml:2:15: ", "limits.max_clients = 0", "from 1 to"}));
  EXPECT_TRUE(contains_all(
      error_of("[limits]\nmax_subscriptions_per_client = 4294967296\n"),
      {"shmbusd.toml:2:32: ", "limits.max_subscriptions_per_client", "from 1 to 16777215"}));
  EXPECT_TRUE(contains_all(error_of("[limits]\nmax_clients = 1.5\n"),
                           {"limits.max_clients = 1.5", "must be an integer (found a float)"}));
}

// What passed --check-config before and then failed in the daemon: its doorbell and control
// arenas are sized from [limits] when it starts, and the first subscriber needs a doorbell.
TEST(ConfigErrors, LimitsTheDaemonCouldNotHonourAreRefusedUpFront) {
  // A doorbell bit is 24 bits: the daemon failed at the first subscriber.
  EXPECT_TRUE(contains_all(error_of("[limits]\nmax_subscriptions_per_client = 16777216\n"),
                           {"shmbusd.toml:2:32: ", "limits.max_subscriptions_per_client = 16777216",
                            "from 1 to 16777215"}));
  EXPECT_NO_THROW(parse_config("[limits]\nmax_subscriptions_per_client = 16777215\n", "x"));
  // 2 * max_clients doorbells of 2 MiB each: past what a ShmRef addresses.
  EXPECT_TRUE(contains_all(
      error_of("[limits]\nmax_subscriptions_per_client = 16000000\nmax_clients = 100000\n"),
      {"shmbusd.toml:3:15: ", "limits.max_clients = 100000",
       "limits.max_subscriptions_per_client = 16000000", "doorbell arena", "256 GiB",
       "lower max_clients or max_subscriptions_per_client"}));
  EXPECT_TRUE(contains_all(error_of("[limits]\nmax_clients = 4294967295\n"),
                           {"shmbusd.toml:2:15: ", "doorbell arena", "256 GiB"}));
  // The directory of 200,000 channels alone takes 1.5 MiB.
  EXPECT_TRUE(
      contains_all(error_of("[limits]\nmax_shared_memory = \"1MiB\"\n"),
                   {"shmbusd.toml:2:21: ", "limits.max_shared_memory = 1 MiB", "bus directory",
                    "max_channels = 200000", "no subscriber could connect", "at least 2 MiB"}));
  // One doorbell of 16,777,215 bits is 2 MiB.
  EXPECT_TRUE(contains_all(error_of("[limits]\nmax_shared_memory = \"2MiB\"\nmax_channels = 1000\n"
                                    "max_subscriptions_per_client = 16777215\n"),
                           {"shmbusd.toml:2:21: ", "one subscriber's doorbell",
                            "limits.max_subscriptions_per_client = 16777215", "at least 5 MiB"}));
  EXPECT_NO_THROW(
      parse_config("[limits]\nmax_shared_memory = \"1MiB\"\nmax_channels = 1000\n"
                   "max_subscriptions_per_client = 1000\n",
                   "x"));
}

TEST(Config, MaxRingBytesBoundsWhatClientsAskFor) {
  const Config config = parse_config(R"([defaults]
max_ring_bytes = "1MiB"
[[channel]]
pattern = "video:*"
ring_bytes = "4MiB"
[[channel]]
pattern = "big:*"
max_ring_bytes = "64MiB"
)",
                                     "x");
  EXPECT_EQ(config.defaults.max_ring_bytes, 1u << 20);
  EXPECT_EQ(config.settings_for("a").largest_ring_a_client_may_ask(), 1u << 20);
  // A rule's own ring_bytes can always be asked for.
  EXPECT_EQ(config.settings_for("video:1").largest_ring_a_client_may_ask(), 4u << 20);
  EXPECT_EQ(config.settings_for("big:1").largest_ring_a_client_may_ask(), 64u << 20);
  EXPECT_EQ(Config{}.defaults.largest_ring_a_client_may_ask(), 64u << 10);
}

TEST(ConfigErrors, MaxRingBytes) {
  EXPECT_TRUE(contains_all(error_of("[defaults]\nmax_ring_bytes = 5000\n"),
                           {"shmbusd.toml:2:18: ", "defaults.max_ring_bytes = 5000",
                            "must be 0 (clients may ask for up to ring_bytes) or a power of two"}));
  // The largest ring a client may ask for must fit an arena and max_shared_memory too.
  EXPECT_TRUE(contains_all(
      error_of("[[channel]]\npattern = \"video:*\"\nmax_ring_bytes = \"256MiB\"\n"),
      {"shmbusd.toml:3:18: ", "channel[1] ('video:*'): a ring of 256 MiB (max_ring_bytes)",
       "bus.arena_bytes", "or lower max_ring_bytes"}));
  EXPECT_TRUE(contains_all(
      error_of("[bus]\narena_bytes = \"4GiB\"\n[limits]\nmax_shared_memory = \"1GiB\"\n"
               "[defaults]\nmax_ring_bytes = \"1GiB\"\n"),
      {"shmbusd.toml:4:21: ", "limits.max_shared_memory = 1 GiB", "its max_ring_bytes",
       "or lower max_ring_bytes"}));
}

TEST(ConfigErrors, PerUserLimits) {
  const Config config = parse_config(
      "[limits]\nmax_connections_per_user = 64\nmax_channels_per_user = 1000\n"
      "max_shared_memory_per_user = \"256MiB\"\n",
      "x");
  EXPECT_EQ(config.connections_per_user(), 64u);
  EXPECT_EQ(config.max_channels_per_user, 1000u);
  EXPECT_EQ(config.max_shared_memory_per_user, 256u << 20);
  EXPECT_TRUE(contains_all(error_of("[limits]\nmax_shared_memory_per_user = \"64KiB\"\n"),
                           {"shmbusd.toml:2:30: ", "limits.max_shared_memory_per_user = \"64KiB\"",
                            "must be 0 (only max_shared_memory applies) or at least 1 MiB"}));
  EXPECT_TRUE(contains_all(
      error_of("[limits]\nmax_channels_per_user = -1\n"),
      {"shmbusd.toml:2:25: ", "limits.max_channels_per_user = -1", "from 0 to 16000000"}));
  EXPECT_TRUE(contains_all(error_of("[limits]\nmax_connections_per_user = \"64\"\n"),
                           {"limits.max_connections_per_user", "must be an integer"}));
}

TEST(ConfigErrors, Timeouts) {
  EXPECT_EQ(parse_config("[limits]\nslot_return_timeout_ms = 500\n", "x").slot_return_timeout,
            std::chrono::milliseconds(500));
  for (std::string_view value : {"99", "86400001", "-1"})
    EXPECT_TRUE(contains_all(
        error_of("[limits]\nslot_return_timeout_ms = " + std::string(value) + "\n"),
        {"shmbusd.toml:2:26: ", "limits.slot_return_timeout_ms = ", "from 100 to 86400000"}));
  EXPECT_TRUE(contains_all(error_of("[limits]\nslot_return_timeout_ms = \"10s\"\n"),
                           {"limits.slot_return_timeout_ms", "must be an integer"}));
  const Config config = parse_config(
      "[limits]\nhello_timeout_ms = 1000\nunread_reply_timeout_ms = 60000\n"
      "max_unread_reply_bytes = \"8MiB\"\n",
      "x");
  EXPECT_EQ(config.hello_timeout, std::chrono::milliseconds(1000));
  EXPECT_EQ(config.unread_reply_timeout, std::chrono::milliseconds(60000));
  EXPECT_EQ(config.max_unread_reply_bytes, 8u << 20);
  EXPECT_TRUE(
      contains_all(error_of("[limits]\nhello_timeout_ms = 0\n"),
                   {"shmbusd.toml:2:20: ", "limits.hello_timeout_ms = 0", "from 100 to 86400000"}));
  EXPECT_TRUE(contains_all(error_of("[limits]\nmax_unread_reply_bytes = \"1MiB\"\n"),
                           {"shmbusd.toml:2:26: ", "limits.max_unread_reply_bytes = \"1MiB\"",
                            "must be from 2 MiB", "to 1 GiB"}));
}

TEST(ConfigErrors, IdleTtl) {
  EXPECT_TRUE(contains_all(error_of("[bus]\nidle_ttl_seconds = -1\n"),
                           {"shmbusd.toml:2:20: ", "bus.idle_ttl_seconds = -1", "from 0 to",
                            "0 means idle channels are never reclaimed"}));
  EXPECT_TRUE(contains_all(error_of("[bus]\nidle_ttl_seconds = \"60s\"\n"),
                           {"bus.idle_ttl_seconds", "must be an integer"}));
}

TEST(ConfigErrors, Booleans) {
  for (std::string_view value : {"\"true\"", "1", "\"yes\""}) {
    EXPECT_TRUE(contains_all(
        error_of("[[channel]]\npattern = \"a\"\nback_pressure = " + std::string(value) + "\n"),
        {"shmbusd.toml:3:17: ", "channel[1].back_pressure = ", "true or false", "without quotes"}));
  }
}

TEST(ConfigErrors, Patterns) {
  EXPECT_TRUE(
      contains_all(error_of("[[channel]]\nring_bytes = 4096\n"),
                   {"shmbusd.toml:1:1: ", "channel[1] has no pattern", "pattern = \"user:*\""}));
  EXPECT_TRUE(contains_all(
      error_of("[[channel]]\npattern = \"a\"\n[[channel]]\npattern = \"\"\n"),
      {"shmbusd.toml:4:11: ", "channel[2].pattern = \"\"", "non-empty", "at most 1024 bytes"}));
  EXPECT_TRUE(contains_all(error_of("[[channel]]\npattern = \"" + std::string(1025, 'x') + "\"\n"),
                           {"shmbusd.toml:2:11: ", "channel[1].pattern", "at most 1024 bytes"}));
  EXPECT_NO_THROW(parse_config("[[channel]]\npattern = \"" + std::string(1024, 'x') + "\"\n", "x"));
  EXPECT_TRUE(contains_all(error_of("[[channel]]\npattern = 5\n"),
                           {"shmbusd.toml:2:11: ", "channel[1].pattern = 5", "Redis glob"}));
  EXPECT_TRUE(contains_all(error_of("[[channel]]\npattern = \"a*\"\n[[channel]]\npattern = \"b\"\n"
                                    "[[channel]]\npattern = \"a*\"\n"),
                           {"shmbusd.toml:6:11: ", "channel[3].pattern \"a*\" repeats channel[1]'s",
                            "would never apply"}));
}

TEST(ConfigErrors, MessagesStayOnOneLine) {
  const std::string message = error_of("[[channel]]\npattern = \"a\\nb\"\nring_bytes = 1\n");
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
}

// --- files ----------------------------------------------------------------------------------

TEST(ConfigFiles, MissingFileNamesPathAndReason) {
  const std::string path = "/nonexistent-dir-for-shmbus-test/shmbusd.toml";
  try {
    load_config(path);
    FAIL() << "loaded a missing file";
  } catch (const ConfigError& e) {
    EXPECT_TRUE(contains_all(e.what(), {path, "No such file or directory"}));
  }
}

TEST(ConfigFiles, DirectoryIsAnError) {
  try {
    load_config(SHMBUS_SOURCE_DIR "/daemon");
    FAIL() << "loaded a directory";
  } catch (const ConfigError& e) {
    EXPECT_TRUE(contains_all(e.what(), {SHMBUS_SOURCE_DIR "/daemon: ", "Is a directory"}));
  }
}

TEST(ConfigFiles, ErrorsInAFileStartWithItsPath) {
  const std::string path = ::testing::TempDir() + "shmbus_config_test.toml";
  {
    std::ofstream out(path);
    out << "[limits]\nmax_channels = 0\n";
  }
  try {
    load_config(path);
    FAIL() << "accepted max_channels = 0";
  } catch (const ConfigError& e) {
    EXPECT_TRUE(starts_with(e.what(), path + ":2:16: ")) << e.what();
  }
  std::remove(path.c_str());
}

}  // namespace

// --- access rules ---------------------------------------------------------------------------

TEST(Config, AccessRulesResolveNamesAndDecideByTheFirstMatch) {
  const Config config = parse_config(
      "[[access]]\npattern = \"orders:vip:*\"\npublish = [\"root\"]\n"
      "[[access]]\npattern = \"orders:*\"\npublish = [\"1001\", \"@1002\"]\n"
      "subscribe = [\"*\"]\n",
      "access.toml");
  ASSERT_EQ(config.access.size(), 2u);
  EXPECT_EQ(config.access[0].publish[0].kind, Principal::Kind::kUser);
  EXPECT_EQ(config.access[0].publish[0].id, 0u);  // root, by name
  EXPECT_EQ(config.access_class_of("orders:vip:1"), 1u);
  EXPECT_EQ(config.access_class_of("orders:1"), 2u);
  EXPECT_EQ(config.access_class_of("news:1"), 0u);
  const PeerIdentity stranger{4000, 4000, {}};
  // Class 1 lets nobody subscribe (the key is left out) and only root publish.
  EXPECT_FALSE(config.may_subscribe(1, stranger, 999));
  EXPECT_FALSE(config.may_publish(1, stranger, 999));
  EXPECT_TRUE(config.may_publish(1, PeerIdentity{999, 999, {}}, 999));  // the daemon's user
  EXPECT_TRUE(config.may_publish(2, PeerIdentity{1001, 1001, {}}, 999));
  EXPECT_TRUE(config.may_publish(2, PeerIdentity{4000, 1002, {}}, 999));  // primary group
  EXPECT_TRUE(config.may_subscribe(2, stranger, 999));
  EXPECT_TRUE(config.may_publish(0, stranger, 999));  // no rule: open
}

TEST(ConfigErrors, AccessRulesNameTheProblemAndTheForms) {
  EXPECT_TRUE(
      contains_all(error_of("[[access]]\npattern = \"a:*\"\npublish = [\"no-such-user-xyz\"]\n"),
                   {"access[1].publish[1]", "no such user 'no-such-user-xyz'", "\"@orders\""}));
  EXPECT_TRUE(contains_all(
      error_of("[[access]]\npattern = \"a:*\"\nsubscribe = [\"@no-such-group-xyz\"]\n"),
      {"access[1].subscribe[1]", "no such group 'no-such-group-xyz'"}));
  EXPECT_TRUE(contains_all(error_of("[[access]]\npattern = \"a:*\"\npublish = \"root\"\n"),
                           {"access[1].publish", "must be a list"}));
  EXPECT_TRUE(
      contains_all(error_of("[[access]]\npublish = [\"root\"]\n"), {"access[1] has no pattern"}));
  EXPECT_TRUE(contains_all(error_of("[[access]]\npattern = \"a:*\"\nreaders = []\n"),
                           {"unknown key 'access[1].readers'", "pattern, publish, subscribe"}));
  EXPECT_TRUE(
      contains_all(error_of("[[access]]\npattern = \"a:*\"\n[[access]]\npattern = \"a:*\"\n"),
                   {"access[2].pattern", "repeats access[1]"}));
}

namespace {

// SIGHUP: what a reload may change while the bus runs, and what it keeps (reload.hpp).
TEST(Reload, LimitsRulesAndWhoMayChangeTheLayoutDoesNot) {
  const Config running = parse_config(R"(
[bus]
arena_bytes = "64 MiB"
[limits]
max_channels = 1000
max_channels_per_user = 10
[[channel]]
pattern = "video:*"
ring_bytes = "1 MiB"
[[access]]
pattern = "orders:*"
publish = ["root"]
subscribe = ["root"]
)",
                                      "running.toml");
  const Config loaded = parse_config(R"(
[bus]
arena_bytes = "128 MiB"
[limits]
max_channels = 2000
max_channels_per_user = 50
hello_timeout_ms = 1000
[[channel]]
pattern = "video:*"
ring_bytes = "2 MiB"
[[access]]
pattern = "orders:*"
publish = ["root", "0"]
subscribe = ["root"]
)",
                                     "loaded.toml");
  const ReloadPlan plan = plan_reload(running, loaded);
  // Changed now.
  EXPECT_EQ(plan.config.max_channels_per_user, 50u);
  EXPECT_EQ(plan.config.hello_timeout, std::chrono::milliseconds(1000));
  EXPECT_EQ(plan.config.settings_for("video:1").ring_bytes, 2u << 20);
  EXPECT_EQ(plan.config.access, loaded.access);  // the same patterns: who they admit changes
  EXPECT_EQ(plan.changed, (std::vector<std::string>{"limits.max_channels_per_user",
                                                    "limits.hello_timeout_ms", "[[channel]] rules",
                                                    "[[access]] publishers and subscribers"}));
  // Kept: the shared memory is laid out by them.
  EXPECT_EQ(plan.config.arena_bytes, running.arena_bytes);
  EXPECT_EQ(plan.config.max_channels, 1000u);
  EXPECT_EQ(plan.need_restart,
            (std::vector<std::string>{"bus.arena_bytes", "limits.max_channels"}));
}

TEST(Reload, NewAccessPatternsWaitForARestart) {
  const Config running = parse_config("[[access]]\npattern = \"a:*\"\npublish = [\"root\"]\n", "r");
  const Config loaded = parse_config(
      "[[access]]\npattern = \"b:*\"\npublish = [\"root\"]\n[limits]\nmax_clients = 10\n", "l");
  const ReloadPlan plan = plan_reload(running, loaded);
  EXPECT_EQ(plan.config.access, running.access);
  EXPECT_EQ(plan.config.max_clients, running.max_clients);
  EXPECT_EQ(plan.need_restart,
            (std::vector<std::string>{"limits.max_clients", "[[access]] patterns"}));
  EXPECT_TRUE(plan.changed.empty());
  // Nothing changed at all: nothing to say.
  const ReloadPlan same = plan_reload(running, running);
  EXPECT_TRUE(same.changed.empty());
  EXPECT_TRUE(same.need_restart.empty());
}

}  // namespace

}  // namespace shmbus::daemon
