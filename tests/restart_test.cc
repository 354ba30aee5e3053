// The daemon dies and comes back while clients run (issue 13): every client learns of it
// within a second, publishes nothing into the dead daemon's rings, reconnects with backoff,
// subscribes again, and the bus never splits. Runs the real shmbusd ($SHMBUSD), killed with
// SIGKILL, stopped with SIGTERM, or restarted on a listening socket the test keeps (as a
// systemd .socket unit does); publishers and subscribers are processes of their own.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "shmbus/shmbus.hpp"
#include "shmbusd_process.hpp"

namespace shmbus {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using test::DaemonProcess;
using test::spawn;
using test::start_shmbusd;
using test::TempDir;
using test::wait_exit;

enum class Restart { kKill, kTerm, kActivated };

// One bus served by successive shmbusd processes on the same socket path.
class RestartedBus {
 public:
  explicit RestartedBus(Restart how)
      : how_(how), bus_("rs" + std::to_string(getpid()) + "x" + std::to_string(counter_++)) {
    path_ = dir_.file("bus.sock");
    if (how_ == Restart::kActivated) {
      listening_ = test::unix_socket(SOCK_STREAM, path_);
      if (listen(listening_, 128) != 0) throw std::runtime_error("listen failed");
    }
    start();
  }
  ~RestartedBus() {
    daemon_.reset();
    if (listening_ >= 0) close(listening_);
  }

  void start() {
    daemon_ = std::make_unique<DaemonProcess>(start_shmbusd(
        config_.empty()
            ? std::vector<std::string>{"--bus", bus_, "--socket", path_, "--log-level", "warn"}
            : std::vector<std::string>{"--bus", bus_, "--socket", path_, "--log-level", "warn",
                                       "-c", config_},
        {}, listening_));
    // Ready once it answers (a socket-activated one answers from the backlog).
    for (int i = 0; i < 500; ++i) {
      try {
        ConnectOptions o = options("probe");
        o.reconnect.enabled = false;
        Bus::connect(o).ping();
        return;
      } catch (const Error&) {
        std::this_thread::sleep_for(10ms);
      }
    }
    throw std::runtime_error("shmbusd did not come up on " + path_);
  }
  // Ends the daemon the chosen way; returns when its process is gone.
  void end() {
    kill(daemon_->pid(), how_ == Restart::kKill ? SIGKILL : SIGTERM);
    daemon_->wait_exit();
  }
  void restart() {
    end();
    start();
  }
  pid_t pid() const { return daemon_->pid(); }
  // The config file of the daemons started from now on (empty text: none).
  void set_config(const std::string& text) {
    if (text.empty()) {
      config_.clear();
      return;
    }
    config_ = dir_.file("shmbusd.toml");
    std::ofstream(config_) << text;
  }

  ConnectOptions options(const char* client) const {
    ConnectOptions o;
    o.bus = bus_;
    o.socket_path = path_;
    o.client_name = client;
    return o;
  }

 private:
  static inline int counter_ = 0;
  Restart how_;
  std::string bus_;
  TempDir dir_;
  std::string path_;
  int listening_ = -1;
  std::unique_ptr<DaemonProcess> daemon_;
  std::string config_;
};

// A flag in shared memory the parent raises for its children.
struct SharedFlags {
  std::atomic<int> restarted{0};                // the new daemon answers
  std::atomic<int> tail_done{0};                // publishers that published their tail
  std::atomic<uint64_t> published[2] = {0, 0};  // by each publisher, once its tail is out
};

constexpr int kPublishers = 2;
constexpr int kTail = 200;  // messages each publisher sends well after the restart

// Publisher `p`: a steady stream on channel "s:<p>" ("<p> <n> <phase>"), through the
// restart, then (once the new daemon is up and a moment has passed) a tail of kTail. Exits
// 0 if its Bus reconnected exactly once and no publish failed.
// Prints each LinkEvent of a child, for the log.
ConnectOptions logging(ConnectOptions options, std::string who) {
  options.reconnect.on_event = [who](const LinkEvent& e) {
    std::fprintf(stderr, "%s: %s after %.1f ms, %llu tries: %s\n", who.c_str(),
                 e.kind == LinkEvent::Kind::kLost ? "lost" : "reconnected",
                 std::chrono::duration<double, std::milli>(e.down_for).count(),
                 static_cast<unsigned long long>(e.attempts), e.detail.c_str());
  };
  return options;
}

int run_publisher(const ConnectOptions& options, int p, SharedFlags* flags) {
  auto bus = Bus::connect(logging(options, "publisher " + std::to_string(p)));
  const std::string channel = "s:" + std::to_string(p);
  uint64_t n = 0;
  auto send = [&](const char* phase) {
    bus.publish(channel, std::to_string(p) + " " + std::to_string(n++) + " " + phase);
  };
  while (flags->restarted.load() == 0) {
    send("stream");
    std::this_thread::sleep_for(200us);
  }
  for (int i = 0; i < 500; ++i) {  // through the restart and the subscribers' return
    send("stream");
    std::this_thread::sleep_for(200us);
  }
  std::this_thread::sleep_for(500ms);
  for (int i = 0; i < kTail; ++i) {
    send("tail");
    std::this_thread::sleep_for(100us);
  }
  flags->published[p].store(n);
  flags->tail_done.fetch_add(1);
  const LinkStats stats = bus.link_stats();
  std::fprintf(stderr, "publisher %d: %llu published, %llu loss(es), %llu reconnect(s)\n", p,
               static_cast<unsigned long long>(n), static_cast<unsigned long long>(stats.losses),
               static_cast<unsigned long long>(stats.reconnects));
  return stats.reconnects == 1 && stats.connected ? 0 : 1;
}

// What a subscriber child found, checked in the child (it exits 0 if all held) and
// printed for the log.
struct Findings {
  uint64_t delivered = 0, duplicates = 0, lost = 0, gaps = 0, tails = 0;
  uint64_t bad_sequences = 0;
  double longest_silence_ms = 0;
  std::string silence_ended_at;  // the message that ended it
};

// A subscriber: by channel names (`by_pattern` false) or by the pattern "s:*". Reads until
// every publisher's tail came, checking that nothing is delivered twice and that within
// each daemon's rings the sequences account for every message (delivered, or counted in
// lost_before). Exits 0 if all held, it reconnected once, and every tail message arrived.
int run_subscriber(const ConnectOptions& options, bool by_pattern, SharedFlags* flags,
                   int ready_fd) {
  auto sub = Subscription::open(logging(options, by_pattern ? "psubscriber" : "subscriber"));
  std::vector<std::string> channels;
  for (int p = 0; p < kPublishers; ++p) channels.push_back("s:" + std::to_string(p));
  if (by_pattern)
    sub.psubscribe({"s:*"});
  else
    sub.subscribe(channels);
  const char one = 1;
  if (write(ready_fd, &one, 1) != 1) return 97;
  Findings f;
  std::set<std::string> seen;
  std::map<std::string, uint64_t> next_sequence;  // per channel, in the current daemon's ring
  std::map<int, int> tails;
  auto last = Clock::now();
  bool started = false;
  const auto give_up = Clock::now() + 60s;
  while (Clock::now() < give_up) {
    auto m = sub.next(100ms);
    if (!m) {
      if (flags->tail_done.load() == kPublishers &&
          std::all_of(tails.begin(), tails.end(), [](auto& t) { return t.second == kTail; }) &&
          tails.size() == kPublishers)
        break;
      continue;
    }
    const auto now = Clock::now();
    ++f.delivered;
    const std::string text(m->text());
    // The gap across the restart: the longest time without a delivery while the publishers
    // stream (they pause before their tail).
    if (text.find("stream") != std::string::npos) {
      const double silence = std::chrono::duration<double, std::milli>(now - last).count();
      if (started && silence > f.longest_silence_ms) {
        f.longest_silence_ms = silence;
        f.silence_ended_at = text;
      }
      started = true;
      last = now;
    }
    if (!seen.insert(text).second) ++f.duplicates;
    const std::string channel(m->channel);
    f.lost += m->lost_before;
    if (m->gap) {
      ++f.gaps;
      // A restarted daemon's ring counts from 0, and channels (by name or pattern) are read
      // again from their oldest message: what the ring no longer holds is in lost_before.
      if (m->sequence != m->lost_before) ++f.bad_sequences;
    } else if (next_sequence.count(channel) != 0 &&
               m->sequence != next_sequence[channel] + m->lost_before) {
      ++f.bad_sequences;
    }
    next_sequence[channel] = m->sequence + 1;
    std::istringstream words(text);
    int p = -1;
    uint64_t n = 0;
    std::string phase;
    words >> p >> n >> phase;
    if (phase == "tail") ++tails[p];
  }
  for (auto& [p, count] : tails) f.tails += static_cast<uint64_t>(count);
  // What was published and neither delivered nor reported lost: only a publish that slipped
  // into the dead daemon's ring after this subscriber drained it can be, at most one per
  // publisher (each looks at the life word before every publish). Message::gap said so.
  uint64_t published = 0;
  for (int p = 0; p < kPublishers; ++p) published += flags->published[p].load();
  const int64_t missing =
      static_cast<int64_t>(published) - static_cast<int64_t>(f.delivered + f.lost);
  std::fprintf(stderr, "subscriber (%s): %lld of %llu published neither delivered nor reported\n",
               by_pattern ? "pattern" : "channels", static_cast<long long>(missing),
               static_cast<unsigned long long>(published));
  const LinkStats stats = sub.link_stats();
  std::fprintf(stderr,
               "subscriber (%s): %llu delivered, %llu duplicate(s), %llu reported lost, %llu "
               "gap(s), %llu bad sequence(s), %llu of %d tail messages, longest silence %.0f "
               "ms (up to '%s'), %llu reconnect(s)\n",
               by_pattern ? "pattern" : "channels", static_cast<unsigned long long>(f.delivered),
               static_cast<unsigned long long>(f.duplicates),
               static_cast<unsigned long long>(f.lost), static_cast<unsigned long long>(f.gaps),
               static_cast<unsigned long long>(f.bad_sequences),
               static_cast<unsigned long long>(f.tails), kPublishers * kTail, f.longest_silence_ms,
               f.silence_ended_at.c_str(), static_cast<unsigned long long>(stats.reconnects));
  const bool ok = f.duplicates == 0 && f.bad_sequences == 0 && missing >= 0 &&
                  missing <= kPublishers && f.tails == static_cast<uint64_t>(kPublishers * kTail) &&
                  stats.reconnects == 1 && f.gaps <= static_cast<uint64_t>(kPublishers);
  return ok ? 0 : 1;
}

// try_publish() on `channel` says `status`, and publish() throws `code` mentioning `text`:
// nothing is published either way.
void expect_publish_fails(Channel& channel, PublishStatus status, Errc code,
                          const std::string& text) {
  EXPECT_EQ(channel.try_publish(std::as_bytes(std::span<const char>("x", 1))).status, status);
  try {
    channel.publish("after");
    ADD_FAILURE() << "published, where it should have failed mentioning " << text;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

class DaemonRestart : public ::testing::TestWithParam<Restart> {};

TEST_P(DaemonRestart, EveryClientComesBackToTheOneBusAndNothingIsDeliveredTwice) {
  RestartedBus bus(GetParam());
  auto* flags = static_cast<SharedFlags*>(mmap(nullptr, sizeof(SharedFlags), PROT_READ | PROT_WRITE,
                                               MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(flags, MAP_FAILED);
  new (flags) SharedFlags;
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  std::vector<pid_t> subscribers, publishers;
  for (bool by_pattern : {false, true}) {
    const ConnectOptions o = bus.options(by_pattern ? "psub" : "sub");
    subscribers.push_back(spawn([&] { return run_subscriber(o, by_pattern, flags, ready[1]); }));
  }
  for (size_t i = 0; i < subscribers.size(); ++i) {
    char byte;
    ASSERT_EQ(read(ready[0], &byte, 1), 1);
  }
  for (int p = 0; p < kPublishers; ++p) {
    const ConnectOptions o = bus.options("pub");
    publishers.push_back(spawn([&] { return run_publisher(o, p, flags); }));
  }
  std::this_thread::sleep_for(500ms);  // a steady stream
  const auto down = Clock::now();
  bus.restart();
  std::fprintf(stderr, "restart took %.0f ms\n",
               std::chrono::duration<double, std::milli>(Clock::now() - down).count());
  flags->restarted.store(1);
  for (pid_t pid : publishers) EXPECT_EQ(wait_exit(pid), 0) << "a publisher";
  for (pid_t pid : subscribers) EXPECT_EQ(wait_exit(pid), 0) << "a subscriber";
  close(ready[0]);
  close(ready[1]);
  munmap(flags, sizeof(SharedFlags));
}

INSTANTIATE_TEST_SUITE_P(Ways, DaemonRestart,
                         ::testing::Values(Restart::kKill, Restart::kTerm, Restart::kActivated),
                         [](const auto& info) {
                           switch (info.param) {
                             case Restart::kKill: return std::string("Sigkill");
                             case Restart::kTerm: return std::string("Sigterm");
                             default: return std::string("SocketActivated");
                           }
                         });

// Idle clients are told too: one blocked in next(-1) and one polling fd() learn within a
// second that the daemon died (SIGKILL rings no doorbell), each through a LinkEvent.
TEST(DaemonDeath, IdleSubscribersInNextAndInPollLearnWithinASecond) {
  RestartedBus bus(Restart::kKill);
  std::atomic<int64_t> lost_at_blocked{0}, lost_at_polled{0};
  auto since_epoch = [] { return Clock::now().time_since_epoch().count(); };
  ConnectOptions blocked_options = bus.options("blocked");
  blocked_options.reconnect.on_event = [&](const LinkEvent& e) {
    if (e.kind == LinkEvent::Kind::kLost) lost_at_blocked = since_epoch();
  };
  ConnectOptions polled_options = bus.options("polled");
  polled_options.reconnect.on_event = [&](const LinkEvent& e) {
    if (e.kind == LinkEvent::Kind::kLost) lost_at_polled = since_epoch();
  };
  auto blocked = Subscription::open(blocked_options);
  blocked.subscribe({"idle"});
  auto polled = Subscription::open(polled_options);
  polled.subscribe({"idle"});
  const int fd = polled.fd();
  while (polled.next(0ns)) {
  }

  std::optional<std::string> blocked_got;
  std::thread blocked_thread([&] {
    auto m = blocked.next(-1ns);  // forever: the restarted daemon's message ends it
    blocked_got = m ? std::string(m->text()) : "";
  });
  std::this_thread::sleep_for(300ms);  // both parked
  const auto killed = since_epoch();
  kill(bus.pid(), SIGKILL);
  pollfd p{fd, POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 1000), 1) << "the fd did not turn readable within a second";
  EXPECT_FALSE(polled.next(0ns));  // notices, keeps what the rings held (nothing), reconnects later
  const auto ms = [&](int64_t at) { return (at - killed) / 1'000'000.0; };
  ASSERT_NE(lost_at_polled.load(), 0);
  EXPECT_LT(ms(lost_at_polled), 1000.0);
  for (int i = 0; i < 100 && lost_at_blocked.load() == 0; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_NE(lost_at_blocked.load(), 0) << "next(-1) did not notice within a second";
  EXPECT_LT(ms(lost_at_blocked), 1000.0);
  std::fprintf(stderr, "told after %.0f ms (next(-1)) and %.0f ms (poll on fd())\n",
               ms(lost_at_blocked), ms(lost_at_polled));

  // Then both come back by themselves to the new daemon.
  bus.end();
  bus.start();
  auto publisher = Bus::connect(bus.options("pub"));
  // Whether or not they are back yet: a restarted daemon's channels are read from their
  // oldest message.
  publisher.publish("idle", "after the restart");
  blocked_thread.join();
  EXPECT_EQ(blocked_got, "after the restart");
  ASSERT_EQ(poll(&p, 1, 3000), 1);
  std::optional<Message> m;
  for (int i = 0; i < 300 && !m; ++i) m = polled.next(10ms);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->text(), "after the restart");
  EXPECT_EQ(polled.link_stats().reconnects, 1u);
  EXPECT_EQ(blocked.link_stats().reconnects, 1u);
}

// With reconnecting off, or no daemon back within the wait, the first call after the loss
// fails with kDaemonGone naming the socket - and a publish never lands in a dead daemon's
// rings, where only old subscribers would ever read it (a split bus).
TEST(DaemonDeath, NothingIsPublishedIntoADeadDaemonsRings) {
  RestartedBus bus(Restart::kKill);
  ConnectOptions fail_fast = bus.options("fail-fast");
  fail_fast.reconnect.wait = 0ns;
  ConnectOptions off = bus.options("off");
  off.reconnect.enabled = false;
  auto sub = Subscription::open(off);
  sub.subscribe({"c"});
  auto publisher = Bus::connect(fail_fast);
  auto channel = publisher.channel("c");
  EXPECT_EQ(channel.publish("before"), 1u);
  kill(bus.pid(), SIGKILL);
  for (int i = 0; i < 100 && kill(bus.pid(), 0) == 0; ++i) std::this_thread::sleep_for(10ms);
  std::this_thread::sleep_for(50ms);
  // Never into the dead daemon's ring, where only old subscribers would ever read it.
  expect_publish_fails(channel, PublishStatus::kDaemonGone, Errc::kDaemonGone, "bus.sock");
  // The subscriber gets what was published before, then hears that the daemon is gone.
  auto m = sub.next(1s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->text(), "before");
  try {
    sub.next(1s);
    ADD_FAILURE() << "next() did not say the daemon is gone";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kDaemonGone);
    EXPECT_NE(std::string(e.what()).find("ReconnectOptions::enabled"), std::string::npos)
        << e.what();
  }
}

// While the daemon is away, fd() turns readable only when a reconnect try is due: an
// event loop polling it does not spin (it woke tens of thousands of times a second before).
TEST(DaemonDeath, AnEventLoopDoesNotSpinWhileTheDaemonIsAway) {
  RestartedBus bus(Restart::kKill);
  auto sub = Subscription::open(bus.options("polled"));
  sub.subscribe({"quiet"});
  const int fd = sub.fd();
  kill(bus.pid(), SIGKILL);
  int wakeups = 0;
  const auto until = Clock::now() + 1500ms;
  while (Clock::now() < until) {
    pollfd p{fd, POLLIN, 0};
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count();
    if (poll(&p, 1, static_cast<int>(std::max<int64_t>(left, 0))) != 1) continue;
    ++wakeups;
    EXPECT_FALSE(sub.next(0ns));
  }
  // The loss, then a try at once and after ~10, 20, 40, ... 500 ms: about ten.
  std::fprintf(stderr, "%d wake-ups in 1.5 s without a daemon\n", wakeups);
  EXPECT_GE(wakeups, 2);
  EXPECT_LE(wakeups, 30);
  EXPECT_FALSE(sub.link_stats().connected);
  bus.end();
}

// A loan taken before the daemon died and committed after its channel moved to the new
// daemon publishes nothing into either ring: the commit says so, and the next loan works.
TEST(DaemonDeath, ALoanOutAcrossARestartIsRefusedNotWrittenAnywhere) {
  RestartedBus bus(Restart::kKill);
  auto publisher = Bus::connect(bus.options("pub"));
  auto channel = publisher.channel("loans");
  auto sub = Subscription::open(bus.options("sub"));
  sub.subscribe({"loans"});
  Loan old_loan = channel.loan(16);
  bus.restart();
  EXPECT_TRUE(channel.try_publish(std::as_bytes(std::span<const char>("new", 3))).ok());
  std::memset(old_loan.data().data(), 'x', old_loan.data().size());  // still mapped
  try {
    old_loan.commit(16);
    ADD_FAILURE() << "a loan from the dead daemon's ring was committed";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kDaemonGone);
  }
  Loan fresh = channel.loan(5);
  std::memcpy(fresh.data().data(), "fresh", 5);
  fresh.commit(5);
  std::vector<std::string> got;
  while (auto m = sub.next(2s)) {
    got.emplace_back(m->text());
    if (got.size() == 2) break;
  }
  EXPECT_EQ(got, (std::vector<std::string>{"new", "fresh"}));
}

// A callback may use the Bus it reports on: events are handed over without its lock held.
TEST(DaemonDeath, ALinkEventCallbackMayUseItsBus) {
  RestartedBus bus(Restart::kKill);
  std::optional<Bus> publisher;
  std::vector<uint64_t> reconnects_seen;
  ConnectOptions options = bus.options("pub");
  options.reconnect.on_event = [&](const LinkEvent&) {
    reconnects_seen.push_back(publisher->link_stats().reconnects);
  };
  publisher = Bus::connect(options);
  publisher->publish("cb", "before");
  bus.restart();
  publisher->publish("cb", "after");  // would deadlock if the callback ran under the lock
  EXPECT_EQ(reconnects_seen, (std::vector<uint64_t>{1, 1}));  // lost, reconnected: both after
}

// A restarted daemon that refuses the resubscription (a lower limit) does not leave a deaf
// subscription behind: next() says why on every try, the subscription keeps what it holds,
// and once a daemon accepts it, it is back.
TEST(DaemonDeath, ARefusedResubscriptionIsSaidAndTriedAgain) {
  RestartedBus bus(Restart::kKill);
  auto sub = Subscription::open(bus.options("sub"));
  sub.subscribe({"a", "b", "c"});
  bus.set_config("[limits]\nmax_subscriptions_per_client = 2\n");
  bus.restart();
  int refusals = 0;
  for (int i = 0; i < 50 && refusals < 2; ++i) {
    try {
      sub.next(100ms);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::kLimit) << e.what();
      EXPECT_NE(std::string(e.what()).find("subscribing again"), std::string::npos) << e.what();
      ++refusals;
    }
  }
  EXPECT_EQ(refusals, 2);
  EXPECT_EQ(sub.channels(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_FALSE(sub.link_stats().connected);
  bus.set_config("");
  bus.restart();
  auto publisher = Bus::connect(bus.options("pub"));
  publisher.publish("c", "back");
  std::optional<Message> m;
  for (int i = 0; i < 50 && !m; ++i) m = sub.next(100ms);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->text(), "back");
  EXPECT_TRUE(sub.link_stats().connected);
  EXPECT_EQ(sub.link_stats().losses, 1u);
  EXPECT_EQ(sub.link_stats().reconnects, 1u);
}

// A channel opened again on a restarted daemon that refuses it fails with the daemon's own
// reason (here max_channels), not as a corrupt ring.
TEST(DaemonDeath, ARefusalToReopenAChannelSaysWhy) {
  RestartedBus bus(Restart::kKill);
  auto publisher = Bus::connect(bus.options("pub"));
  auto channel = publisher.channel("mine");
  channel.publish("before");
  bus.set_config("[limits]\nmax_channels = 1\n");
  bus.restart();
  Bus::connect(bus.options("other")).publish("theirs", "x");  // takes the only channel
  expect_publish_fails(channel, PublishStatus::kRefused, Errc::kLimit, "max_channels");
}

// A subscription change that finds the daemon gone (and gives up after its wait) still
// leaves fd() to say when to come back: an event loop that waits only on it is not stuck.
TEST(DaemonDeath, AFailedChangeWhileTheDaemonIsAwayLeavesTheFdAlive) {
  RestartedBus bus(Restart::kKill);
  ConnectOptions options = bus.options("loop");
  options.reconnect.wait = 50ms;
  auto sub = Subscription::open(options);
  sub.subscribe({"a"});
  const int fd = sub.fd();
  while (sub.next(0ns)) {
  }
  kill(bus.pid(), SIGKILL);
  std::this_thread::sleep_for(20ms);  // dead, and the helper has not looked yet
  try {
    sub.subscribe({"b"});
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kDaemonGone) << e.what();
  }
  bus.end();
  bus.start();
  auto publisher = Bus::connect(bus.options("pub"));
  publisher.publish("a", "back");
  std::optional<Message> m;
  for (int i = 0; i < 50 && !m; ++i) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 200) != 1) continue;  // only the fd says when to call next()
    while (auto got = sub.next(0ns)) m = std::move(got);
  }
  ASSERT_TRUE(m) << "fd() never turned readable again";
  EXPECT_EQ(m->text(), "back");
}

size_t open_descriptors() {
  return static_cast<size_t>(std::distance(std::filesystem::directory_iterator("/proc/self/fd"),
                                           std::filesystem::directory_iterator()));
}
size_t mappings() {
  std::ifstream maps("/proc/self/maps");
  size_t n = 0;
  for (std::string line; std::getline(maps, line);) n += line.find("shmbus") != std::string::npos;
  return n;
}
size_t resident_bytes() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  return 0;
}
size_t dev_shm_entries() {
  return static_cast<size_t>(std::distance(std::filesystem::directory_iterator("/dev/shm"),
                                           std::filesystem::directory_iterator()));
}

// Twenty restarts in a row: each time the clients come back, and they keep no descriptor,
// mapping or /dev/shm name of a daemon that is gone.
TEST(DaemonRestarts, TwentyInARowLeakNothing) {
  RestartedBus bus(Restart::kKill);
  auto publisher = Bus::connect(bus.options("pub"));
  auto channel = publisher.channel("r");
  auto sub = Subscription::open(bus.options("sub"));
  sub.subscribe({"r"});
  sub.psubscribe({"r*"});
  const size_t shm_before = dev_shm_entries();
  size_t fds_after_first = 0, maps_after_first = 0, resident_after_first = 0;
  for (int round = 0; round < 20; ++round) {
    bus.restart();
    // Published before the subscriber is back, perhaps: it reads the new ring from the start.
    channel.publish("round " + std::to_string(round));
    for (const char* pattern : {"", "r*"}) {
      auto m = sub.next(5s);
      ASSERT_TRUE(m) << "round " << round;
      EXPECT_EQ(m->text(), "round " + std::to_string(round));
      EXPECT_EQ(m->pattern, pattern);
      EXPECT_TRUE(m->gap);  // the first of its channel since the reconnect
    }
    if (round == 0) {
      fds_after_first = open_descriptors();
      maps_after_first = mappings();
      resident_after_first = resident_bytes();
    }
  }
  EXPECT_EQ(open_descriptors(), fds_after_first);
  EXPECT_EQ(mappings(), maps_after_first);
  const size_t resident = resident_bytes();
  std::fprintf(stderr, "resident after the first restart %.1f MiB, after the 20th %.1f MiB\n",
               resident_after_first / 1048576.0, resident / 1048576.0);
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  // (Sanitizers keep freed memory in quarantine.) A leak of each dead daemon's segments or
  // of the clients' state would grow by a ring or more a round.
  EXPECT_LT(resident, resident_after_first + (2u << 20));
#endif
  EXPECT_EQ(dev_shm_entries(), shm_before);
  EXPECT_EQ(sub.link_stats().reconnects, 20u);
  EXPECT_EQ(publisher.link_stats().reconnects, 20u);
}

// SIGHUP (ExecReload=) reads the config again: a new limit applies at once to the clients
// already connected, a setting the shared memory was laid out by is named and kept, a
// broken file changes nothing - and the daemon serves on throughout.
TEST(Reload, SighupAppliesNewLimitsNamesWhatNeedsARestartAndSurvivesABrokenFile) {
  TempDir dir;
  const std::string config = dir.file("shmbusd.toml"), log = dir.file("shmbusd.log");
  const std::string bus_name = "rl" + std::to_string(getpid());
  auto write_config = [&](const std::string& text) { std::ofstream(config) << text; };
  auto log_mentions = [&](const std::string& text) {
    for (int i = 0; i < 500; ++i) {
      std::ifstream in(log);
      const std::string content((std::istreambuf_iterator<char>(in)),
                                std::istreambuf_iterator<char>());
      if (content.find(text) != std::string::npos) return true;
      std::this_thread::sleep_for(10ms);
    }
    return false;
  };
  write_config("[limits]\nmax_channels_per_user = 2\n");
  DaemonProcess daemon(start_shmbusd(
      {"--bus", bus_name, "--socket", dir.file("bus.sock"), "-c", config, "--log-level", "info"},
      {}, -1, log));
  ConnectOptions options;
  options.bus = bus_name;
  options.socket_path = dir.file("bus.sock");
  std::optional<Bus> bus;
  for (int i = 0; i < 500 && !bus; ++i) {
    try {
      bus = Bus::connect(options);
    } catch (const Error&) {
      std::this_thread::sleep_for(10ms);
    }
  }
  ASSERT_TRUE(bus);
  bus->publish("a", "x");
  bus->publish("b", "x");
  try {
    bus->publish("c", "x");
    ADD_FAILURE() << "a third channel passed max_channels_per_user = 2";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kLimit);
  }

  write_config("[limits]\nmax_channels_per_user = 10\nmax_channels = 5000\n");
  kill(daemon.pid(), SIGHUP);
  EXPECT_TRUE(log_mentions("changed limits.max_channels_per_user"));
  EXPECT_TRUE(log_mentions("limits.max_channels changed in " + config + " but cannot"));
  EXPECT_NO_THROW(bus->publish("c", "x"));  // the same connection: the new limit applies

  write_config("[limits\n");
  kill(daemon.pid(), SIGHUP);
  EXPECT_TRUE(log_mentions("reload failed, the running config stays"));
  EXPECT_NO_THROW(bus->publish("d", "x"));  // still 10
  EXPECT_GE(bus->ping().count(), 0);
  EXPECT_EQ(bus->link_stats().losses, 0u);
  bus.reset();
  EXPECT_EQ(daemon.stop(), 0);
}

}  // namespace
}  // namespace shmbus
