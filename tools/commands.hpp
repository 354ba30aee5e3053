// The shmbus subcommands. Each returns the process exit code and throws shmbus::Error or
// std::exception on failure (main prints those as one line).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "output.hpp"
#include "shmbus/bus.hpp"

namespace shmbus::cli {

struct GlobalOptions {
  ConnectOptions connect;
  OutputStyle style = OutputStyle::kRaw;
};

struct PubOptions {
  std::string channel;
  std::string message;         // "-": one message per line of stdin
  uint64_t count = 0;          // 0: not given
  double rate = 0;             // messages per second; 0: as fast as possible
};
int run_pub(const GlobalOptions& global, const PubOptions& options);

struct SubOptions {
  std::vector<std::string> names;  // channels, or patterns for psub
  bool patterns = false;
  std::string from = "latest";     // earliest | latest | a sequence number (sub only)
  uint64_t count = 0;              // 0: until stopped
  double timeout_seconds = 0;      // idle time before exiting; 0: none
};
int run_sub(const GlobalOptions& global, const SubOptions& options);

int run_channels(const GlobalOptions& global, const std::string& pattern);
int run_numsub(const GlobalOptions& global, const std::vector<std::string>& channels);
int run_numpat(const GlobalOptions& global);
int run_ping(const GlobalOptions& global);

struct StatsOptions {
  std::string pattern;
  bool watch = false;
  double interval_seconds = 1;
  uint32_t top = 20;
  uint64_t iterations = 0;  // 0: until stopped
};
int run_stats(const GlobalOptions& global, const StatsOptions& options);

// Replaces this process with the comparison harness, passing it `harness_args`; returns only
// by throwing when the harness cannot be found or run.
int run_bench_compare(const std::vector<std::string>& harness_args);

}  // namespace shmbus::cli
