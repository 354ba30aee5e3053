// The bus end to end against a hostile or buggy client: one that maps what any client of
// the bus may map and writes into it while honest publishers and subscribers run. The
// daemon and the honest clients must stay up, lose nothing they did not have to, and say
// what happened.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "daemon_support.hpp"
#include "directory.hpp"
#include "intruder.hpp"
#include "shmbus/shmbus.hpp"
#include "throwaway_users.hpp"

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

// ---- The hostile client suite ---------------------------------------------------------------

// What the processes of the suite tell each other, in memory shared before they fork.
struct SuiteFlags {
  std::atomic<int> subscriber_ready{0};
  std::atomic<int> attack_done{0};
  std::atomic<int> subscriber_done{0};
  std::atomic<uint64_t> hostile_writes{0};
};

// Random 64-bit values, per process.
uint64_t next_random(uint64_t& state) {
  state ^= state << 13;
  state ^= state >> 7;
  state ^= state << 17;
  return state;
}

// A region the attacker can write: `bytes` at `at`.
struct Target {
  std::byte* at;
  uint64_t bytes;
  enum Kind { kRing, kReaders, kDoorbells } kind;
};

// Every region of the victim class and the doorbells that `attacker`'s mappings can write,
// found the way any client could: through the directory in the control arena.
std::vector<Target> writable_targets(test::Intruder& publisher, test::Intruder& subscriber) {
  std::vector<Target> targets;
  for_each_channel(publisher.memory(), [&](const DirectoryEntry& e) {
    const layout::ChannelDescriptor& d = *e.descriptor;
    const uint32_t ring_arena = layout::ShmRef::arena_id(d.ring_ref);
    const uint32_t readers_arena = layout::ShmRef::arena_id(d.readers_ref);
    if (publisher.memory().writable(ring_arena))
      targets.push_back({publisher.memory().base(ring_arena) + layout::ShmRef::offset(d.ring_ref),
                         layout::ring_block_bytes(d.capacity), Target::kRing});
    if (subscriber.memory().writable(readers_arena))
      targets.push_back(
          {subscriber.memory().base(readers_arena) + layout::ShmRef::offset(d.readers_ref),
           layout::reader_table_bytes(d.reader_capacity), Target::kReaders});
  });
  const uint64_t stride = layout::doorbell_stride(publisher.connection().welcome().doorbell_bits);
  targets.push_back({publisher.memory().base(layout::kDoorbellArena) + layout::kPageSize,
                     16 * stride, Target::kDoorbells});
  return targets;
}

// One hostile write into `t`: random bytes, or a value chosen to hurt (a claim pushed far
// ahead, a capacity, a frame length, a doorbell link, a reader position).
void hostile_write(const Target& t, uint64_t& random) {
  const uint64_t r = next_random(random);
  uint64_t offset = (next_random(random) % t.bytes) & ~uint64_t{7};
  uint64_t value = next_random(random);
  switch (r % 8) {
    case 0:  // the claim position, far ahead
      if (t.kind == Target::kRing) offset = 64, value = (uint64_t{1} << 50) + (value & 0xffff00);
      break;
    case 1:  // the ring's capacity in its configuration line
      if (t.kind == Target::kRing) offset = 8, value = uint64_t{1} << (value % 48);
      break;
    case 2:  // a frame's length
      if (t.kind == Target::kRing && t.bytes > layout::kRingDataOffset)
        offset = layout::kRingDataOffset +
                 ((offset % (t.bytes - layout::kRingDataOffset)) & ~31ull) + 24,
        value = 0x7fffffff;
      break;
    case 3:  // a doorbell link or a reader position
      if (t.kind == Target::kReaders) value = layout::ShmRef::make(1, value & 0xffffff, 7);
      break;
    default: break;  // random bytes
  }
  if (offset + 8 > t.bytes) return;
  __atomic_store_n(reinterpret_cast<uint64_t*>(t.at + offset), value, __ATOMIC_RELAXED);
}

// The suite: a client maps what it may (the channels of the open "victim" class, as
// publisher and as subscriber, and the doorbells) and writes random bytes and targeted values
// over all of it for seconds, while honest processes of another class publish and subscribe
// on lossy and back-pressure channels of both classes. The daemon answers PING within 10 ms
// throughout, the honest channels lose nothing and stay in order, the victim channels work
// again once the attack stops, and no honest process crashes.
TEST(HostileBus, ChannelsOfOtherClassesLoseNothingWhileAClientScribblesOverAllItMaps) {
  if (!test::make_throwaway_users()) GTEST_SKIP() << "needs root to create throwaway users";
  daemon::Config config = test::small_test_config();
  const daemon::Principal readers{daemon::Principal::Kind::kGroup,
                                  test::gid_of(test::kReadersGroup), "@readers"};
  const daemon::Principal anyone{daemon::Principal::Kind::kAnyone, 0, "*"};
  config.access.push_back({"honest:*", {readers}, {readers}});
  config.access.push_back({"victim:*", {anyone}, {anyone}});
  daemon::ChannelRule bp, lossy;
  bp.pattern = "*:bp";
  bp.ring_bytes = 16 * 1024;
  bp.back_pressure = true;
  lossy.pattern = "*:lossy";
  lossy.ring_bytes = 1 << 20;  // room for 16 s of the test's rate: delays never lose here
  config.rules = {bp, lossy};
  TestDaemon daemon(config);
  std::filesystem::permissions(std::filesystem::path(daemon.socket_path()).parent_path(),
                               std::filesystem::perms::all);
  std::filesystem::permissions(daemon.socket_path(), std::filesystem::perms::all);
  const ConnectOptions options = daemon.options();

  void* shared =
      mmap(nullptr, sizeof(SuiteFlags), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(shared, MAP_FAILED);
  auto* flags = new (shared) SuiteFlags;
  constexpr int kMessages = 2500;  // per honest channel, one a millisecond
  const std::vector<std::string> honest = {"honest:lossy", "honest:bp"};
  const std::vector<std::string> victims = {"victim:lossy", "victim:bp"};

  test::AsUser subscriber(test::kReaderUser, [&]() -> std::string {
    auto sub = Subscription::open(options);
    sub.subscribe({"honest:lossy", "honest:bp", "victim:lossy", "victim:bp"});
    flags->subscriber_ready = 1;
    std::map<std::string, int> next;  // honest channel -> next expected number (-1: ended)
    std::set<std::string> recovered;
    const auto deadline = std::chrono::steady_clock::now() + 45s;
    while (std::chrono::steady_clock::now() < deadline &&
           !(next["honest:lossy"] == -1 && next["honest:bp"] == -1 && recovered.size() == 2)) {
      auto m = sub.next(200ms);
      if (!m) continue;
      const std::string channel(m->channel), text(m->text());
      if (channel.rfind("victim:", 0) == 0) {
        if (text.rfind("after", 0) == 0) recovered.insert(channel);
        continue;
      }
      int& expected = next[channel];
      if (text == "end") {
        if (expected != kMessages) return channel + " ended after " + std::to_string(expected);
        expected = -1;
        continue;
      }
      if (m->lost_before != 0 || text != std::to_string(expected))
        return channel + ": expected " + std::to_string(expected) + ", got '" + text + "' after " +
               std::to_string(m->lost_before) + " lost";
      ++expected;
    }
    flags->subscriber_done = 1;
    for (const auto& c : {"honest:lossy", "honest:bp"})
      if (next[c] != -1) return std::string(c) + " stopped at " + std::to_string(next[c]);
    if (recovered.size() != 2) return std::string("a victim channel did not recover");
    return std::string();
  });
  while (flags->subscriber_ready.load() == 0) std::this_thread::sleep_for(1ms);

  test::AsUser publisher(test::kReaderUser, [&]() -> std::string {
    auto bus = Bus::connect(options);
    auto lossy_channel = bus.channel("honest:lossy");
    auto bp_channel = bus.channel("honest:bp");
    for (int i = 0; i < kMessages; ++i) {
      lossy_channel.publish(std::to_string(i));
      bp_channel.publish(std::to_string(i));
      for (const auto& v : victims) {
        try {
          bus.publish(v, "during");
        } catch (const Error&) {  // corrupt, or held up: the victim's own business
        }
      }
      std::this_thread::sleep_for(1ms);
    }
    lossy_channel.publish("end");
    bp_channel.publish("end");
    // Once the attack is over the victims work again: say so until the subscriber heard.
    while (flags->attack_done.load() == 0) std::this_thread::sleep_for(10ms);
    const auto until = std::chrono::steady_clock::now() + 20s;
    while (flags->subscriber_done.load() == 0 && std::chrono::steady_clock::now() < until) {
      for (const auto& v : victims) {
        try {
          bus.publish(v, "after");
        } catch (const Error&) {
        }
      }
      std::this_thread::sleep_for(20ms);
    }
    return std::string();
  });

  test::AsUser attacker(test::kStrangerUser, [&]() -> std::string {
    test::Intruder as_publisher(options, protocol::Role::kPublisher);
    test::Intruder as_subscriber(options, protocol::Role::kSubscriber);
    for (const auto& v : victims) {
      as_publisher.open_channel(v);
      as_subscriber.subscribe(v);
    }
    try {
      as_subscriber.subscribe("honest:lossy");
      return std::string("the attacker could subscribe to an honest channel");
    } catch (const Error& e) {
      if (e.code() != Errc::kPermission) return std::string("unexpected: ") + e.what();
    }
    uint64_t random = 0x2545f4914f6cdd1dULL;
    const auto until = std::chrono::steady_clock::now() + 2500ms;
    uint64_t writes = 0;
    while (std::chrono::steady_clock::now() < until) {
      const std::vector<Target> targets = writable_targets(as_publisher, as_subscriber);
      for (int i = 0; i < 256; ++i)
        hostile_write(targets[next_random(random) % targets.size()], random);
      writes += 256;
      std::this_thread::sleep_for(200us);  // leave the 2 cores to the others too
    }
    flags->hostile_writes = writes;
    flags->attack_done = 1;
    return std::string();
  });

  // Meanwhile: the daemon answers.
  auto pinger = Bus::connect(options);
  std::vector<double> pings_ms;
  while (flags->subscriber_done.load() == 0 && pings_ms.size() < 20000) {
    pings_ms.push_back(std::chrono::duration<double, std::milli>(pinger.ping()).count());
    std::this_thread::sleep_for(2ms);
  }
  EXPECT_EQ(attacker.result(), "");
  EXPECT_EQ(subscriber.result(), "");
  EXPECT_EQ(publisher.result(), "");
  EXPECT_GT(flags->hostile_writes.load(), 10'000u);
  ASSERT_FALSE(pings_ms.empty());
  std::sort(pings_ms.begin(), pings_ms.end());
  const double p99 = pings_ms[pings_ms.size() * 99 / 100];
  std::printf(
      "%zu PINGs during the attack: p50 %.3f ms, p99 %.3f ms, max %.3f ms; %llu hostile "
      "writes\n",
      pings_ms.size(), pings_ms[pings_ms.size() / 2], p99, pings_ms.back(),
      static_cast<unsigned long long>(flags->hostile_writes.load()));
  EXPECT_LT(p99, 10.0);
  munmap(shared, sizeof(SuiteFlags));
}

}  // namespace
}  // namespace shmbus
