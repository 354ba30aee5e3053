// The real shmbusd ($SHMBUSD) in a process of its own, for tests that stop, kill and restart
// it: a private directory for its socket, a start that can pass a listening socket the way
// a systemd .socket unit does, and an owner that never leaves it running.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace shmbus::test {

// A private directory for one test's sockets, removed afterwards.
class TempDir {
 public:
  TempDir() {
    path_ = std::filesystem::temp_directory_path() /
            ("shmbus-sd-" + std::to_string(getpid()) + "-" + std::to_string(counter_++));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string file(const char* name) const { return (path_ / name).string(); }

 private:
  static inline int counter_ = 0;
  std::filesystem::path path_;
};

inline int unix_socket(int type, const std::string& path) {
  const int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
    throw std::runtime_error("bind " + path + ": " + std::strerror(errno));
  return fd;
}

// Starts shmbusd with `env` added (its log to `log_path` if given); `listen_fd` (if >= 0) becomes
// its descriptor 3 with LISTEN_FDS=1 and LISTEN_PID set to the daemon's pid, as systemd does.
inline pid_t start_shmbusd(const std::vector<std::string>& args,
                           const std::vector<std::pair<std::string, std::string>>& env,
                           int listen_fd = -1, const std::string& log_path = {}) {
  const char* binary = std::getenv("SHMBUSD");
  if (binary == nullptr) throw std::runtime_error("set SHMBUSD to the shmbusd binary");
  const pid_t pid = fork();
  if (pid == 0) {
    for (const auto& [key, value] : env) setenv(key.c_str(), value.c_str(), 1);
    if (!log_path.empty()) {  // its log (stderr) to a file the test reads
      const int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
      if (log < 0 || dup2(log, 2) != 2) _exit(125);
    }
    if (listen_fd >= 0) {
      // dup2 clears FD_CLOEXEC on the copy, but does nothing if the socket is already 3.
      if (listen_fd != 3 && dup2(listen_fd, 3) != 3) _exit(126);
      fcntl(3, F_SETFD, 0);
      setenv("LISTEN_FDS", "1", 1);
      setenv("LISTEN_PID", std::to_string(getpid()).c_str(), 1);  // exec keeps the pid
    }
    std::vector<char*> argv{const_cast<char*>(binary)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(binary, argv.data());
    _exit(127);
  }
  return pid;
}

// Owns a started daemon: a failed assertion must not leave it running.
class DaemonProcess {
 public:
  explicit DaemonProcess(pid_t pid) : pid_(pid) {}
  ~DaemonProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }
  // Stops it with SIGTERM; returns its exit code (128 + signal if killed).
  int stop() {
    kill(pid_, SIGTERM);
    return wait_exit();
  }
  int wait_exit() {
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_;
};

}  // namespace shmbus::test
