// The bus end to end against a hostile or buggy client: one that maps what any client of
// the bus may map and writes into it while honest publishers and subscribers run. The
// daemon and the honest clients must stay up, lose nothing they did not have to, and say
// what happened.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "daemon_support.hpp"
#include "intruder.hpp"
#include "shmbus/shmbus.hpp"

namespace shmbus {
namespace {

using namespace std::chrono_literals;
using test::TestDaemon;

// Another subscriber of a channel the subscription reads unlinks every doorbell from that
// ring (or a publisher clears the subscription's bits): the subscriber is never rung. It must still
// get the message, within a sweep period or two - for a subscription small enough to read its rings
// directly and for one over many rings alike.
TEST(HostileBus, AWithheldDoorbellDelaysASubscriberButNeverHangsIt) {
  TestDaemon daemon;
  for (const int channels : {1, 40}) {
    SCOPED_TRACE(std::to_string(channels) + " channel(s)");
    auto sub = Subscription::open(daemon.options());
    std::vector<std::string> names;
    for (int i = 0; i < channels; ++i)
      names.push_back("quiet:" + std::to_string(channels) + ":" + std::to_string(i));
    sub.subscribe(names);
    EXPECT_FALSE(sub.next(50ms));  // parked on the doorbell now

    // Another subscriber of the channel: it maps the reader table, links included.
    test::Intruder intruder(daemon.options(), protocol::Role::kSubscriber);
    RingRef ring = intruder.subscribe(names.back()).ring;
    for (uint32_t i = 0; i < ring.reader_capacity(); ++i)
      ring.notify()[i].store(layout::ShmRef::kNone);

    auto bus = Bus::connect(daemon.options());
    std::thread publisher([&] {
      std::this_thread::sleep_for(200ms);  // the subscriber is parked by then
      bus.publish(names.back(), "withheld");
    });
    const auto start = std::chrono::steady_clock::now();
    auto m = sub.next(10s);
    const auto waited = std::chrono::steady_clock::now() - start;
    publisher.join();
    ASSERT_TRUE(m);
    EXPECT_EQ(m->text(), "withheld");
    EXPECT_LT(waited, 3s);
  }
}

// The attack, end to end: a publisher of channel A pushes A's claim 2^50 ahead and
// leaves. The daemon keeps answering, finds the ring corrupt (its tick, or the report of
// A's next honest publish), quarantines it, and A goes on in a new ring: its subscriber
// keeps its subscription and its honest publisher publishes again. B is untouched.
TEST(HostileBus, ACorruptRingIsQuarantinedAndItsChannelGoesOnInANewRing) {
  TestDaemon daemon;
  auto sub_a = Subscription::open(daemon.options());
  sub_a.subscribe({"victim"});
  auto sub_b = Subscription::open(daemon.options());
  sub_b.subscribe({"bystander"});
  auto bus = Bus::connect(daemon.options());
  auto victim = bus.channel("victim");
  auto bystander = bus.channel("bystander");
  victim.publish("before");
  ASSERT_TRUE(sub_a.next(1s));
  {
    test::Intruder intruder(daemon.options(), protocol::Role::kPublisher);
    RingRef ring = intruder.open_channel("victim");
    const layout::ClaimWord claim = ring.load_claim();
    __extension__ typedef unsigned __int128 u128;
    __atomic_store_n(reinterpret_cast<u128*>(&ring.header()->claim),
                     (static_cast<u128>(claim.sequence) << 64) | (claim.position + (1ull << 50)),
                     __ATOMIC_SEQ_CST);
  }
  // The daemon answers at once, now and while it deals with the ring.
  auto pinger = Bus::connect(daemon.options());
  const auto deadline = std::chrono::steady_clock::now() + 3s;
  std::chrono::nanoseconds worst{0};
  uint64_t bystanders = 0;
  bool victim_back = false;
  while (std::chrono::steady_clock::now() < deadline && !victim_back) {
    worst = std::max(worst, pinger.ping());
    bystander.publish(std::to_string(bystanders++));
    try {
      victim_back = victim.publish("after") == 1;  // reopened on the new ring
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::kCorrupt) << e.what();  // until the ring is replaced
    }
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_TRUE(victim_back) << "the victim channel did not recover within 3 s";
  EXPECT_LT(worst, 10ms) << "the daemon took that long to answer a PING";
  // The victim's subscriber was moved to the new ring without asking.
  std::optional<Message> m;
  for (int i = 0; i < 50 && !(m = sub_a.next(100ms)); ++i) {
  }
  ASSERT_TRUE(m);
  EXPECT_EQ(m->channel, "victim");
  EXPECT_EQ(m->text(), "after");
  EXPECT_EQ(sub_a.channels(), std::vector<std::string>{"victim"});
  // The bystander lost nothing.
  for (uint64_t i = 0; i < bystanders; ++i) {
    auto b = sub_b.next(1s);
    ASSERT_TRUE(b) << "bystander message " << i << " missing";
    EXPECT_EQ(b->text(), std::to_string(i));
    EXPECT_EQ(b->lost_before, 0u);
  }
}

}  // namespace
}  // namespace shmbus
