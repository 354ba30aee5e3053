// Every refusal a user can meet, checked by its message: it must name the limit (or the
// resource) and the way out, and nothing else may be lost because of it.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "daemon_support.hpp"
#include "protocol.hpp"
#include "shmbus/shmbus.hpp"
#include "test_support.hpp"
#include "throwaway_users.hpp"

namespace shmbus {
namespace {

using namespace std::chrono_literals;
using test::TestDaemon;

// Runs `fn`, expects shmbus::Error with `code`, and returns its message.
template <typename Fn>
std::string error_of(Fn&& fn, Errc code) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(static_cast<int>(e.code()), static_cast<int>(code)) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no shmbus::Error thrown";
  return {};
}

#define EXPECT_MENTIONS(text, part) \
  EXPECT_NE(std::string(text).find(part), std::string::npos) << "message: " << (text)

// A raw connection to the daemon's socket, for sending what no library would.
int raw_connect(const std::string& path) {
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  return fd;
}

// True if the daemon closes the connection within a second.
bool closed_by_daemon(int fd) {
  timeval tv{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char buf[4096];
  for (;;) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n == 0) return true;
    if (n < 0) return errno == ECONNRESET;
  }
}

void send_raw(int fd, const void* data, size_t bytes) {
  ASSERT_EQ(send(fd, data, bytes, MSG_NOSIGNAL), static_cast<ssize_t>(bytes));
}

TEST(DaemonErrors, NoDaemonNamesTheSocketAndHowToStartOne) {
  ConnectOptions options{"nodaemon", "/tmp/shmbus-no-such-dir/bus.sock", "", {}};
  const std::string message = error_of([&] { Bus::connect(options); }, Errc::kNoDaemon);
  EXPECT_MENTIONS(message, "/tmp/shmbus-no-such-dir/bus.sock");
  EXPECT_MENTIONS(message, "shmbusd --bus nodaemon");
  EXPECT_MENTIONS(message, "SHMBUS_SOCKET");
  error_of([&] { Subscription::open(options); }, Errc::kNoDaemon);
}

TEST(DaemonErrors, InvalidBusNameIsRefusedBeforeConnecting) {
  const std::string message = error_of(
      [] {
        Bus::connect({"../etc", "", "", {}});
      },
      Errc::kInvalidArgument);
  EXPECT_MENTIONS(message, "'../etc'");
  EXPECT_MENTIONS(message, "A-Z a-z 0-9");
}

TEST(DaemonErrors, SecondDaemonForTheSameBusRefusesToStart) {
  TestDaemon first;
  daemon::DaemonOptions options;
  options.bus = first.bus();
  options.socket_path = first.socket_path() + ".other";
  options.logger =
      std::make_shared<spdlog::logger>("second", std::make_shared<spdlog::sinks::null_sink_mt>());
  try {
    daemon::Daemon second(options);
    FAIL() << "a second daemon started for bus " << first.bus();
  } catch (const std::runtime_error& e) {
    EXPECT_MENTIONS(e.what(), "already serves bus '" + first.bus() + "'");
    EXPECT_MENTIONS(e.what(), "pid " + std::to_string(getpid()));
    EXPECT_MENTIONS(e.what(), "--bus");
  }
  // The first one is untouched.
  auto bus = Bus::connect(first.options());
  EXPECT_EQ(bus.publish("still", "works"), 0u);
}

TEST(DaemonErrors, GarbageOnTheSocketDropsOnlyThatConnection) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"ok"});
  auto bus = Bus::connect(daemon.options());

  const int http = raw_connect(daemon.socket_path());
  const char request[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  send_raw(http, request, sizeof(request) - 1);
  EXPECT_TRUE(closed_by_daemon(http));
  close(http);

  // A length prefix announcing 2 GiB: refused as soon as the prefix arrives.
  const int huge = raw_connect(daemon.socket_path());
  const uint8_t prefix[] = {0xff, 0xff, 0xff, 0x7f};
  send_raw(huge, prefix, sizeof(prefix));
  EXPECT_TRUE(closed_by_daemon(huge));
  close(huge);

  // A HELLO whose string runs past the end of the message.
  const int lying = raw_connect(daemon.socket_path());
  protocol::Writer hello(protocol::Type::kHello, 1);
  hello.u32(protocol::kProtocolMagic).u16(1).u16(1).u32(1000);  // name "of 1000 bytes"
  const auto& frame = hello.frame();
  send_raw(lying, frame.data(), frame.size());
  EXPECT_TRUE(closed_by_daemon(lying));
  close(lying);

  // A request before HELLO.
  const int rude = raw_connect(daemon.socket_path());
  protocol::Writer ping(protocol::Type::kPing, 1);
  send_raw(rude, ping.frame().data(), ping.frame().size());
  EXPECT_TRUE(closed_by_daemon(rude));
  close(rude);

  // Everyone else is served as before.
  EXPECT_EQ(bus.publish("ok", "still here"), 1u);
  auto m = sub.next(1s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->text(), "still here");
}

TEST(DaemonErrors, ProtocolVersionMismatchIsExplained) {
  TestDaemon daemon;
  const int fd = raw_connect(daemon.socket_path());
  protocol::Writer hello(protocol::Type::kHello, 1);
  hello.u32(protocol::kProtocolMagic).u16(7).u16(9).str("future").u8(0);
  send_raw(fd, hello.frame().data(), hello.frame().size());
  std::vector<std::byte> buf(4096);
  const ssize_t n = recv(fd, buf.data(), buf.size(), 0);
  ASSERT_GT(n, 10);
  protocol::FrameAssembler in;
  in.feed(std::span<const std::byte>(buf.data(), static_cast<size_t>(n)));
  std::span<const std::byte> body;
  ASSERT_TRUE(in.next(body));
  const auto reply = protocol::Frame::parse(body);
  ASSERT_EQ(reply.type, protocol::Type::kError);
  protocol::Parser p(reply.fields);
  EXPECT_EQ(p.u16(), static_cast<uint16_t>(Errc::kProtocol));
  const std::string message(p.str(4096, "error"));
  EXPECT_MENTIONS(message, "versions 7..9");
  EXPECT_MENTIONS(message, "speaks " + std::to_string(protocol::kMinProtocolVersion));
  close(fd);
}

TEST(DaemonErrors, BadChannelNamesNameTheLimit) {
  TestDaemon daemon;
  auto bus = Bus::connect(daemon.options());
  EXPECT_MENTIONS(error_of([&] { bus.publish("", "x"); }, Errc::kInvalidArgument), "empty");
  const std::string long_name(1025, 'n');
  const std::string message =
      error_of([&] { bus.publish(long_name, "x"); }, Errc::kInvalidArgument);
  EXPECT_MENTIONS(message, "1025 bytes");
  EXPECT_MENTIONS(message, "limit is 1024");
  auto sub = Subscription::open(daemon.options());
  error_of([&] { sub.subscribe({long_name}); }, Errc::kInvalidArgument);
  error_of([&] { sub.psubscribe({""}); }, Errc::kInvalidArgument);
  // Binary names are fine.
  const std::string binary("a\0b\xff", 4);
  EXPECT_EQ(bus.publish(binary, "x"), 0u);
}

// As Redis: SUBSCRIBE and PSUBSCRIBE need at least one argument (where shmbus used to do
// nothing), and a pattern is 1 to kMaxPatternBytes bytes (an empty one could match no
// channel: names are at least a byte).
TEST(DaemonErrors, SubscribingToNothingAndBadPatternsAreRefusedNamingTheRule) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  EXPECT_MENTIONS(
      error_of([&] { sub.subscribe(std::vector<std::string>{}); }, Errc::kInvalidArgument),
      "wrong number of arguments for 'subscribe'");
  EXPECT_MENTIONS(
      error_of([&] { sub.psubscribe(std::vector<std::string>{}); }, Errc::kInvalidArgument),
      "wrong number of arguments for 'psubscribe'");
  EXPECT_MENTIONS(error_of([&] { sub.psubscribe({""}); }, Errc::kInvalidArgument),
                  "patterns are 1 to 1024 bytes");
  EXPECT_MENTIONS(error_of([&] { sub.psubscribe({std::string(kMaxPatternBytes + 1, '*')}); },
                           Errc::kInvalidArgument),
                  "the limit is 1024 bytes");
  EXPECT_NO_THROW(sub.psubscribe({std::string(kMaxPatternBytes, '*')}));
  EXPECT_EQ(sub.count(), 1u);
  // Unsubscribing from nothing is fine, as in Redis: it means everything.
  EXPECT_NO_THROW(sub.punsubscribe(std::vector<std::string>{}));
  EXPECT_EQ(sub.count(), 0u);
}

TEST(DaemonErrors, OversizedMessageNamesChannelLimitRingAndRule) {
  auto config = test::small_test_config();
  daemon::ChannelRule video;
  video.pattern = "video:*";
  video.ring_bytes = 4096;
  config.rules.push_back(video);
  TestDaemon daemon(config);
  auto bus = Bus::connect(daemon.options());
  const std::string big(5000, 'x');
  const std::string message = error_of([&] { bus.publish("video:cam1", big); }, Errc::kTooLarge);
  EXPECT_MENTIONS(message, "message of 5000 bytes exceeds channel 'video:cam1' limit of 2016");
  EXPECT_MENTIONS(message, "ring 4 KiB");
  EXPECT_MENTIONS(message, "[[channel]] rule in shmbusd.toml");
  // Nothing else is lost: the channel still takes messages that fit.
  auto channel = bus.channel("video:cam1");
  EXPECT_EQ(channel.max_message_bytes(), 2016u);
  EXPECT_EQ(channel.try_publish(std::as_bytes(std::span(big))).status, PublishStatus::kTooLarge);
  EXPECT_EQ(bus.publish("video:cam1", std::string(2016, 'y')), 0u);
}

TEST(DaemonErrors, ChannelLimitNamesTheConfigKey) {
  auto config = test::small_test_config();
  config.max_channels = 3;
  TestDaemon daemon(config);
  auto bus = Bus::connect(daemon.options());
  for (int i = 0; i < 3; ++i) bus.publish("c" + std::to_string(i), "x");
  const std::string message = error_of([&] { bus.publish("c3", "x"); }, Errc::kLimit);
  EXPECT_MENTIONS(message, "max_channels = 3");
  EXPECT_MENTIONS(message, "[limits]");
  EXPECT_EQ(bus.publish("c0", "existing channels still work"), 0u);
}

TEST(DaemonErrors, SubscriptionLimitsNameTheConfigKey) {
  auto config = test::small_test_config();
  config.max_subscriptions_per_client = 2;
  config.defaults.max_subscribers = 1;
  TestDaemon daemon(config);
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"a"});
  sub.psubscribe({"p*"});
  std::string message = error_of([&] { sub.subscribe({"b"}); }, Errc::kLimit);
  EXPECT_MENTIONS(message, "max_subscriptions_per_client = 2");
  EXPECT_EQ(sub.count(), 2u);
  // Per channel: one subscriber slot in this config.
  auto other = Subscription::open(daemon.options());
  message = error_of([&] { other.subscribe({"a"}); }, Errc::kLimit);
  EXPECT_MENTIONS(message, "channel 'a' already has 1 subscribers");
  EXPECT_MENTIONS(message, "max_subscribers");
  EXPECT_EQ(other.count(), 0u);
}

TEST(DaemonErrors, SharedMemoryLimitNamesTheConfigKey) {
  auto config = test::small_test_config();
  config.max_shared_memory = 8u << 20;
  config.defaults.ring_bytes = 1u << 20;
  config.max_subscriptions_per_client = 64;
  TestDaemon daemon(config);
  auto bus = Bus::connect(daemon.options());
  std::string message;
  for (int i = 0; i < 16 && message.empty(); ++i) {
    try {
      bus.publish("big" + std::to_string(i), "x");
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::kLimit);
      message = e.what();
    }
  }
  EXPECT_MENTIONS(message, "max_shared_memory = 8 MiB");
  EXPECT_MENTIONS(message, "smaller rings with a [[channel]] rule");
}

TEST(DaemonErrors, ConflictingChannelSettingsAreRefused) {
  TestDaemon daemon;
  auto bus = Bus::connect(daemon.options());
  ChannelOptions small;
  small.ring_bytes = 4096;
  auto first = bus.channel("shared", small);
  EXPECT_EQ(first.ring_bytes(), 4096u);
  ChannelOptions other;
  other.ring_bytes = 8192;
  const std::string message =
      error_of([&] { bus.channel("shared", other); }, Errc::kInvalidArgument);
  EXPECT_MENTIONS(message, "exists with ring 4 KiB");
  EXPECT_MENTIONS(message, "[[channel]] rule");
  ChannelOptions bad;
  bad.ring_bytes = 5000;
  EXPECT_MENTIONS(error_of([&] { bus.channel("odd", bad); }, Errc::kInvalidArgument),
                  "power of two");
}

// A stopped daemon's rings take no more messages: a publish there would reach only
// subscribers that never reconnect (a split bus). With reconnecting off, or no daemon back
// within the wait, every call says what happened and names the socket.
TEST(DaemonErrors, AStoppedDaemonIsNamedAndItsRingsTakeNoMore) {
  auto daemon = std::make_unique<TestDaemon>();
  ConnectOptions off = daemon->options();
  off.reconnect.enabled = false;
  ConnectOptions fail_fast = daemon->options();
  fail_fast.reconnect.wait = 0ns;
  auto sub = Subscription::open(off);
  sub.subscribe({"live"});
  auto bus = Bus::connect(fail_fast);
  auto channel = bus.channel("live");
  EXPECT_EQ(channel.publish("before the stop"), 1u);
  const std::string socket = daemon->socket_path();
  daemon->stop();
  const std::string message = error_of([&] { channel.publish("after"); }, Errc::kDaemonGone);
  EXPECT_MENTIONS(message, socket);
  EXPECT_MENTIONS(message, "ReconnectOptions::wait");
  EXPECT_MENTIONS(error_of([&] { bus.publish("new", "x"); }, Errc::kDaemonGone), socket);
  // The subscriber gets what was published before, then learns it too.
  auto m = sub.next(1s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->text(), "before the stop");
  EXPECT_MENTIONS(error_of([&] { sub.next(1s); }, Errc::kDaemonGone),
                  "reconnecting is off (ReconnectOptions::enabled)");
  error_of([&] { sub.subscribe({"other"}); }, Errc::kDaemonGone);
}

// Nothing of a bus has a name in /dev/shm (its segments are unnamed, handed out as
// descriptors), and the one name it takes - its lock, beside the control socket - goes
// when the daemon stops.
TEST(DaemonErrors, TheBusTakesNoNameInDevShmAndItsLockGoesWithIt) {
  const auto shm_entries = [] {
    return std::distance(std::filesystem::directory_iterator("/dev/shm"),
                         std::filesystem::directory_iterator());
  };
  const auto before = shm_entries();
  std::string lock;
  {
    TestDaemon daemon;
    Bus::connect(daemon.options()).publish("x", "y");
    auto sub = Subscription::open(daemon.options());
    sub.subscribe({"x"});
    EXPECT_EQ(shm_entries(), before);
    lock = std::filesystem::path(daemon.socket_path()).parent_path() / (daemon.bus() + ".lock");
    EXPECT_TRUE(std::filesystem::exists(lock));
  }
  EXPECT_FALSE(std::filesystem::exists(lock));
}

// ---- Squatting: nothing another user can create, lock or link decides whether a bus starts

// A daemon of bus `bus` listening in `dir`, or the error it refused to start with.
std::string start_daemon(const std::string& bus, const std::filesystem::path& dir) {
  daemon::DaemonOptions options;
  options.bus = bus;
  options.socket_path = (dir / "bus.sock").string();
  options.config = test::small_test_config();
  options.logger =
      std::make_shared<spdlog::logger>("squat", std::make_shared<spdlog::sinks::null_sink_mt>());
  try {
    daemon::Daemon d(options);
    return "";
  } catch (const std::runtime_error& e) {
    return e.what();
  }
}

struct TempDir {
  TempDir()
      : path(std::filesystem::temp_directory_path() /
             ("shmbus-squat-" + std::to_string(getpid()))) {
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::filesystem::path path;
};

// The names the old layout put in /dev/shm, squatted: the bus neither uses nor minds them.
TEST(DaemonErrors, FilesSquattingTheOldDevShmNamesChangeNothing) {
  const std::string bus = "squat" + std::to_string(getpid());
  std::vector<std::string> squatted;
  for (const char* suffix : {".0", ".1", ".2", ".3", ".lock"}) {
    squatted.push_back("/dev/shm/shmbus." + bus + suffix);
    std::ofstream(squatted.back()) << "squatter";
  }
  {
    TempDir dir;
    daemon::DaemonOptions options;
    options.bus = bus;
    options.socket_path = (dir.path / "bus.sock").string();
    options.config = test::small_test_config();
    options.logger =
        std::make_shared<spdlog::logger>("squat", std::make_shared<spdlog::sinks::null_sink_mt>());
    daemon::Daemon daemon(options);
    std::thread loop([&] { daemon.run(); });
    {
      const ConnectOptions connect{bus, options.socket_path, "test", {}};
      auto sub = Subscription::open(connect);
      sub.psubscribe({"c:*"});
      auto pub = Bus::connect(connect);
      for (int i = 0; i < 50; ++i) EXPECT_EQ(pub.publish("c:" + std::to_string(i), "x"), 1u);
    }
    daemon.stop();
    loop.join();
  }
  for (const auto& path : squatted) {
    std::ifstream in(path);
    std::string text;
    in >> text;
    EXPECT_EQ(text, "squatter") << path;
    std::filesystem::remove(path);
  }
}

// A symlink at the lock's name: the daemon refuses, naming it, and never writes through it
// (a root daemon used to truncate whatever it pointed to).
TEST(DaemonErrors, ASymlinkAtTheLockNameIsRefusedAndItsTargetUntouched) {
  TempDir dir;
  const std::string bus = "link" + std::to_string(getpid());
  const auto target = dir.path / "precious";
  std::ofstream(target) << "do not truncate";
  std::filesystem::create_symlink(target, dir.path / (bus + ".lock"));
  const std::string error = start_daemon(bus, dir.path);
  EXPECT_MENTIONS(error, "symbolic link");
  EXPECT_MENTIONS(error, bus + ".lock");
  std::ifstream in(target);
  std::string text;
  std::getline(in, text);
  EXPECT_EQ(text, "do not truncate");
}

// A lock file another user made: refused with the way out, not taken over.
TEST(DaemonErrors, ALockFileOfAnotherUserIsRefused) {
  if (!test::make_throwaway_users()) GTEST_SKIP() << "needs root to create a throwaway user";
  TempDir dir;
  const std::string bus = "other" + std::to_string(getpid());
  const auto lock = dir.path / (bus + ".lock");
  std::ofstream(lock) << "12345";
  ASSERT_EQ(chown(lock.c_str(), test::uid_of(test::kStrangerUser), 0), 0);
  const std::string error = start_daemon(bus, dir.path);
  EXPECT_MENTIONS(error, "not a plain file of this user");
  EXPECT_MENTIONS(error, "RuntimeDirectory");
  std::filesystem::remove(lock);
  EXPECT_EQ(start_daemon(bus, dir.path), "");  // and starts once it is gone
}

// CPU time (user + system, in clock ticks) a process has used so far.
long cpu_ticks_of(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  std::istringstream fields(line.substr(line.rfind(')') + 2));  // after "pid (comm) "
  std::string field;
  long utime = 0, stime = 0;
  for (int i = 3; fields >> field; ++i) {  // field 3 is the state
    if (i == 14) utime = std::stol(field);
    if (i == 15) {
      stime = std::stol(field);
      break;
    }
  }
  return utime + stime;
}

size_t open_descriptors() {
  return static_cast<size_t>(std::distance(std::filesystem::directory_iterator("/proc/self/fd"),
                                           std::filesystem::directory_iterator{}));
}

daemon::Daemon* g_emfile_daemon = nullptr;

TEST(DaemonErrors, OutOfDescriptorsMakesClientsWaitWithoutSpinning) {
  const std::string bus = "emfile" + std::to_string(getpid());
  const auto dir = std::filesystem::temp_directory_path() / ("shmbus-" + bus);
  std::filesystem::create_directories(dir);
  const std::string socket_path = (dir / "bus.sock").string();
  const pid_t child = fork();
  if (child == 0) {
    // A daemon with room for its own descriptors and a few clients only.
    rlimit limit{};
    getrlimit(RLIMIT_NOFILE, &limit);
    limit.rlim_cur = open_descriptors() + 12;
    setrlimit(RLIMIT_NOFILE, &limit);
    daemon::DaemonOptions options;
    options.bus = bus;
    options.socket_path = socket_path;
    options.config = test::small_test_config();
    options.logger =
        std::make_shared<spdlog::logger>("emfile", std::make_shared<spdlog::sinks::null_sink_mt>());
    try {
      daemon::Daemon d(std::move(options));
      g_emfile_daemon = &d;
      signal(SIGTERM, [](int) { g_emfile_daemon->stop(); });
      d.run();
    } catch (const std::exception& e) {
      fprintf(stderr, "daemon: %s\n", e.what());
      _exit(1);
    }
    _exit(0);
  }
  ConnectOptions options{bus, socket_path, "after-the-flood", {}};
  for (int i = 0; i < 200 && !std::filesystem::exists(socket_path); ++i)
    std::this_thread::sleep_for(10ms);
  // More connections than the daemon has descriptors for: the rest wait in the backlog.
  std::vector<int> flood;
  for (int i = 0; i < 30; ++i) flood.push_back(raw_connect(socket_path));
  std::this_thread::sleep_for(200ms);
  const long before = cpu_ticks_of(child);
  std::this_thread::sleep_for(1s);
  const long used = cpu_ticks_of(child) - before;
  EXPECT_LT(used, sysconf(_SC_CLK_TCK) / 4)
      << "the daemon spun on accept() while out of descriptors";
  // As connections close, waiting clients are taken in.
  for (int fd : flood) close(fd);
  auto client = Bus::connect(options);
  EXPECT_GE(client.ping().count(), 0);
  kill(child, SIGTERM);
  int status = 0;
  waitpid(child, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace shmbus
