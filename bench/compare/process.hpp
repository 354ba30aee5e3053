// Processes the harness starts: the children of a cell (this program re-executed with
// --child) and the peers' servers (iox-roudi, redis-server). Every wait is bounded, every
// process is killed by its pid if the harness fails or is interrupted, and every child gets
// SIGKILL (servers SIGTERM, so they clean up) if the harness itself dies.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "harness.hpp"
#include "systems.hpp"

namespace shmbus::compare {

// The path of this executable, for re-executing it as a child.
const std::string& self_executable();

// SIGINT/SIGTERM: kill the running children at once (so bounded waits end) and let the
// harness stop its servers and print what it has.
void install_interrupt_handler();
bool interrupted();

std::string read_file(const std::string& path);
// The last `lines` non-empty lines of a file, joined with " | ": the reason a process gave.
std::string log_tail(const std::string& path, size_t lines = 3);

// A server for the whole session, its output in `log_path`.
class ServerProcess {
 public:
  ServerProcess(const std::vector<std::string>& argv, std::string log_path);
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  const std::string& log_path() const { return log_path_; }
  bool running();
  // SIGTERM, up to `grace` to exit, then SIGKILL. True if it exited on SIGTERM.
  bool stop(std::chrono::milliseconds grace = std::chrono::seconds(5));

 private:
  pid_t pid_ = -1;
  std::string log_path_;
};

// The child processes of one cell and their shared control page.
class CellProcesses {
 public:
  CellProcesses(const Session& session, std::string tag);
  ~CellProcesses();  // kills and reaps every child still running
  CellProcesses(const CellProcesses&) = delete;
  CellProcesses& operator=(const CellProcesses&) = delete;

  ControlPage& page() { return *page_; }
  // Starts a child for `spec`; returns its index.
  size_t spawn(const ChildSpec& spec);
  // The child's result once it has exited; throws Failure with the child's own error, or
  // the tail of its output if it gave none, or a timeout.
  nlohmann::json collect(size_t child, int64_t deadline_ns);
  // Waits until `signal` reaches `target`; a child failing meanwhile ends the wait with its
  // error, and the deadline with "timed out: `what`".
  void wait_for(Signal& signal, uint32_t target, int64_t deadline_ns, const std::string& what);

 private:
  struct Child;
  void reap(Child& child, bool wait);
  void fail_if_any_child_failed();
  [[noreturn]] void fail_with(Child& child);

  std::string tag_;
  std::string log_dir_;
  int control_fd_ = -1;
  ControlPage* page_ = nullptr;
  std::vector<std::unique_ptr<Child>> children_;
};

}  // namespace shmbus::compare
