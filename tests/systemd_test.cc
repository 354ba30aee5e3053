// shmbusd under systemd, without systemd: the test owns the NOTIFY_SOCKET the daemon reports
// to (READY=1, STATUS=, WATCHDOG=1, STOPPING=1) and passes it a listening socket the way a
// .socket unit does (LISTEN_FDS/LISTEN_PID, descriptor 3). Runs the real binary ($SHMBUSD)
// and talks to it through the public API only.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <shmbus/shmbus.hpp>

namespace {

using namespace std::chrono_literals;

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

int unix_socket(int type, const std::string& path) {
  const int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
    throw std::runtime_error("bind " + path + ": " + std::strerror(errno));
  return fd;
}

// Starts shmbusd with `env` added; `listen_fd` (if >= 0) becomes its descriptor 3 with
// LISTEN_FDS=1 and LISTEN_PID set to the daemon's pid, as systemd does.
pid_t start_shmbusd(const std::vector<std::string>& args,
                    const std::vector<std::pair<std::string, std::string>>& env,
                    int listen_fd = -1) {
  const char* binary = std::getenv("SHMBUSD");
  if (binary == nullptr) throw std::runtime_error("set SHMBUSD to the shmbusd binary");
  const pid_t pid = fork();
  if (pid == 0) {
    for (const auto& [key, value] : env) setenv(key.c_str(), value.c_str(), 1);
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

// The next datagram on `fd` within `timeout`, or "" if none came.
std::string receive(int fd, std::chrono::milliseconds timeout) {
  timeval tv{static_cast<time_t>(timeout.count() / 1000),
             static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char buf[4096];
  const ssize_t n = recv(fd, buf, sizeof(buf), 0);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

bool skip_without_libsystemd() {
#ifdef SHMBUS_HAVE_SYSTEMD
  return false;
#else
  return true;
#endif
}

TEST(Systemd, NotifySocketGetsReadyStatusWatchdogAndStopping) {
  if (skip_without_libsystemd())
    GTEST_SKIP() << "shmbusd was built without libsystemd (install libsystemd-dev)";
  TempDir dir;
  const int notify = unix_socket(SOCK_DGRAM, dir.file("notify"));
  const std::string bus = "sdnotify" + std::to_string(getpid());
  DaemonProcess daemon(start_shmbusd(
      {"--bus", bus, "--socket", dir.file("bus.sock"), "--log-level", "warn"},
      {{"NOTIFY_SOCKET", dir.file("notify")}, {"WATCHDOG_USEC", "400000"}}));

  const std::string ready = receive(notify, 5s);
  EXPECT_EQ(ready, "READY=1") << "the first message must be readiness";
  // Ready means ready: a client connects at once.
  shmbus::ConnectOptions options{bus, dir.file("bus.sock"), "systemd-test"};
  auto client = shmbus::Bus::connect(options);
  client.publish("sd:1", "x");
  // STATUS= with the counts, and WATCHDOG=1 at half the 400 ms interval, from the loop.
  int watchdogs = 0;
  std::string status;
  const auto until = std::chrono::steady_clock::now() + 3s;
  while (std::chrono::steady_clock::now() < until && (watchdogs < 3 || status.empty())) {
    const std::string message = receive(notify, 1s);
    if (message.find("WATCHDOG=1") != std::string::npos) ++watchdogs;
    if (message.rfind("STATUS=", 0) == 0) status = message.substr(0, message.find('\n'));
  }
  EXPECT_GE(watchdogs, 3);
  EXPECT_NE(status.find("1 channels, 1 clients"), std::string::npos) << status;

  kill(daemon.pid(), SIGTERM);
  std::string stopping;
  for (int i = 0; i < 20 && stopping.find("STOPPING=1") == std::string::npos; ++i)
    stopping = receive(notify, 1s);
  EXPECT_NE(stopping.find("STOPPING=1"), std::string::npos);
  EXPECT_EQ(daemon.wait_exit(), 0);
  close(notify);
}

TEST(Systemd, ServesAListeningSocketPassedLikeSocketActivation) {
  if (skip_without_libsystemd())
    GTEST_SKIP() << "shmbusd was built without libsystemd (install libsystemd-dev)";
  TempDir dir;
  const std::string path = dir.file("activated.sock");
  const int listening = unix_socket(SOCK_STREAM, path);
  ASSERT_EQ(listen(listening, 16), 0);
  const std::string bus = "sdsocket" + std::to_string(getpid());
  // --socket names another path: the passed socket wins, as with a .socket unit.
  DaemonProcess daemon(start_shmbusd(
      {"--bus", bus, "--socket", dir.file("unused.sock"), "--log-level", "warn"}, {}, listening));
  close(listening);  // the daemon holds it now

  shmbus::ConnectOptions options{bus, path, "activated-client"};
  std::optional<shmbus::Subscription> sub;
  for (int i = 0; i < 500 && !sub; ++i) {
    try {
      sub = shmbus::Subscription::open(options);  // waits in the backlog until accepted
    } catch (const shmbus::Error&) {
      std::this_thread::sleep_for(10ms);
    }
  }
  ASSERT_TRUE(sub) << "no daemon answered on the passed socket";
  sub->subscribe({"activated"});
  auto bus_client = shmbus::Bus::connect(options);
  EXPECT_EQ(bus_client.publish("activated", "through the passed socket"), 1u);
  auto m = sub->next(2s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->text(), "through the passed socket");
  EXPECT_FALSE(std::filesystem::exists(dir.file("unused.sock")));
  sub.reset();
  EXPECT_EQ(daemon.stop(), 0);
  // The socket belongs to the .socket unit: it outlives the daemon.
  EXPECT_TRUE(std::filesystem::exists(path));
}

}  // namespace
