// shmbus: the command-line client of a shmbus bus, in the manner of redis-cli's
// PUBLISH / SUBSCRIBE / PSUBSCRIBE / PUBSUB / PING, plus live channel statistics.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>

#include "commands.hpp"
#include "shmbus/error.hpp"
#include "verbatim_args.hpp"

namespace {

using namespace shmbus::cli;

// Exit codes: 1 for a failed command, 2 for a command line that cannot be run.
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

// Errors are reported as exactly one line, whatever the message holds.
void print_error(std::string message) {
  std::replace(message.begin(), message.end(), '\n', ' ');
  std::fflush(stdout);
  std::fprintf(stderr, "shmbus: %s\n", message.c_str());
}

const CLI::Validator kStartPosition(
    [](std::string& value) -> std::string {
      if (value == "earliest" || value == "latest") return {};
      if (!value.empty() && value.size() <= 20 &&
          std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return {};
      return "must be earliest, latest or a sequence number";
    },
    "earliest|latest|SEQ");

int run(int argc, char** argv) {
  CLI::App app{
      "shmbus - publish, subscribe and inspect a shmbus bus (shared-memory pub/sub)\n"
      "Output follows redis-cli: quoted and numbered on a terminal, raw lines otherwise.",
      "shmbus"};
  app.require_subcommand(1);
  // Global options are accepted after the subcommand too ("shmbus pub ch msg --json").
  app.fallthrough();

  GlobalOptions global;
  bool json = false, raw = false, no_raw = false;
  app.add_option("--bus", global.connect.bus, "Bus name (default: $SHMBUS_BUS or 'default')");
  app.add_option("--socket", global.connect.socket_path,
                 "Daemon socket (default: $SHMBUS_SOCKET or /run/shmbus/<bus>.sock)");
  auto* json_flag = app.add_flag("--json", json, "Machine-readable JSON output");
  auto* raw_flag = app.add_flag("--raw", raw, "Raw output (default when stdout is not a tty)");
  auto* no_raw_flag =
      app.add_flag("--no-raw", no_raw, "Formatted output even when stdout is not a tty");
  json_flag->excludes(raw_flag, no_raw_flag);
  raw_flag->excludes(no_raw_flag);

  PubOptions pub;
  auto* pub_cmd = app.add_subcommand("pub", "Publish a message (PUBLISH); prints the receivers");
  pub_cmd->add_option("channel", pub.channel, "Channel name")->required();
  pub_cmd->add_option("message", pub.message, "Message, or - to publish each line of stdin")
      ->required();
  pub_cmd->add_option("--count", pub.count, "Publish the message N times, then print a summary")
      ->check(CLI::PositiveNumber);
  pub_cmd
      ->add_option("--rate", pub.rate,
                   "Messages per second (0: as fast as possible); without --count, "
                   "publish until Ctrl-C")
      ->check(CLI::NonNegativeNumber);

  SubOptions sub;
  uint64_t sub_count = 0;
  double sub_timeout = 0;
  auto* sub_cmd = app.add_subcommand("sub", "Subscribe to channels (SUBSCRIBE) until Ctrl-C");
  sub_cmd->add_option("channels", sub.names, "Channel names")->required();
  sub_cmd
      ->add_option("--from", sub.from,
                   "Start at: latest (default), earliest (oldest still in the ring), or "
                   "sequence number N (first message wanted)")
      ->check(kStartPosition);

  SubOptions psub;
  psub.patterns = true;
  auto* psub_cmd =
      app.add_subcommand("psub", "Subscribe to glob patterns (PSUBSCRIBE) until Ctrl-C");
  psub_cmd->add_option("patterns", psub.names, "Redis glob patterns")->required();

  for (auto* cmd : {sub_cmd, psub_cmd}) {
    cmd->add_option("--count", sub_count, "Exit after N messages")->check(CLI::PositiveNumber);
    cmd->add_option("--timeout", sub_timeout, "Exit after SECONDS without a message")
        ->check(CLI::PositiveNumber);
  }

  std::string channels_pattern;
  auto* channels_cmd =
      app.add_subcommand("channels", "Channels with subscribers (PUBSUB CHANNELS)");
  channels_cmd->add_option("pattern", channels_pattern, "Only channels matching this glob");

  std::vector<std::string> numsub_channels;
  auto* numsub_cmd = app.add_subcommand("numsub", "Subscribers of each channel (PUBSUB NUMSUB)");
  numsub_cmd->add_option("channels", numsub_channels, "Channel names")->required();

  auto* numpat_cmd = app.add_subcommand("numpat", "Patterns subscribed on the bus (PUBSUB NUMPAT)");
  auto* ping_cmd = app.add_subcommand("ping", "Round trip to the daemon");

  StatsOptions stats;
  auto* stats_cmd = app.add_subcommand("stats", "Per-channel counters from shared memory");
  stats_cmd->add_option("pattern", stats.pattern, "Only channels matching this glob");
  stats_cmd->add_flag("--watch", stats.watch, "Live view with rates, refreshed every --interval");
  stats_cmd->add_option("--interval", stats.interval_seconds, "Seconds between refreshes")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  stats_cmd->add_option("--top", stats.top, "Rows shown by --watch (busiest first)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  stats_cmd
      ->add_option("--iterations", stats.iterations,
                   "Exit after N refreshes of --watch (default: until Ctrl-C)")
      ->check(CLI::PositiveNumber);

  bool bench_compare = false;
  auto* bench_cmd = app.add_subcommand(
      "bench",
      "Benchmarks: --compare runs shmbus side by side with iceoryx, Redis, ZeroMQ and Unix "
      "sockets; what follows --compare goes to the harness (--quick, --runs N, --json FILE, "
      "--systems, --workloads; --help lists them)");
  bench_cmd->add_flag("--compare", bench_compare, "Run the comparison harness (bench/compare)");
  // Everything after --compare is the harness's, --help and --json included.
  bench_cmd->prefix_command();
  bench_cmd->fallthrough(false);
  bench_cmd->set_help_flag();

  VerbatimArguments arguments(argc, argv);
  try {
    app.parse(arguments.argc(), arguments.argv());
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    print_error(std::string(e.what()) + " (see 'shmbus --help')");
    return kExitUsage;
  }
  // Names and patterns byte for byte, brackets included (verbatim_args.hpp).
  for (std::string* value : {&global.connect.bus, &global.connect.socket_path, &pub.channel,
                             &pub.message, &sub.from, &channels_pattern, &stats.pattern})
    arguments.restore(*value);
  for (std::vector<std::string>* values : {&sub.names, &psub.names, &numsub_channels})
    arguments.restore(*values);

  if (json)
    global.style = OutputStyle::kJson;
  else if (raw)
    global.style = OutputStyle::kRaw;
  else if (no_raw || isatty(STDOUT_FILENO))
    global.style = OutputStyle::kTty;
  else
    global.style = OutputStyle::kRaw;

  CLI::App* command = app.get_subcommands().front();
  global.connect.client_name = "shmbus " + command->get_name();
  if (command == pub_cmd) {
    if (pub.message == "-" && pub.count > 0) {
      print_error("--count cannot be combined with MESSAGE '-' (stdin gives the messages)");
      return kExitUsage;
    }
    return run_pub(global, pub);
  }
  if (command == sub_cmd || command == psub_cmd) {
    SubOptions& options = command == sub_cmd ? sub : psub;
    options.count = sub_count;
    options.timeout_seconds = sub_timeout;
    return run_sub(global, options);
  }
  if (command == channels_cmd) return run_channels(global, channels_pattern);
  if (command == numsub_cmd) return run_numsub(global, numsub_channels);
  if (command == numpat_cmd) return run_numpat(global);
  if (command == ping_cmd) return run_ping(global);
  if (command == stats_cmd) return run_stats(global, stats);
  if (command == bench_cmd) {
    if (!bench_compare) {
      print_error("bench needs --compare first: 'shmbus bench --compare [--quick] [--json FILE]'");
      return kExitUsage;
    }
    std::vector<std::string> harness_arguments = bench_cmd->remaining();
    arguments.restore(harness_arguments);
    return run_bench_compare(harness_arguments);
  }
  print_error("unknown command " + command->get_name());
  return kExitUsage;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const shmbus::Error& e) {
    print_error(e.what());
  } catch (const std::exception& e) {
    print_error(e.what());
  } catch (...) {
    print_error("unexpected error");
  }
  return kExitFailure;
}
