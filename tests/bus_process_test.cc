// The bus across processes that crash, stall and come and go: the daemon repairs what a
// dead publisher left half-written, frees a dead subscriber's slots (so a back-pressure
// channel does not stall on it), reclaims idle channels, and an event loop can poll().
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <string>
#include <thread>

#include "child_process.hpp"
#include "daemon_support.hpp"
#include "intruder.hpp"
#include "ring_faults.hpp"
#include "shmbus/shmbus.hpp"

namespace shmbus {
namespace {

using namespace std::chrono_literals;
using test::spawn;
using test::TestDaemon;
using test::wait_exit;

// A child process that says when it is ready: `fn(ready)` runs in the child and calls
// ready() once it is set up (subscribed, holding a loan...); start() returns after that.
class ReadyChild {
 public:
  template <typename Fn>
  explicit ReadyChild(Fn&& fn) {
    if (pipe(pipe_) != 0) throw std::runtime_error("pipe failed");
    pid_ = spawn([&] {
      auto ready = [this] {
        const char one = 1;
        if (write(pipe_[1], &one, 1) != 1) _exit(97);
      };
      return fn(ready);
    });
    char byte;
    if (read(pipe_[0], &byte, 1) != 1) throw std::runtime_error("child died before ready");
  }
  ~ReadyChild() {
    close(pipe_[0]);
    close(pipe_[1]);
  }
  pid_t pid() const { return pid_; }

 private:
  int pipe_[2];
  pid_t pid_ = 0;
};

// Polls `condition` every 10 ms for up to `limit`.
template <typename Condition>
bool eventually_within(std::chrono::milliseconds limit, Condition&& condition) {
  for (auto waited = 0ms; waited < limit; waited += 10ms) {
    if (condition()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return condition();
}

template <typename Condition>
bool eventually(Condition&& condition) {
  return eventually_within(2s, std::forward<Condition>(condition));
}

// Kills `publisher`, which published "before" to "jobs" and then left a frame unfinished;
// publishes "after" and checks that the subscriber gets it once the daemon has padded over
// the dead frame (within `limit`), with that frame counted as lost.
void expect_repaired_after_kill(const TestDaemon& daemon, Subscription& sub, pid_t publisher,
                                std::chrono::seconds limit) {
  kill(publisher, SIGKILL);
  EXPECT_EQ(wait_exit(publisher), 128 + SIGKILL);
  auto first = sub.next(1s);
  ASSERT_TRUE(first);
  EXPECT_EQ(first->text(), "before");
  auto bus = Bus::connect(daemon.options());
  bus.publish("jobs", "after");
  auto second = sub.next(limit);
  ASSERT_TRUE(second) << "the daemon never repaired the dead publisher's frame";
  EXPECT_EQ(second->text(), "after");
  EXPECT_EQ(second->lost_before, 1u);
  auto stats = StatsReader::open(daemon.options()).read("jobs");
  ASSERT_EQ(stats.channels.size(), 1u);
  EXPECT_EQ(stats.channels[0].repaired_frames, 1u);
}

TEST(BusProcesses, CrashedPublisherMidMessageIsRepairedAndCountedLost) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"jobs"});
  ReadyChild child([&](auto ready) {
    auto bus = Bus::connect(daemon.options());
    auto channel = bus.channel("jobs");
    channel.publish("before");
    auto loan = channel.loan(64);  // claimed, never committed
    std::memcpy(loan.data().data(), "half", 4);
    ready();
    pause();  // killed here, loan in hand
    return 0;
  });
  // The dead claim blocks the ring until the daemon pads over it (after the process exit).
  expect_repaired_after_kill(daemon, sub, child.pid(), 3s);
}

TEST(BusProcesses, KilledSubscriberLeavesNoSubscriptionBehind) {
  TestDaemon daemon;
  auto bus = Bus::connect(daemon.options());
  ReadyChild child([&](auto ready) {
    auto sub = Subscription::open(daemon.options());
    sub.subscribe({"presence"});
    sub.psubscribe({"pres*"});
    ready();
    pause();
    return 0;
  });
  EXPECT_EQ(bus.publish("presence", "x"), 2u);
  const std::vector<std::string> names{"presence"};
  EXPECT_EQ(bus.numsub(names)[0].subscribers, 1u);
  kill(child.pid(), SIGKILL);
  wait_exit(child.pid());
  EXPECT_TRUE(eventually([&] { return bus.publish("presence", "y") == 0; }));
  EXPECT_EQ(bus.numsub(names)[0].subscribers, 0u);
  EXPECT_EQ(bus.numpat(), 0u);
  EXPECT_EQ(StatsReader::open(daemon.options()).read("presence").channels.at(0).subscribers, 0u);
}

TEST(BusProcesses, BackPressureChannelDoesNotStallOnADeadSubscriber) {
  TestDaemon daemon;
  auto bus = Bus::connect(daemon.options());
  ChannelOptions reliable;
  reliable.ring_bytes = 4096;
  reliable.back_pressure = true;
  reliable.publish_wait = 100ms;
  auto channel = bus.channel("orders", reliable);
  ReadyChild child([&](auto ready) {
    auto sub = Subscription::open(daemon.options());
    sub.subscribe({"orders"});
    ready();
    pause();  // never reads
    return 0;
  });
  const std::string payload(200, 'o');
  // A live subscriber that does not read holds the publisher back...
  int published = 0;
  PublishResult r;
  while ((r = channel.try_publish(std::as_bytes(std::span(payload)), 0ns)).ok()) ++published;
  EXPECT_EQ(r.status, PublishStatus::kWouldBlock);
  EXPECT_GT(published, 5);
  // ...and its death releases it.
  kill(child.pid(), SIGKILL);
  wait_exit(child.pid());
  EXPECT_TRUE(
      eventually([&] { return channel.try_publish(std::as_bytes(std::span(payload)), 0ns).ok(); }));
  // Publishers look past a dead gating reader at once; the daemon forgets it as a receiver
  // once it has seen the connection close.
  EXPECT_TRUE(eventually([&] { return channel.publish(payload) == 0u; }));
  for (int i = 0; i < 100; ++i) EXPECT_EQ(channel.publish(payload), 0u);
}

TEST(BusProcesses, SubscriberInAnotherProcessGetsEveryMessageInOrder) {
  TestDaemon daemon;
  auto bus = Bus::connect(daemon.options());
  ChannelOptions reliable;
  reliable.back_pressure = true;  // no loss even if the reader is descheduled
  auto channel = bus.channel("stream", reliable);
  constexpr int kMessages = 20000;
  ReadyChild child([&](auto ready) {
    auto sub = Subscription::open(daemon.options());
    sub.subscribe({"stream"});
    ready();
    for (int i = 0; i < kMessages; ++i) {
      auto m = sub.next(5s);
      if (!m) return 2;
      if (m->sequence != static_cast<uint64_t>(i) || m->lost_before != 0) return 3;
      if (m->text() != std::to_string(i)) return 4;
    }
    return sub.next(0ns) ? 5 : 0;
  });
  for (int i = 0; i < kMessages; ++i) ASSERT_EQ(channel.publish(std::to_string(i)), 1u);
  EXPECT_EQ(wait_exit(child.pid()), 0);
}

TEST(BusProcesses, PollableFdTurnsReadableOnPublish) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"events"});
  sub.psubscribe({"ev*"});
  pollfd pfd{sub.fd(), POLLIN, 0};
  EXPECT_EQ(poll(&pfd, 1, 50), 0) << "readable with nothing published";
  auto bus = Bus::connect(daemon.options());
  bus.publish("events", "1");
  ASSERT_EQ(poll(&pfd, 1, 2000), 1);
  int deliveries = 0;
  while (sub.next(0ns)) ++deliveries;
  EXPECT_EQ(deliveries, 2);
  pfd.revents = 0;
  EXPECT_EQ(poll(&pfd, 1, 50), 0) << "still readable after draining";
  // A channel created later, matching the pattern, wakes it too.
  bus.publish("evening", "2");
  ASSERT_EQ(poll(&pfd, 1, 2000), 1);
  auto m = sub.next(0ns);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->channel, "evening");
}

TEST(BusProcesses, IdleChannelsAreReclaimedAndComeBackWhole) {
  auto config = test::small_test_config();
  config.idle_ttl = std::chrono::seconds(1);
  TestDaemon daemon(config);
  auto sub = Subscription::open(daemon.options());
  sub.psubscribe({"tmp:*"});
  {
    auto bus = Bus::connect(daemon.options());
    EXPECT_EQ(bus.publish("tmp:1", "a"), 1u);
  }  // the publisher is gone; only the pattern subscriber reads tmp:1
  auto m = sub.next(1s);
  ASSERT_TRUE(m);
  auto stats = StatsReader::open(daemon.options());
  // Reclaiming needs the subscriber to let go of the ring: it does so in next().
  bool reclaimed = false;
  for (int i = 0; i < 60 && !reclaimed; ++i) {
    sub.next(50ms);
    reclaimed = stats.read("tmp:*").channels.empty();
  }
  EXPECT_TRUE(reclaimed);
  // Created anew: the pattern subscriber gets its first message again.
  auto bus = Bus::connect(daemon.options());
  EXPECT_EQ(bus.publish("tmp:1", "b"), 1u);
  m = sub.next(1s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->text(), "b");
  EXPECT_EQ(m->sequence, 0u);
}

TEST(BusProcesses, PublisherKilledBetweenClaimAndHeaderIsRepairedOnTheTick) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"jobs"});
  ReadyChild child([&](auto ready) {
    auto bus = Bus::connect(daemon.options());
    auto channel = bus.channel("jobs");
    channel.publish("before");
    // Die the way a publisher preempted right after its claim CAS and killed would: a claim
    // with no header, so nothing names its publisher.
    test::Intruder self(daemon.options(), protocol::Role::kPublisher);
    if (test::fake_headerless_claim(self.open_channel("jobs"), 64) == 0) return 3;
    ready();
    pause();
    return 0;
  });
  // Repaired once the claim has stayed headerless from one tick (1 s) to the next.
  expect_repaired_after_kill(daemon, sub, child.pid(), 5s);
}

TEST(BusProcesses, ASubscriberThatNeverReadsIsNamedWhenItsReclaimedRingsRunOut) {
  auto config = test::small_test_config();
  config.idle_ttl = std::chrono::seconds(1);
  config.max_channels = 3;
  TestDaemon daemon(config);
  auto options = daemon.options();
  options.client_name = "stuck-worker";
  auto stuck = Subscription::open(options);
  stuck.psubscribe({"tmp:*"});
  {
    auto first_publisher = Bus::connect(daemon.options());
    for (const char* name : {"tmp:1", "tmp:2", "tmp:3"})
      EXPECT_EQ(first_publisher.publish(name, "x"), 1u);
  }  // its holds on the channels go with it
  auto bus = Bus::connect(daemon.options());
  // Reclaimed after the TTL; `stuck` never reads the detach, so the rings stay held.
  auto stats = StatsReader::open(daemon.options());
  ASSERT_TRUE(eventually_within(5s, [&] { return stats.read("tmp:*").channels.empty(); }));
  try {
    bus.publish("tmp:4", "y");
    ADD_FAILURE() << "created a fourth channel with max_channels = 3";
  } catch (const Error& e) {
    const std::string text = e.what();
    EXPECT_NE(text.find("max_channels = 3"), std::string::npos) << text;
    EXPECT_NE(text.find("(pid " + std::to_string(getpid()) + ", 'stuck-worker') holds 3"),
              std::string::npos)
        << text;
  }
  // Once it reads, the rings are freed on the next tick and the channel can be made.
  for (int i = 0; i < 3; ++i) {
    auto m = stuck.next(1s);
    EXPECT_TRUE(m) << i;
  }
  EXPECT_TRUE(eventually_within(5s, [&] {
    stuck.next(10ms);
    try {
      return bus.publish("tmp:4", "y") == 1u;
    } catch (const Error&) {
      return false;
    }
  }));
}

}  // namespace
}  // namespace shmbus
