// Redis conformance through the shmbus command: seeded random scripts run against a real
// redis-server and against `shmbus` processes, compared as conformance_test.cc compares the
// library (conformance.hpp). Every name and payload goes through argv, byte for byte:
// glob metacharacters, brackets, a leading '-', bytes >= 0x80, payloads as large as the
// channel allows. Compared: `shmbus pub`'s receiver counts, `channels` / `numsub` /
// `numpat` (raw output), and what each `shmbus sub` and `psub` process printed (--json,
// names and payloads that are not UTF-8 in base64) - in order, across all its channels.
//
// A CLI subscriber cannot change what it holds, so here the subscriptions are fixed for a
// script; conformance_test.cc changes them mid-stream. Payloads hold no NUL byte (argv
// cannot).
//
//   SHMBUS_CONFORMANCE_CLI_SEEDS=50 conformance_cli_test   # a longer soak (default 6)
//   SHMBUS_CONFORMANCE_SEED=7 conformance_cli_test         # seed 7 alone
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "conformance.hpp"
#include "daemon_support.hpp"
#include "shmbus/shmbus.hpp"

extern char** environ;

namespace shmbus {
namespace {

using namespace std::chrono_literals;
using namespace conformance;

// Starts `argv` with stdout into `out_path` (stderr into `err_path`); its pid.
pid_t start(const std::vector<std::string>& argv, const std::string& out_path,
            const std::string& err_path) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0600);
  posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0600);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0].c_str(), &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) throw std::runtime_error("cannot start " + argv[0] + ": " + std::strerror(rc));
  return pid;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::string line;
  std::istringstream in(text);
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

std::string unbase64(const std::string& text) {
  static const std::string kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  uint32_t bits = 0;
  int count = 0;
  for (char c : text) {
    const size_t v = kAlphabet.find(c);
    if (v == std::string::npos) break;  // '=' padding ends it
    bits = (bits << 6) | static_cast<uint32_t>(v);
    count += 6;
    if (count >= 8) {
      count -= 8;
      out += static_cast<char>((bits >> count) & 0xff);
    }
  }
  return out;
}

// A field that --json prints as `key` (UTF-8) or `key_base64`.
std::string bytes_field(const nlohmann::json& j, const std::string& key) {
  if (j.contains(key)) return j[key].get<std::string>();
  if (j.contains(key + "_base64")) return unbase64(j[key + "_base64"].get<std::string>());
  return "";
}

class Cli {
 public:
  Cli(std::string binary, std::string bus, std::string socket, std::filesystem::path dir)
      : binary_(std::move(binary)),
        bus_(std::move(bus)),
        socket_(std::move(socket)),
        dir_(std::move(dir)) {}

  std::vector<std::string> argv(const std::string& output, const std::vector<std::string>& args) {
    std::vector<std::string> all{binary_, "--bus", bus_, "--socket", socket_, output};
    all.insert(all.end(), args.begin(), args.end());
    return all;
  }
  // Runs a command to its end: its stdout, or throws with its stderr.
  std::string run(const std::vector<std::string>& args) {
    const std::string out = (dir_ / "cmd.out").string(), err = (dir_ / "cmd.err").string();
    const pid_t pid = start(argv("--raw", args), out, err);
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      throw std::runtime_error("shmbus " + show(args[0]) + " failed: " + read_file(err));
    return read_file(out);
  }
  // Starts a subscriber (sub or psub) printing JSON into a file of its own.
  pid_t subscriber(int index, const std::string& command, const std::vector<std::string>& names) {
    std::vector<std::string> args{command, "--"};
    args.insert(args.end(), names.begin(), names.end());
    return start(argv("--json", args), out_path(index), (dir_ / "sub.err").string());
  }
  std::string out_path(int index) const {
    return (dir_ / ("sub" + std::to_string(index) + ".out")).string();
  }

 private:
  std::string binary_, bus_, socket_;
  std::filesystem::path dir_;
};

std::vector<Delivery> parse_deliveries(const std::string& text) {
  std::vector<Delivery> got;
  for (const std::string& line : lines_of(text)) {
    const auto j = nlohmann::json::parse(line);
    got.push_back({j["type"] == "pmessage", bytes_field(j, "pattern"), bytes_field(j, "channel"),
                   bytes_field(j, "payload"), j["lost_before"].get<uint64_t>()});
  }
  return got;
}

constexpr int kSubscribers = 4;  // two `sub`, two `psub`
constexpr int kSteps = 80;

std::string run_cli_script(uint32_t seed, const test::RedisServer& server,
                           const std::string& binary) {
  test::TestDaemon daemon(test::small_test_config(), "cfcli");
  const auto dir = std::filesystem::temp_directory_path() /
                   ("shmbus-cfcli-" + std::to_string(getpid()) + "-" + std::to_string(seed));
  std::filesystem::create_directories(dir);
  struct Cleanup {
    std::filesystem::path dir;
    std::vector<pid_t> pids;
    ~Cleanup() {
      for (pid_t pid : pids) {
        kill(pid, SIGKILL);
        waitpid(pid, nullptr, 0);
      }
      std::filesystem::remove_all(dir);
    }
  } cleanup{dir, {}};
  Cli cli(binary, daemon.bus(), daemon.socket_path(), dir);
  RedisSide redis(server, kSubscribers, 1);
  Bus bus = Bus::connect(daemon.options());
  Script script(seed, bus.channel(kChannels[0]).max_message_bytes());
  auto where = [&](int step, const std::string& what) {
    return "seed " + std::to_string(seed) + ", step " + std::to_string(step) + " (" + what + "): ";
  };

  // Fixed subscribers, on both sides.
  std::vector<std::vector<std::string>> held(kSubscribers);
  for (int i = 0; i < kSubscribers; ++i) {
    const bool patterns = i >= 2;
    held[i] = patterns ? script.some(kPatterns, 3) : script.some(kChannels, 4);
    redis.change(i, patterns ? "PSUBSCRIBE" : "SUBSCRIBE", held[i]);
    cleanup.pids.push_back(cli.subscriber(i, patterns ? "psub" : "sub", held[i]));
  }
  std::vector<std::vector<Delivery>> redis_got(kSubscribers);
  for (int i = 0; i < kSubscribers; ++i) redis.drain(i);  // the confirmations
  // Ready once the daemon counts every CLI subscription (NUMPAT counts distinct patterns).
  std::vector<std::string> patterns_held = held[2];
  patterns_held.insert(patterns_held.end(), held[3].begin(), held[3].end());
  std::sort(patterns_held.begin(), patterns_held.end());
  patterns_held.erase(std::unique(patterns_held.begin(), patterns_held.end()), patterns_held.end());
  auto ready = [&] {
    if (bus.numpat() != patterns_held.size()) return false;
    for (int i = 0; i < 2; ++i)
      for (const auto& c : bus.numsub(held[i]))
        if (c.subscribers == 0) return false;
    return true;
  };
  for (auto deadline = std::chrono::steady_clock::now() + 10s; !ready();) {
    if (std::chrono::steady_clock::now() > deadline) return where(0, "start") + "not subscribed";
    std::this_thread::sleep_for(5ms);
  }

  for (int step = 0; step < kSteps; ++step) {
    const size_t op = script.below(20);
    if (op < 14) {
      const std::string channel = kChannels[script.below(kChannels.size())];
      std::string payload = script.payload(step);
      std::replace(payload.begin(), payload.end(), '\0', '\x01');  // argv ends at a NUL
      const long long redis_count = redis.publish(0, channel, payload);
      const std::string count = cli.run({"pub", "--", channel, payload});
      if (count != std::to_string(redis_count) + "\n")
        return where(step, "pub " + show(channel)) + "Redis counted " +
               std::to_string(redis_count) + " receivers, shmbus printed " + show(count);
    } else if (op < 17) {
      const std::string pattern =
          script.below(3) == 0 ? "" : kPatterns[script.below(kPatterns.size())];
      const std::vector<std::string> redis_channels = redis.channels(pattern);
      std::vector<std::string> args{"channels"};
      if (!pattern.empty()) args.insert(args.end(), {"--", pattern});
      std::vector<std::string> ours = lines_of(cli.run(args));
      std::erase(ours, "");  // an empty reply is one empty line, as redis-cli --raw prints
      std::sort(ours.begin(), ours.end());
      if (redis_channels != ours)
        return where(step, "channels " + show(pattern)) + "Redis listed " +
               std::to_string(redis_channels.size()) + ", shmbus " + std::to_string(ours.size());
    } else {
      const auto names = script.some(kChannels, 3);
      const std::vector<long long> counts = redis.numsub(names);
      std::string expected;
      for (size_t k = 0; k < names.size() && k < counts.size(); ++k)
        expected += names[k] + "\n" + std::to_string(counts[k]) + "\n";
      std::vector<std::string> numsub{"numsub", "--"};
      numsub.insert(numsub.end(), names.begin(), names.end());
      if (cli.run(numsub) != expected)
        return where(step, "numsub") + "Redis answered " + show(expected);
      const long long redis_numpat = redis.numpat();
      if (cli.run({"numpat"}) != std::to_string(redis_numpat) + "\n")
        return where(step, "numpat") + "Redis answered " + std::to_string(redis_numpat);
    }
  }

  // What each subscriber printed, once it printed as much as Redis delivered (a CLI
  // subscriber that falls behind reports what it lost, in lost_before).
  for (int i = 0; i < kSubscribers; ++i) {
    redis_got[i] = redis.drain(i);
    for (auto deadline = std::chrono::steady_clock::now() + 10s;
         std::chrono::steady_clock::now() < deadline;) {
      const auto got = parse_deliveries(read_file(cli.out_path(i)));
      uint64_t accounted = got.size();
      for (const auto& d : got) accounted += d.lost_before;
      if (accounted >= redis_got[i].size()) break;
      std::this_thread::sleep_for(10ms);
    }
  }
  for (pid_t pid : cleanup.pids) {
    kill(pid, SIGTERM);
    waitpid(pid, nullptr, 0);
  }
  cleanup.pids.clear();
  for (int i = 0; i < kSubscribers; ++i) {
    const std::string difference =
        compare(redis_got[i], parse_deliveries(read_file(cli.out_path(i))));
    if (!difference.empty())
      return "seed " + std::to_string(seed) + ", subscriber " + std::to_string(i) + " (" +
             (i >= 2 ? "psub" : "sub") + "): " + difference;
  }
  return "";
}

TEST(ConformanceCli, RandomScriptsThroughTheCommandAgreeWithRedisServer) {
  const char* binary = std::getenv("SHMBUS_CLI");
  if (binary == nullptr) GTEST_SKIP() << "SKIPPED: SHMBUS_CLI (the shmbus binary) is not set";
  test::RedisServer server;
  if (!server.ok()) GTEST_SKIP() << "SKIPPED: " << server.error();
  const auto [first, last] = seed_range("SHMBUS_CONFORMANCE_CLI_SEEDS", 6);
  for (uint32_t seed = first; seed <= last; ++seed) {
    const std::string difference = run_cli_script(seed, server, binary);
    ASSERT_EQ(difference, "") << "rerun this seed alone: SHMBUS_CONFORMANCE_SEED=" << seed;
  }
}

}  // namespace
}  // namespace shmbus
