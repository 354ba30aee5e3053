// The crash matrix: publishers and subscribers killed (SIGKILL) at random points while they
// run, many times over. Every message number is either delivered or reported lost, exactly,
// and nothing a killed client held is left behind.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <random>
#include <string>
#include <thread>

#include "daemon_support.hpp"
#include "shmbus/shmbus.hpp"

namespace shmbus {
namespace {

using namespace std::chrono_literals;
using test::TestDaemon;

// Forks a child running `body` until it is killed; returns its pid.
template <typename Body>
pid_t spawn(Body&& body) {
  const pid_t pid = fork();
  if (pid == 0) {
    try {
      body();
    } catch (...) {
    }
    _exit(0);
  }
  return pid;
}

void kill_and_reap(pid_t pid) {
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
}

TEST(CrashMatrix, KilledPublishersLoseNothingUncountedAndKilledSubscribersLeaveNothing) {
  auto config = test::small_test_config();
  config.defaults.ring_bytes = 4 << 20;
  TestDaemon daemon(config);
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"crash:1"});

  // The reader: every message number of the channel is delivered or reported lost.
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> delivered{0}, lost{0}, next_sequence{0};
  std::thread reader([&] {
    while (!stop.load()) {
      auto m = sub.next(50ms);
      if (!m) continue;
      ++delivered;
      lost += m->lost_before;
      next_sequence = m->sequence + 1;
    }
  });

  std::mt19937 random(12345);
  constexpr int kPublisherKills = 120;
  for (int round = 0; round < kPublisherKills; ++round) {
    const pid_t publisher = spawn([&] {
      auto bus = Bus::connect(daemon.options());
      auto channel = bus.channel("crash:1");
      const std::string payload(48, 'p');
      for (;;) channel.publish(payload);
    });
    // Killed anywhere: before connecting, between messages, inside a claim or a commit.
    std::this_thread::sleep_for(std::chrono::microseconds(random() % 6000));
    kill_and_reap(publisher);
  }
  constexpr int kSubscriberKills = 60;
  for (int round = 0; round < kSubscriberKills; ++round) {
    const pid_t subscriber = spawn([&] {
      auto s = Subscription::open(daemon.options());
      s.subscribe({"crash:1", "crash:other"});
      s.psubscribe({"crash:*"});
      for (;;) s.next(10ms);
    });
    std::this_thread::sleep_for(std::chrono::microseconds(random() % 6000));
    kill_and_reap(subscriber);
  }

  // A last message, once the daemon has padded over whatever the killed left unfinished
  // (frames without a header are repaired on the tick after the next, so up to ~2 s).
  auto bus = Bus::connect(daemon.options());
  auto channel = bus.channel("crash:1");
  channel.publish("last");
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  auto stats = StatsReader::open(daemon.options());
  uint64_t published = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    for (const auto& c : stats.read("crash:1").channels) published = c.published;
    if (next_sequence.load() == published) break;
    std::this_thread::sleep_for(20ms);
  }
  stop = true;
  reader.join();
  std::printf(
      "%d publishers and %d subscribers killed; %llu messages: %llu delivered, %llu "
      "reported lost\n",
      kPublisherKills, kSubscriberKills, static_cast<unsigned long long>(published),
      static_cast<unsigned long long>(delivered.load()),
      static_cast<unsigned long long>(lost.load()));
  EXPECT_GT(published, 1000u);
  EXPECT_EQ(next_sequence.load(), published) << "the last message did not arrive";
  EXPECT_EQ(delivered.load() + lost.load(), published);

  // Nothing a killed subscriber held is left: the channel has our subscription alone, and
  // the channels only they held are gone or held by nobody.
  bool clean = false;
  for (int i = 0; i < 300 && !clean; ++i) {
    clean = true;
    for (const auto& c : stats.read("crash:*").channels)
      if (c.subscribers != (c.channel == "crash:1" ? 1u : 0u)) clean = false;
    if (!clean) std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(clean) << "a killed subscriber's reader slot was left behind";
}

}  // namespace
}  // namespace shmbus
