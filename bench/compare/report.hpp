// The plan of a comparison run (its cells), the outcomes of every run of every cell on every
// system, and their presentation: Markdown tables with shmbus's ratio to each peer, the
// goals of issue 4 checked against them, and the JSON document charts.py draws from.
#pragma once

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "machine.hpp"
#include "systems.hpp"

namespace shmbus::compare {

struct Settings {
  bool quick = false;
  int runs = 3;
  std::string json_path;
  std::vector<std::string> systems;    // empty: all that are built
  std::vector<std::string> workloads;  // empty: all
};

enum class Workload { kLatency, kThroughput, kPatterns, kLate };

// One measurement, run on every system `runs` times.
struct Cell {
  Workload workload = Workload::kLatency;
  std::string key;    // "latency/busy/64": names the cell in JSON and the charts
  std::string label;  // "latency, busy-polling, 64 B": progress lines and footnotes
  std::string mode;   // latency: busy | blocking | sparse
  uint64_t bytes = 64;
  int publishers = 1;
  int subscribers = 1;
  uint64_t patterns = 0;  // pattern subscriptions present (patterns workload)
  uint64_t messages = 0;  // published before the late subscriber comes
};

std::string workload_name(Workload w);

// One run of a cell on one system: its figures, or why it failed.
struct Outcome {
  bool ok = false;
  nlohmann::json metrics;
  std::string error;
};

struct SystemStatus {
  const System* system = nullptr;
  bool ran = false;    // built and its server started
  std::string status;  // "not built (libiceoryx-posh-dev missing)", "failed to start: ..."
  std::string version;
};

struct Report {
  Settings settings;
  std::string command;
  Machine machine;
  std::string load_average_at_end;
  double seconds = 0;
  bool interrupted = false;
  std::vector<Cell> cells;
  std::vector<SystemStatus> systems;
  // cell key -> system id -> one outcome per run
  std::map<std::string, std::map<std::string, std::vector<Outcome>>> outcomes;
};

void print_report(const Report& report, std::FILE* out);
nlohmann::json report_json(const Report& report);

}  // namespace shmbus::compare
