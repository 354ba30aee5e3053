// shmbusd under systemd, without systemd: the test owns the NOTIFY_SOCKET the daemon reports
// to (READY=1, STATUS=, WATCHDOG=1, STOPPING=1) and passes it a listening socket the way a
// .socket unit does (LISTEN_FDS/LISTEN_PID, descriptor 3). Runs the real binary ($SHMBUSD)
// and talks to it through the public API only.
#include <fcntl.h>
#include <gtest/gtest.h>
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
#include <shmbus/shmbus.hpp>
#include <string>
#include <thread>
#include <vector>

#include "shmbusd_process.hpp"

namespace {

using namespace std::chrono_literals;
using shmbus::test::DaemonProcess;
using shmbus::test::start_shmbusd;
using shmbus::test::TempDir;
using shmbus::test::unix_socket;

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
  DaemonProcess daemon(
      start_shmbusd({"--bus", bus, "--socket", dir.file("bus.sock"), "--log-level", "warn"},
                    {{"NOTIFY_SOCKET", dir.file("notify")}, {"WATCHDOG_USEC", "400000"}}));

  const std::string ready = receive(notify, 5s);
  EXPECT_EQ(ready, "READY=1") << "the first message must be readiness";
  // Ready means ready: a client connects at once.
  shmbus::ConnectOptions options{bus, dir.file("bus.sock"), "systemd-test", {}};
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

  shmbus::ConnectOptions options{bus, path, "activated-client", {}};
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
