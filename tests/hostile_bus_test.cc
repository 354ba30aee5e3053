// The bus end to end against a hostile or buggy client: one that maps what any client of
// the bus may map and writes into it while honest publishers and subscribers run. The
// daemon and the honest clients must stay up, lose nothing they did not have to, and say
// what happened.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "client.hpp"
#include "daemon_support.hpp"
#include "directory.hpp"
#include "shmbus/shmbus.hpp"

namespace shmbus {
namespace {

using namespace std::chrono_literals;
using test::TestDaemon;

// What a hostile client sees: the bus's shared memory, mapped as any client may map it.
class Intruder {
 public:
  explicit Intruder(const TestDaemon& daemon) : memory_(daemon.bus(), Arena::Access::kReadWrite) {}

  // The ring of `channel` as mapped here (throws if the channel does not exist).
  RingRef ring_of(std::string_view channel) {
    std::optional<RingRef> found;
    for_each_channel(memory_, [&](const DirectoryEntry& e) {
      if (e.name == channel) found = e.ring;
    });
    if (!found) throw std::runtime_error("no channel " + std::string(channel));
    return *found;
  }

 private:
  BusMemory memory_;
};

// A publisher of a channel the subscription reads unlinks the subscription's doorbell
// from that ring (or clears its bits): the subscriber is never rung. It must still get
// the message, within a sweep period or two - for a subscription small enough to read
// its rings directly and for one over many rings alike.
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

    Intruder intruder(daemon);
    RingRef ring = intruder.ring_of(names.back());
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

}  // namespace
}  // namespace shmbus
