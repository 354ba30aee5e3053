// Publish order across channels (libbus/src/delivery_order.hpp) when stamps are skewed,
// forged or hidden: a publisher thread whose clock is far behind or ahead (this binary
// interposes clock_gettime with a per-thread offset, which stands for a clock step or for a
// publisher writing such stamps), a subscription change while a message is half delivered,
// and a doorbell leaf bit set without its summary bit (a publisher preempted between the
// two, or a hostile one).
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "client.hpp"
#include "daemon_support.hpp"
#include "doorbell.hpp"
#include "layout.hpp"
#include "protocol.hpp"
#include "shmbus/shmbus.hpp"

namespace {
thread_local long long clock_offset_ns = 0;  // CLOCK_REALTIME's offset in this thread
}  // namespace

// Every CLOCK_REALTIME read of this process, libshmbus's included, goes through here.
extern "C" int clock_gettime(clockid_t id, timespec* ts) {
  using Real = int (*)(clockid_t, timespec*);
  static const Real real = reinterpret_cast<Real>(dlsym(RTLD_NEXT, "clock_gettime"));
  const int rc = real(id, ts);
  if (rc == 0 && id == CLOCK_REALTIME && clock_offset_ns != 0) {
    const long long ns = ts->tv_sec * 1'000'000'000LL + ts->tv_nsec + clock_offset_ns;
    ts->tv_sec = ns / 1'000'000'000LL;
    ts->tv_nsec = ns % 1'000'000'000LL;
  }
  return rc;
}

namespace shmbus {
namespace {

using namespace std::chrono_literals;
using test::TestDaemon;

std::string describe(const Message& m) {
  return (m.pattern.empty() ? "message " : "pmessage " + std::string(m.pattern) + " ") +
         std::string(m.channel) + " " + std::string(m.text());
}

std::vector<std::string> drain(Subscription& sub) {
  std::vector<std::string> got;
  while (auto m = sub.next(200ms)) got.push_back(describe(*m));
  return got;
}

// Publishes from a thread of its own, with its clock `offset_ns` off.
void publish_skewed(const TestDaemon& daemon, long long offset_ns, const std::string& channel,
                    const std::string& payload) {
  std::thread([&] {
    clock_offset_ns = offset_ns;
    Bus::connect(daemon.options()).publish(channel, payload);
  }).join();
}

// A message's deliveries (message, then its pmessages) are never split, even when a change
// settles a message whose stamp is earlier than the one half delivered.
TEST(Order, AChangeNeverSplitsAMessageFromItsPmessages) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"a", "b"});
  sub.psubscribe({"a*"});
  auto bus = Bus::connect(daemon.options());
  bus.publish("a", "1");
  auto first = sub.next(1s);
  ASSERT_TRUE(first);
  EXPECT_EQ(describe(*first), "message a 1");
  publish_skewed(daemon, -1'000'000'000LL, "b", "x");  // stamped 1 s before "1"
  sub.unsubscribe({"b"});
  EXPECT_EQ(drain(sub), (std::vector<std::string>{"pmessage a* a 1", "message b x"}));
}

// A stamp far in the future says nothing: it neither puts its message last nor drags the
// rest of its ring behind messages published after them.
TEST(Order, AStampFarAheadDoesNotReorderItsRing) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"A", "B"});
  auto bus = Bus::connect(daemon.options());
  bus.publish("A", "warm");
  bus.publish("B", "warm");
  drain(sub);
  publish_skewed(daemon, 1'000'000'000LL, "A", "u");  // 1 s ahead
  bus.publish("A", "t1");
  bus.publish("B", "t2");
  EXPECT_EQ(drain(sub), (std::vector<std::string>{"message A u", "message A t1", "message B t2"}));
}

// Stamps far in the past keep a flood's ring first; a head passed over longer than any
// honest one can be goes out anyway.
TEST(Order, StampsFarBehindCannotStarveAnotherChannel) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"a", "b"});
  std::atomic<bool> stop{false};
  std::thread flood([&] {
    clock_offset_ns = -10'000'000'000LL;  // 10 s behind
    auto b = Bus::connect(daemon.options());
    while (!stop) b.publish("b", "flood");
  });
  std::this_thread::sleep_for(50ms);
  Bus::connect(daemon.options()).publish("a", "honest");
  bool got = false;
  uint64_t passed = 0;
  for (auto deadline = std::chrono::steady_clock::now() + 20s;
       !got && std::chrono::steady_clock::now() < deadline;) {
    auto m = sub.next(100ms);
    if (!m) continue;
    // A slow reader (5 us a message), so the flood's ring never runs dry.
    for (auto until = std::chrono::steady_clock::now() + 5us;
         std::chrono::steady_clock::now() < until;) {
    }
    got = m->channel == "a";
    if (!got) ++passed;
  }
  stop = true;
  flood.join();
  EXPECT_TRUE(got) << "the honest message never came";
  // Patience: max(65,536, what the two 64 KiB rings can hold) deliveries, and the flood's
  // messages staged before it.
  EXPECT_LE(passed, 65536u + 2 * 64 * 1024 / 32 + 64 * 1024 / 32);
}

// A leaf bit set without its summary bit (its setter preempted between the two): a
// publisher that finds the leaf set sets the summary, so a message it publishes next on
// another channel cannot overtake this one.
TEST(Order, ALeafBitWithoutItsSummaryDoesNotLetALaterMessageOvertake) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  std::vector<std::string> names;
  for (int i = 0; i < 70; ++i) names.push_back("c" + std::to_string(i));  // two leaf words
  sub.subscribe(names);
  drain(sub);  // reads every ring once: from now on only bits say which have news
  // The doorbell link of c0's ring: its doorbell and the bit it sets.
  BusMemory memory(daemon.bus());
  const Endpoint endpoint = resolve_endpoint(daemon.options());
  ControlConnection connection(endpoint, protocol::Role::kPublisher, memory.grant_handler());
  memory.set_doorbell_bits(connection.welcome().doorbell_bits);
  protocol::Writer w = connection.next_request(protocol::Type::kOpenChannel);
  w.str("c0").u64(0).u32(0).u8(0);
  const OwnedFrame reply = connection.request(w);
  protocol::Parser p = reply.parser();
  const RingRef ring = memory.ring(protocol::RingLocation::read(p));
  uint64_t link = layout::ShmRef::kNone;
  for (uint32_t i = 0; i < ring.notify_high_water() && link == layout::ShmRef::kNone; ++i)
    link = ring.notify()[i].load();
  ASSERT_NE(link, layout::ShmRef::kNone);
  auto* doorbell = memory.table().resolve_doorbell(link);
  ASSERT_NE(doorbell, nullptr);
  const uint32_t bit = layout::ShmRef::bit(link);
  doorbell::leaf_words(doorbell, memory.table().doorbells())[bit / 64].fetch_or(uint64_t{1}
                                                                                << (bit % 64));
  auto bus = Bus::connect(daemon.options());
  bus.publish("c0", "m1");
  bus.publish("c69", "m2");
  EXPECT_EQ(drain(sub), (std::vector<std::string>{"message c0 m1", "message c69 m2"}));
}

}  // namespace
}  // namespace shmbus
