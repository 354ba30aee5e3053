// Permissions by channel, enforced by the kernel: [[access]] rules decide who may publish to
// and subscribe to which channels, checked against the socket's peer credentials, and a
// client maps only the arenas of the classes it may use - read-only where it only reads.
// Throwaway users and a group are created for the test (useradd), so it needs root; it
// skips, saying so, without.
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <pwd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "child_process.hpp"
#include "daemon_support.hpp"
#include "directory.hpp"
#include "intruder.hpp"
#include "shmbus/shmbus.hpp"
#include "test_support.hpp"
#include "throwaway_users.hpp"

namespace shmbus {
namespace {

using namespace std::chrono_literals;
using test::TestDaemon;

using test::as_user;
constexpr const char* kPublisher = test::kPublisherUser;  // may publish to orders:*
constexpr const char* kReader = test::kReaderUser;        // in kReaders: may read orders:*
constexpr const char* kStranger = test::kStrangerUser;    // neither
constexpr const char* kReaders = test::kReadersGroup;

// The code of the Error `fn` throws, or kSystem if it throws nothing.
template <typename Fn>
std::pair<Errc, std::string> error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return {e.code(), e.what()};
  }
  return {Errc::kSystem, "no error"};
}

daemon::Config access_config() {
  daemon::Config config = test::small_test_config();
  daemon::AccessRule orders;
  orders.pattern = "orders:*";
  orders.publish.push_back(
      {daemon::Principal::Kind::kUser, getpwnam(kPublisher)->pw_uid, kPublisher});
  orders.subscribe.push_back(
      {daemon::Principal::Kind::kGroup, getgrnam(kReaders)->gr_gid, std::string("@") + kReaders});
  config.access.push_back(orders);
  return config;  // every other channel: open to all, as without rules
}

// A child process that runs `body` until the parent closes its end of a pipe (or dies), and
// can report one line back first.
class ChildProcess {
 public:
  // body(report_fd, stop_fd): write the report, then read(stop_fd) returns when it must end.
  explicit ChildProcess(const std::function<void(int, int)>& body) {
    int report[2], stop[2];
    if (pipe(report) != 0 || pipe(stop) != 0) throw std::runtime_error("pipe failed");
    pid_ = test::spawn([&] {
      close(report[0]);
      close(stop[1]);
      body(report[1], stop[0]);
      return 0;
    });
    close(report[1]);
    close(stop[0]);
    report_ = report[0];
    stop_ = stop[1];
  }
  ~ChildProcess() {
    close(stop_);
    close(report_);
    test::wait_exit(pid_);
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  // What the child reported, up to its end of the report pipe.
  std::string report() {
    std::string text;
    char buffer[512];
    for (ssize_t n; (n = read(report_, buffer, sizeof buffer)) > 0;) text.append(buffer, n);
    return text;
  }
  // Blocks until the parent ends the child (for the body).
  static void wait_for_stop(int stop_fd) {
    char c;
    while (read(stop_fd, &c, 1) < 0 && errno == EINTR) {
    }
  }

 private:
  pid_t pid_ = -1;
  int report_ = -1, stop_ = -1;
};

// The test's daemon in a child process of its own, forked while the test process has one
// thread, so that every as_user() child is forked from a single-threaded process too:
// gcc 12's ThreadSanitizer runtime does not lock its allocator around fork(), and a child
// forked while the daemon's threads ran could deadlock in it (which hung CI once; LLVM
// added the locking in 2024, https://github.com/llvm/llvm-project/pull/96600).
class ForkedDaemon {
 public:
  explicit ForkedDaemon(daemon::Config config)
      : child_([config = std::move(config)](int report, int stop) mutable {
          TestDaemon daemon(std::move(config));
          const ConnectOptions options = daemon.options();
          const std::string line = options.bus + "\n" + options.socket_path + "\n";
          [[maybe_unused]] auto n = write(report, line.data(), line.size());
          close(report);
          ChildProcess::wait_for_stop(stop);
        }) {
    const std::string text = child_.report();
    const size_t end = text.find('\n');
    if (end == std::string::npos || text.size() < end + 2)
      throw std::runtime_error("the daemon's process did not start");
    options_.bus = text.substr(0, end);
    options_.socket_path = text.substr(end + 1, text.size() - end - 2);
  }
  const ConnectOptions& options() const { return options_; }
  const std::string& socket_path() const { return options_.socket_path; }

 private:
  ChildProcess child_;
  ConnectOptions options_;
};

class AccessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::make_throwaway_users())
      GTEST_SKIP() << "needs root to create throwaway users (useradd)";
    daemon_ = std::make_unique<ForkedDaemon>(access_config());
    // Any user may connect to this test bus: the rules, not the socket's mode, are tested.
    std::filesystem::permissions(std::filesystem::path(daemon_->socket_path()).parent_path(),
                                 std::filesystem::perms::all);
    std::filesystem::permissions(daemon_->socket_path(), std::filesystem::perms::all);
  }
  std::unique_ptr<ForkedDaemon> daemon_;
};

TEST_F(AccessTest, PublishAndSubscribeFollowTheRulesWithNopermErrorsLikeRedis) {
  const ConnectOptions options = daemon_->options();
  EXPECT_EQ(as_user(kReader,
                    [&] {
                      auto sub = Subscription::open(options);
                      sub.subscribe({"orders:1"});
                      auto bus = Bus::connect(options);
                      const auto [code, message] = error_of([&] { bus.publish("orders:1", "x"); });
                      if (code != Errc::kPermission) return "publish by a reader: " + message;
                      if (message.find("NOPERM") == std::string::npos ||
                          message.find("access[1]") == std::string::npos ||
                          message.find(kPublisher) == std::string::npos)
                        return "the refusal does not name the rule and who it admits: " + message;
                      bus.publish("news:1", "open channels stay open");
                      return std::string();
                    }),
            "");
  EXPECT_EQ(as_user(kStranger,
                    [&] {
                      auto sub = Subscription::open(options);
                      const auto [code, message] = error_of([&] {
                        sub.subscribe({"news:2", "orders:1"});
                      });
                      if (code != Errc::kPermission) return "subscribe by a stranger: " + message;
                      if (!sub.channels().empty())
                        return std::string("a refused SUBSCRIBE subscribed");
                      return std::string();
                    }),
            "");
  EXPECT_EQ(as_user(kPublisher,
                    [&] {
                      Bus::connect(options).publish("orders:2", "by its publisher");
                      return std::string();
                    }),
            "");
}

// A pattern receives the channels its subscriber may read, and nothing else.
TEST_F(AccessTest, APatternAttachesOnlyWhatItsSubscriberMayRead) {
  const ConnectOptions options = daemon_->options();
  // Root (the test) may publish anywhere: a process of its own (not a thread: see
  // ForkedDaemon) keeps both channels busy meanwhile.
  auto publisher = std::make_unique<ChildProcess>([&](int report, int stop) {
    close(report);
    auto bus = Bus::connect(options);
    pollfd ended{stop, POLLIN, 0};
    while (poll(&ended, 1, 5) == 0) {
      bus.publish("orders:7", "secret");
      bus.publish("news:7", "public");
    }
  });
  EXPECT_EQ(as_user(kStranger,
                    [&] {
                      auto sub = Subscription::open(options);
                      sub.psubscribe({"*"});
                      int received = 0;
                      const auto until = std::chrono::steady_clock::now() + 500ms;
                      while (std::chrono::steady_clock::now() < until) {
                        auto m = sub.next(100ms);
                        if (!m) continue;
                        if (m->channel != "news:7")
                          return "received " + std::string(m->channel) + ", which it may not read";
                        ++received;
                      }
                      if (received == 0) return std::string("received nothing of news:7");
                      return std::string();
                    }),
            "");
  publisher.reset();
}

// What the kernel enforces: a subscriber maps ring data read-only (a write faults in the
// writer alone, and the descriptor cannot be reopened writable), and a client maps nothing
// of a class it may not read.
TEST_F(AccessTest, TheKernelEnforcesItReadOnlyRingsAndNoMappingOfOtherClasses) {
  const ConnectOptions options = daemon_->options();
  Bus::connect(options).publish("orders:9", "x");  // creates the channel and its class arenas
  EXPECT_EQ(as_user(kReader,
                    [&] {
                      test::Intruder reader(options, protocol::Role::kSubscriber);
                      RingRef ring = reader.subscribe("orders:9").ring;
                      // Writable: its own reader slot. Not writable: the ring.
                      ring.slot(0)->delivered.store(1);
                      if (!test::write_faults([&] { ring.header()->claim.position = 12345; }))
                        return std::string("a subscriber could write into a ring");
                      // Each granted descriptor was closed once mapped; what the kernel says of the
                      // mapping is in /proc/self/maps: the ring's arena read-only and shared.
                      std::ifstream maps("/proc/self/maps");
                      bool ring_ro = false;
                      const uint64_t ring_at = reinterpret_cast<uint64_t>(ring.header());
                      for (std::string line; std::getline(maps, line);) {
                        const uint64_t from =
                            std::stoull(line.substr(0, line.find('-')), nullptr, 16);
                        const uint64_t to = std::stoull(
                            line.substr(line.find('-') + 1, line.find(' ')), nullptr, 16);
                        if (ring_at >= from && ring_at < to)
                          ring_ro = line.find(" r--s ") != std::string::npos;
                      }
                      if (!ring_ro) return std::string("the ring's mapping is not r--s");
                      return std::string();
                    }),
            "");
  EXPECT_EQ(
      as_user(kStranger,
              [&] {
                // An observer (a stats tool) asks for everything it may read.
                test::Intruder observer(options, protocol::Role::kObserver);
                protocol::Writer w = observer.connection().next_request(protocol::Type::kMapArenas);
                observer.connection().request(w);
                bool listed = false;
                std::string failure;
                for_each_channel(observer.memory(), [&](const DirectoryEntry& e) {
                  if (e.name != "orders:9") return;
                  listed = true;  // names are public, as PUBSUB CHANNELS is in Redis
                  const uint32_t ring_arena = layout::ShmRef::arena_id(e.descriptor->ring_ref);
                  const uint32_t readers_arena =
                      layout::ShmRef::arena_id(e.descriptor->readers_ref);
                  if (e.ring || observer.memory().mapped(ring_arena) ||
                      observer.memory().mapped(readers_arena))
                    failure = "a client that may not read orders:9 maps its arenas";
                });
                if (!listed) return std::string("orders:9 is not listed");
                auto stats = StatsReader::open(options).read("orders:*");
                if (stats.channels.size() != 1 || stats.channels[0].published != 0)
                  return std::string("stats show the counters of a channel it may not read");
                return failure;
              }),
      "");
}

// A read-only descriptor cannot be reopened writable through /proc by another user: the
// segment's mode (0600, the daemon's user) decides, not the descriptor.
TEST_F(AccessTest, AReadOnlyDescriptorCannotBeReopenedWritable) {
  Arena arena = Arena::create("shmbus-test.reopen", 1 << 20, 9);
  const int ro = arena.read_only_fd();
  EXPECT_EQ(
      as_user(kStranger,
              [&] {
                const std::string path = "/proc/self/fd/" + std::to_string(ro);
                const int rw = ::open(path.c_str(), O_RDWR);
                if (rw >= 0) return std::string("reopened a read-only segment writable");
                if (mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, ro, 0) != MAP_FAILED)
                  return std::string("mapped a read-only descriptor writable");
                return std::string();
              }),
      "");
}

}  // namespace
}  // namespace shmbus
