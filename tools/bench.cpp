// shmbus bench --compare: runs the comparison harness (bench/compare), a program of its own
// because it links every peer's client library (iceoryx, hiredis, libzmq), which the CLI
// must not need. It is found relative to this binary: ../bench/shmbus-compare in the build
// tree, then the installed SHMBUS_COMPARE_INSTALL_PATH (libexecdir/shmbus).
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "commands.hpp"

namespace shmbus::cli {

namespace {

std::string own_directory() {
  char path[4096];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
  if (n <= 0) return ".";
  const std::string exe(path, static_cast<size_t>(n));
  return exe.substr(0, exe.find_last_of('/'));
}

}  // namespace

int run_bench_compare(const std::vector<std::string>& harness_args) {
  const std::vector<std::string> candidates = {own_directory() + "/" SHMBUS_COMPARE_BUILD_PATH,
                                               SHMBUS_COMPARE_INSTALL_PATH};
  for (const auto& path : candidates) {
    if (access(path.c_str(), X_OK) != 0) continue;
    std::vector<char*> argv{const_cast<char*>(path.c_str())};
    for (const auto& a : harness_args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(path.c_str(), argv.data());
    throw std::runtime_error("cannot run " + path + ": " + std::strerror(errno));
  }
  throw std::runtime_error("the comparison harness is not built (looked for " + candidates[0] +
                           " and " + candidates[1] +
                           "); it comes with the benchmarks (libbenchmark-dev), see "
                           "docs/BENCHMARKS.md");
}

}  // namespace shmbus::cli
