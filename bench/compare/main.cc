// bench/compare: the same workloads on shmbus and on every peer found at build time
// (iceoryx, Redis Pub/Sub, ZeroMQ ipc://, Unix domain sockets), side by side.
//
//   shmbus-compare [--quick] [--runs N] [--json FILE] [--systems shmbus,redis,...]
//                  [--workloads latency,throughput,patterns,late]
//   shmbus bench --compare ...           (the same, through the CLI)
//
// Every cell runs `--runs` times, interleaved (run 1 of everything, then run 2...). Each run
// starts the peers' servers afresh (an in-process shmbusd, iox-roudi, redis-server) and runs
// each cell in new child processes (this program re-executed with --child), pinned to their
// own CPUs where there are enough. It prints Markdown tables with shmbus's ratio to each peer and,
// with --json, every raw figure for bench/compare/charts.py. A peer that is missing or fails
// is reported, never fatal; the exit status is non-zero only if shmbus itself failed.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include <CLI/CLI.hpp>

#include "bench_support.hpp"
#include "harness.hpp"
#include "machine.hpp"
#include "naming.hpp"
#include "process.hpp"
#include "report.hpp"
#include "systems.hpp"
#include "workloads.hpp"

namespace shmbus::compare {
namespace {

// ---- a child ------------------------------------------------------------------------------

void write_all(int fd, const std::string& text) {
  const char* p = text.data();
  size_t left = text.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the harness is gone; nobody to tell
    p += n;
    left -= static_cast<size_t>(n);
  }
}

int child_main(const char* spec_text) {
  nlohmann::json out;
  int status = 0;
  try {
    const ChildSpec spec = nlohmann::json::parse(spec_text).get<ChildSpec>();
    if (spec.cpu >= 0) bench::pin_to_cpu(spec.cpu);
    ControlPage& page = map_inherited_control_page();
    const System* system = find_system(spec.system);
    if (!system || !system->run_child) throw Failure(spec.system + " is not built");
    out["result"] = system->run_child(spec, page);
  } catch (const std::exception& e) {
    out = {{"error", e.what()}};
    status = 1;
  }
  write_all(kResultFd, out.dump());
  ::close(kResultFd);  // the harness sees the result now, even if exiting takes a while
  return status;
}

// ---- the plan -----------------------------------------------------------------------------

constexpr uint64_t kLatencyPayloads[] = {64, 4096, 64 * 1024, 1024 * 1024};
constexpr uint64_t kThroughputPayloads[] = {64, 4096};
constexpr std::pair<int, int> kFans[] = {{1, 1}, {1, 4}, {4, 1}};
constexpr uint64_t kPatternCounts[] = {0, 1000, 10000};
constexpr uint64_t kLateMessages = 1000;
constexpr int64_t kSparseGapNs = kMillisecond;
// The sender spins this long for the receiver's acknowledgement before it sleeps: a system
// that delivers sooner runs back to back (ping-pong pace) with the sender's caches warm; a
// slower one gets the sender's CPU back for its server or I/O threads.
constexpr int64_t kAckSpinNs = 50'000;

bool wanted(const std::vector<std::string>& filter, const std::string& name) {
  return filter.empty() || std::find(filter.begin(), filter.end(), name) != filter.end();
}

std::vector<Cell> make_plan(const Settings& settings) {
  std::vector<Cell> cells;
  if (wanted(settings.workloads, "latency")) {
    for (const std::string mode : {"busy", "blocking"})
      for (uint64_t bytes : kLatencyPayloads) {
        Cell c;
        c.workload = Workload::kLatency;
        c.mode = mode;
        c.bytes = bytes;
        c.key = "latency/" + mode + "/" + std::to_string(bytes);
        c.label = "latency, " + mode + ", " + human_bytes(bytes);
        cells.push_back(c);
      }
    Cell sparse;
    sparse.workload = Workload::kLatency;
    sparse.mode = "sparse";
    sparse.key = "latency/sparse/64";
    sparse.label = "latency, blocking, 1 per ms, 64 B";
    cells.push_back(sparse);
  }
  if (wanted(settings.workloads, "throughput"))
    for (const auto& [publishers, subscribers] : kFans)
      for (uint64_t bytes : kThroughputPayloads) {
        Cell c;
        c.workload = Workload::kThroughput;
        c.bytes = bytes;
        c.publishers = publishers;
        c.subscribers = subscribers;
        const std::string fan = std::to_string(publishers) + "x" + std::to_string(subscribers);
        c.key = "throughput/" + fan + "/" + std::to_string(bytes);
        c.label = "throughput, " + std::to_string(publishers) + " → " +
                  std::to_string(subscribers) + ", " + human_bytes(bytes);
        cells.push_back(c);
      }
  if (wanted(settings.workloads, "patterns"))
    for (uint64_t n : kPatternCounts) {
      Cell c;
      c.workload = Workload::kPatterns;
      c.patterns = n;
      c.key = "patterns/" + std::to_string(n);
      c.label = "publish rate, " + std::to_string(n) + " patterns";
      cells.push_back(c);
    }
  if (wanted(settings.workloads, "late")) {
    Cell c;
    c.workload = Workload::kLate;
    c.messages = kLateMessages;
    c.key = "late/" + std::to_string(kLateMessages);
    c.label = "late subscriber";
    cells.push_back(c);
  }
  return cells;
}

// ---- running a cell -----------------------------------------------------------------------

struct CellContext {
  const Session& session;
  const Settings& settings;
  const System& system;
  const Server& server;
  int number;  // unique in this harness run: names the cell's channels and logs
};

ChildSpec base_spec(const Cell& cell, const CellContext& ctx, const std::string& role) {
  ChildSpec spec;
  spec.system = ctx.system.id;
  spec.role = role;
  const std::string name = cell.workload == Workload::kPatterns ? "rate" : workload_name(cell.workload);
  spec.topic = name + "-" + std::to_string(cell.bytes) + "-" + std::to_string(ctx.number);
  spec.payload_bytes = cell.bytes;
  ctx.server.locate(spec);
  return spec;
}

// Two CPUs or more: the sender on CPU 0 and the receiver on CPU 1.
bool can_pin(int processes) { return sysconf(_SC_NPROCESSORS_ONLN) >= std::max(2, processes); }

nlohmann::json run_latency(const Cell& cell, const CellContext& ctx, CellProcesses& procs) {
  const bool quick = ctx.settings.quick;
  ChildSpec receiver = base_spec(cell, ctx, "latency-receiver");
  receiver.wait = cell.mode == "busy" ? Wait::kBusy : Wait::kBlocking;
  if (cell.mode == "sparse") {
    receiver.warmup = 10;
    receiver.max_samples = quick ? 50 : 500;
    receiver.measure_ns = 10 * kSecond;  // the sample count ends it
    receiver.gap_ns = kSparseGapNs;
  } else {
    const bool large = cell.bytes > 4096;
    receiver.warmup = large ? 50 : 1000;
    receiver.max_samples = quick ? 500 : cell.bytes >= (1 << 20) ? 2000 : large ? 10000 : 20000;
    receiver.measure_ns = quick ? 100 * kMillisecond : 700 * kMillisecond;
  }
  if (cell.mode != "sparse") receiver.ack_spin_ns = kAckSpinNs;
  const bool pin = can_pin(2);
  receiver.cpu = pin ? 1 : -1;
  ChildSpec sender = receiver;
  sender.role = "latency-sender";
  sender.cpu = pin ? 0 : -1;
  const size_t rx = procs.spawn(receiver);
  const size_t tx = procs.spawn(sender);
  const int64_t deadline = mono_ns() + 90 * kSecond;
  procs.collect(tx, deadline);
  return procs.collect(rx, deadline);
}

nlohmann::json run_throughput(const Cell& cell, const CellContext& ctx, CellProcesses& procs) {
  const bool quick = ctx.settings.quick;
  const bool pin = can_pin(cell.publishers + cell.subscribers);
  ChildSpec spec = base_spec(cell, ctx, "throughput-subscriber");
  spec.publishers = cell.publishers;
  spec.subscribers = cell.subscribers;
  spec.lossless = true;
  spec.duration_ns = quick ? 100 * kMillisecond : 500 * kMillisecond;
  spec.warmup_messages = (cell.bytes <= 64 ? 10000 : 2000) / (quick ? 10 : 1);
  std::vector<size_t> subscribers, publishers;
  for (int i = 0; i < cell.subscribers; ++i) {
    spec.cpu = pin ? 1 : -1;
    subscribers.push_back(procs.spawn(spec));
  }
  spec.role = "throughput-publisher";
  for (int i = 0; i < cell.publishers; ++i) {
    spec.publisher_index = i;
    spec.cpu = pin ? 0 : -1;
    publishers.push_back(procs.spawn(spec));
  }
  const int64_t deadline = mono_ns() + 120 * kSecond;
  uint64_t received = 0;
  int64_t end = 0;
  for (size_t s : subscribers) {
    const auto r = procs.collect(s, deadline);
    received += r["received"].get<uint64_t>();
    end = std::max(end, r["end_ns"].get<int64_t>());
  }
  procs.page().stop.set(1);
  uint64_t sent = 0;
  int64_t start = INT64_MAX;
  for (size_t p : publishers) {
    const auto r = procs.collect(p, deadline);
    sent += r["sent"].get<uint64_t>();
    start = std::min(start, r["start_ns"].get<int64_t>());
  }
  if (end <= start) throw Failure("no measured message was delivered");
  const uint64_t expected = sent * static_cast<uint64_t>(cell.subscribers);
  const double seconds = static_cast<double>(end - start) / 1e9;
  return {{"deliveries_per_s", static_cast<double>(received) / seconds},
          {"sent", sent},
          {"received", received},
          {"lost", expected > received ? expected - received : 0},
          {"seconds", seconds}};
}

nlohmann::json run_patterns(const Cell& cell, const CellContext& ctx, CellProcesses& procs) {
  nlohmann::json holder_result;
  std::optional<size_t> holder;
  if (cell.patterns > 0) {
    ChildSpec spec = base_spec(cell, ctx, "pattern-holder");
    spec.patterns = cell.patterns;
    holder = procs.spawn(spec);
    procs.wait_for(procs.page().ready, 1, mono_ns() + 120 * kSecond,
                   "the pattern subscriber did not subscribe within 120 s");
  }
  ChildSpec publisher = base_spec(cell, ctx, "rate-publisher");
  publisher.duration_ns = ctx.settings.quick ? 100 * kMillisecond : 500 * kMillisecond;
  publisher.cpu = can_pin(2) ? 0 : -1;
  const int64_t deadline = mono_ns() + 60 * kSecond;
  nlohmann::json result = procs.collect(procs.spawn(publisher), deadline);
  procs.page().stop.set(1);
  if (holder) result["subscribe_seconds"] = procs.collect(*holder, deadline)["subscribe_seconds"];
  return result;
}

nlohmann::json run_late(const Cell& cell, const CellContext& ctx, CellProcesses& procs) {
  ChildSpec publisher = base_spec(cell, ctx, "late-publisher");
  publisher.messages = cell.messages;
  publisher.history = true;
  const size_t pub = procs.spawn(publisher);
  procs.wait_for(procs.page().published, 1, mono_ns() + 60 * kSecond,
                 "the publisher did not publish within 60 s");
  ChildSpec subscriber = publisher;
  subscriber.role = "late-subscriber";
  const int64_t deadline = mono_ns() + 60 * kSecond;
  nlohmann::json result = procs.collect(procs.spawn(subscriber), deadline);
  procs.page().stop.set(1);
  procs.collect(pub, deadline);
  result["published"] = cell.messages;
  return result;
}

Outcome run_cell(const Cell& cell, const CellContext& ctx) {
  Outcome outcome;
  try {
    CellProcesses procs(ctx.session, ctx.system.id + "-" + std::to_string(ctx.number));
    switch (cell.workload) {
      case Workload::kLatency: outcome.metrics = run_latency(cell, ctx, procs); break;
      case Workload::kThroughput: outcome.metrics = run_throughput(cell, ctx, procs); break;
      case Workload::kPatterns: outcome.metrics = run_patterns(cell, ctx, procs); break;
      case Workload::kLate: outcome.metrics = run_late(cell, ctx, procs); break;
    }
    outcome.ok = true;
  } catch (const std::exception& e) {
    outcome.error = e.what();
  }
  return outcome;
}

std::string headline(const Cell& cell, const Outcome& o) {
  if (!o.ok) return "FAILED: " + o.error;
  char text[128];
  switch (cell.workload) {
    case Workload::kLatency:
      std::snprintf(text, sizeof text, "p50 %.2f µs  p99 %.2f µs  (%llu samples)",
                    o.metrics["p50_ns"].get<double>() / 1e3, o.metrics["p99_ns"].get<double>() / 1e3,
                    static_cast<unsigned long long>(o.metrics["samples"].get<uint64_t>()));
      break;
    case Workload::kThroughput:
      std::snprintf(text, sizeof text, "%.3f M deliveries/s, %llu lost",
                    o.metrics["deliveries_per_s"].get<double>() / 1e6,
                    static_cast<unsigned long long>(o.metrics["lost"].get<uint64_t>()));
      break;
    case Workload::kPatterns:
      std::snprintf(text, sizeof text, "%.3f M publishes/s",
                    o.metrics["publishes_per_s"].get<double>() / 1e6);
      break;
    case Workload::kLate:
      std::snprintf(text, sizeof text, "%llu delivered",
                    static_cast<unsigned long long>(o.metrics["delivered"].get<uint64_t>()));
      break;
  }
  return text;
}

// ---- the session --------------------------------------------------------------------------

std::string command_line(int argc, char** argv) {
  std::string out;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a.find_first_of(" '\"$") != std::string::npos) a = "'" + a + "'";
    out += (i ? " " : "") + a;
  }
  return out;
}

int run_harness(const Settings& settings, const std::string& command) {
  install_interrupt_handler();
  char dir_template[] = "/tmp/shmbus-compare.XXXXXX";
  if (!mkdtemp(dir_template)) throw Failure("cannot create a temporary directory in /tmp");
  const Session session{dir_template, getpid()};

  Report report;
  report.settings = settings;
  report.command = command;
  report.machine = describe_machine();
  report.cells = make_plan(settings);
  const int64_t started = mono_ns();

  // Systems this run compares; a peer whose server fails at the first start is out.
  for (const System& system : all_systems()) {
    if (!wanted(settings.systems, system.id)) continue;
    SystemStatus status;
    status.system = &system;
    status.ran = system.built;
    if (!system.built) status.status = "not built (" + system.not_built + ")";
    else status.version = system.version();
    report.systems.push_back(status);
  }

  int number = 0;
  bool shmbus_failed = false;
  for (int run = 1; run <= settings.runs && !interrupted(); ++run) {
    // Fresh servers for every run, so no run inherits what an earlier one left in a server:
    // a redis-server that once held 10,000 patterns publishes 30x slower after they are
    // gone, for example. A server that does not start takes only its system out.
    std::map<std::string, std::unique_ptr<Server>> servers;
    for (SystemStatus& status : report.systems) {
      if (!status.ran) continue;
      try {
        servers[status.system->id] = status.system->start(session);
        if (run == 1) status.status = "ran";
      } catch (const std::exception& e) {
        if (run == 1) {
          status.ran = false;
          status.status = std::string("failed to start: ") + e.what();
        }
        servers[status.system->id] = nullptr;
      }
      if (run == 1) std::fprintf(stderr, "%s: %s\n", status.system->label.c_str(), status.status.c_str());
    }
    for (const Cell& cell : report.cells) {
      for (const SystemStatus& status : report.systems) {
        if (interrupted()) break;
        if (!status.ran) continue;
        if (cell.workload == Workload::kPatterns && !status.system->has_patterns) continue;
        Outcome outcome;
        if (const Server* server = servers[status.system->id].get()) {
          outcome = run_cell(cell, CellContext{session, settings, *status.system, *server, ++number});
        } else {
          outcome.error = "its server did not start for run " + std::to_string(run);
        }
        if (interrupted()) break;  // a cell cut short is no figure
        shmbus_failed |= !outcome.ok && status.system->id == "shmbus";
        std::fprintf(stderr, "[run %d/%d] %-36s %-13s %s\n", run, settings.runs, cell.label.c_str(),
                     status.system->label.c_str(), headline(cell, outcome).c_str());
        report.outcomes[cell.key][status.system->id].push_back(outcome);
      }
    }
    servers.clear();  // stopped before the next run starts them again
  }
  std::error_code ec;
  std::filesystem::remove_all(session.dir, ec);

  report.interrupted = interrupted();
  report.seconds = static_cast<double>(mono_ns() - started) / 1e9;
  report.load_average_at_end = current_load_average();
  print_report(report, stdout);
  if (!settings.json_path.empty()) {
    std::ofstream out(settings.json_path);
    out << report_json(report).dump(1) << '\n';
    if (!out) throw Failure("cannot write " + settings.json_path);
  }
  if (report.interrupted) return 130;
  return shmbus_failed ? 1 : 0;
}

int harness_main(int argc, char** argv) {
  Settings settings;
  CLI::App app{
      "Runs the same pub/sub workloads on shmbus and on iceoryx, Redis, ZeroMQ and Unix sockets "
      "(those found at build time) and prints them side by side with shmbus's ratio to each.",
      "shmbus-compare"};
  app.add_flag("--quick", settings.quick, "Small counts and one run (a smoke test, minutes → seconds)");
  app.add_option("--runs", settings.runs, "Runs of every figure, reported as min/median/max")
      ->check(CLI::Range(1, 20));
  app.add_option("--json", settings.json_path, "Also write every raw figure to FILE (for charts.py)");
  app.add_option("--systems", settings.systems, "Only these: shmbus,iceoryx,redis,zeromq,uds")
      ->delimiter(',')
      ->check(CLI::IsMember({"shmbus", "iceoryx", "redis", "zeromq", "uds"}));
  app.add_option("--workloads", settings.workloads, "Only these: latency,throughput,patterns,late")
      ->delimiter(',')
      ->check(CLI::IsMember({"latency", "throughput", "patterns", "late"}));
  CLI11_PARSE(app, argc, argv);
  bool runs_given = app.count("--runs") > 0;
  if (settings.quick && !runs_given) settings.runs = 1;
  return run_harness(settings, command_line(argc, argv));
}

}  // namespace
}  // namespace shmbus::compare

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--child") return shmbus::compare::child_main(argv[2]);
  try {
    return shmbus::compare::harness_main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "compare: %s\n", e.what());
    return 1;
  }
}
