#include "process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <new>
#include <sstream>
#include <thread>

namespace shmbus::compare {
namespace {

// Children alive right now, for the interrupt handler (which may only use plain atomics
// and kill()).
std::array<std::atomic<pid_t>, 64> g_children{};
std::atomic<bool> g_interrupted{false};

void remember_child(pid_t pid) {
  for (auto& slot : g_children) {
    pid_t empty = 0;
    if (slot.compare_exchange_strong(empty, pid)) return;
  }
}

void forget_child(pid_t pid) {
  for (auto& slot : g_children) {
    pid_t expected = pid;
    if (slot.compare_exchange_strong(expected, 0)) return;
  }
}

void on_interrupt(int) {
  g_interrupted.store(true);
  for (auto& slot : g_children)
    if (const pid_t pid = slot.load(); pid > 0) kill(pid, SIGKILL);
}

// fork + exec with stdout/stderr appended to `log_path`, stdin from /dev/null, the control
// page and result pipe (when given) as fds 3 and 4, and `death_signal` sent to the process
// if the harness dies. Everything the child needs is prepared before fork(), so between
// fork and exec it only makes system calls (the harness may run the shmbus daemon thread).
pid_t spawn_process(const std::vector<std::string>& argv, const std::string& log_path,
                    int control_fd, int result_fd, int death_signal) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const char* log = log_path.c_str();
  const pid_t parent = getpid();
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  if (pid < 0) throw Failure(std::string("fork: ") + std::strerror(errno));
  if (pid > 0) return pid;
  prctl(PR_SET_PDEATHSIG, death_signal);
  if (getppid() != parent) _exit(127);  // the harness died before prctl took effect
  const int null_in = open("/dev/null", O_RDONLY);
  const int log_fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (null_in >= 0) dup2(null_in, STDIN_FILENO);
  if (log_fd >= 0) {
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
  }
  // Moved above 3 and 4 first, so that placing one cannot overwrite the other.
  const int control = control_fd >= 0 ? fcntl(control_fd, F_DUPFD, 16) : -1;
  const int result = result_fd >= 0 ? fcntl(result_fd, F_DUPFD, 16) : -1;
  if (control >= 0) dup2(control, kControlFd);
  if (result >= 0) dup2(result, kResultFd);
  close_range(result >= 0 ? kResultFd + 1 : kControlFd, ~0U, 0);
  execv(args[0], args.data());
  _exit(127);
}

std::string exit_description(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("killed by ") + strsignal(WTERMSIG(status));
  return "stopped";
}

}  // namespace

const std::string& self_executable() {
  static const std::string path = [] {
    char buffer[4096];
    const ssize_t n = readlink("/proc/self/exe", buffer, sizeof buffer - 1);
    if (n <= 0) throw Failure("cannot read /proc/self/exe");
    return std::string(buffer, static_cast<size_t>(n));
  }();
  return path;
}

void install_interrupt_handler() {
  struct sigaction action {};
  action.sa_handler = on_interrupt;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  // A subscriber that goes away must not kill a publisher writing to its socket.
  signal(SIGPIPE, SIG_IGN);
}

bool interrupted() { return g_interrupted.load(); }

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string log_tail(const std::string& path, size_t lines) {
  std::vector<std::string> kept;
  std::istringstream in(read_file(path));
  for (std::string line; std::getline(in, line);)
    if (line.find_first_not_of(" \t\r") != std::string::npos) kept.push_back(line);
  std::string out;
  for (size_t i = kept.size() > lines ? kept.size() - lines : 0; i < kept.size(); ++i)
    out += (out.empty() ? "" : " | ") + kept[i];
  return out;
}

// ---- ServerProcess --------------------------------------------------------------------------

ServerProcess::ServerProcess(const std::vector<std::string>& argv, std::string log_path)
    : log_path_(std::move(log_path)) {
  pid_ = spawn_process(argv, log_path_, -1, -1, SIGTERM);
}

ServerProcess::~ServerProcess() { stop(); }

bool ServerProcess::running() {
  if (pid_ <= 0) return false;
  if (waitpid(pid_, nullptr, WNOHANG) == 0) return true;
  pid_ = -1;
  return false;
}

bool ServerProcess::stop(std::chrono::milliseconds grace) {
  if (pid_ <= 0) return true;
  kill(pid_, SIGTERM);
  const int64_t deadline = mono_ns() + std::chrono::nanoseconds(grace).count();
  while (mono_ns() < deadline) {
    if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
      pid_ = -1;
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
  return false;
}

// ---- CellProcesses --------------------------------------------------------------------------

struct CellProcesses::Child {
  std::string role;
  std::string log_path;
  pid_t pid = -1;
  int result_fd = -1;
  std::string output;
  bool reaped = false;
  int status = 0;

  // Reads what the pipe holds now; true at end of file.
  bool drain() {
    char buffer[4096];
    for (;;) {
      pollfd pfd{result_fd, POLLIN, 0};
      if (::poll(&pfd, 1, 0) <= 0) return false;
      const ssize_t n = ::read(result_fd, buffer, sizeof buffer);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return true;
      output.append(buffer, static_cast<size_t>(n));
    }
  }
};

CellProcesses::CellProcesses(const Session& session, std::string tag)
    : tag_(std::move(tag)), log_dir_(session.dir) {
  control_fd_ = memfd_create("shmbus-compare-control", MFD_CLOEXEC);
  if (control_fd_ < 0 || ftruncate(control_fd_, sizeof(ControlPage)) != 0)
    throw Failure(std::string("memfd for the control page: ") + std::strerror(errno));
  void* p = mmap(nullptr, sizeof(ControlPage), PROT_READ | PROT_WRITE, MAP_SHARED, control_fd_, 0);
  if (p == MAP_FAILED) throw Failure(std::string("mmap control page: ") + std::strerror(errno));
  page_ = new (p) ControlPage();
}

CellProcesses::~CellProcesses() {
  for (auto& child : children_) {
    if (!child->reaped) {
      kill(child->pid, SIGKILL);
      reap(*child, true);
    }
    ::close(child->result_fd);
  }
  if (page_) munmap(page_, sizeof(ControlPage));
  if (control_fd_ >= 0) ::close(control_fd_);
}

size_t CellProcesses::spawn(const ChildSpec& spec) {
  int result[2];
  if (pipe2(result, O_CLOEXEC) != 0) throw Failure(std::string("pipe: ") + std::strerror(errno));
  auto child = std::make_unique<Child>();
  child->role = spec.role + (spec.publishers > 1 || spec.subscribers > 1
                                 ? " " + std::to_string(children_.size())
                                 : std::string());
  child->log_path = log_dir_ + "/" + tag_ + "-" + std::to_string(children_.size()) + ".log";
  child->result_fd = result[0];
  const nlohmann::json spec_json = spec;
  try {
    child->pid = spawn_process({self_executable(), "--child", spec_json.dump()}, child->log_path,
                               control_fd_, result[1], SIGKILL);
  } catch (...) {
    ::close(result[0]);
    ::close(result[1]);
    throw;
  }
  ::close(result[1]);
  remember_child(child->pid);
  children_.push_back(std::move(child));
  return children_.size() - 1;
}

void CellProcesses::reap(Child& child, bool wait) {
  if (child.reaped) return;
  int status = 0;
  const pid_t r = waitpid(child.pid, &status, wait ? 0 : WNOHANG);
  if (r != child.pid) return;
  child.reaped = true;
  child.status = status;
  forget_child(child.pid);
}

void CellProcesses::fail_with(Child& child) {
  std::string reason;
  try {
    const auto out = nlohmann::json::parse(child.output);
    if (out.contains("error")) reason = out["error"].get<std::string>();
  } catch (const nlohmann::json::exception&) {
  }
  if (reason.empty()) {
    reason = child.reaped ? exit_description(child.status) : "gave no result";
    const std::string tail = log_tail(child.log_path);
    if (!tail.empty()) reason += ": " + tail;
  }
  throw Failure(child.role + ": " + reason);
}

nlohmann::json CellProcesses::collect(size_t index, int64_t deadline_ns) {
  Child& child = *children_.at(index);
  for (;;) {
    if (child.drain()) break;
    const int64_t left_ms = (deadline_ns - mono_ns()) / 1'000'000;
    if (left_ms <= 0 || interrupted()) {
      kill(child.pid, SIGKILL);
      reap(child, true);
      throw Failure(child.role + (interrupted() ? ": interrupted" : ": timed out"));
    }
    pollfd pfd{child.result_fd, POLLIN, 0};
    ::poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left_ms, 100)));
  }
  // The child closes its result pipe as it exits; give it a moment to finish exiting.
  for (int i = 0; i < 500 && !child.reaped; ++i) {
    reap(child, false);
    if (!child.reaped) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!child.reaped) {
    kill(child.pid, SIGKILL);
    reap(child, true);
  }
  try {
    const auto out = nlohmann::json::parse(child.output);
    if (out.contains("result") && WIFEXITED(child.status) && WEXITSTATUS(child.status) == 0)
      return out["result"];
  } catch (const nlohmann::json::exception&) {
  }
  fail_with(child);
}

void CellProcesses::fail_if_any_child_failed() {
  for (auto& child : children_) {
    if (child->reaped) continue;
    reap(*child, false);
    if (!child->reaped) continue;
    child->drain();
    if (!WIFEXITED(child->status) || WEXITSTATUS(child->status) != 0) fail_with(*child);
  }
}

void CellProcesses::wait_for(Signal& signal, uint32_t target, int64_t deadline_ns,
                             const std::string& what) {
  while (signal.get() < target) {
    fail_if_any_child_failed();
    if (interrupted()) throw Failure("interrupted");
    if (mono_ns() > deadline_ns) throw Failure("timed out: " + what);
    signal.wait_at_least(target, 0, std::min(deadline_ns, mono_ns() + 20'000'000));
  }
}

}  // namespace shmbus::compare
