// One waiter over many rings: a publish sets that ring's bit, the waiter learns which ring
// without scanning the others, and a parked waiter is woken by the futex.
#include "doorbell.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <set>
#include <thread>

#include "test_support.hpp"

namespace shmbus {
namespace {

using namespace std::chrono_literals;
using test::as_bytes;
using test::TestArena;

TEST(Doorbell, FormatRefusesZeroBits) {
  std::vector<std::byte> memory(4096);
  EXPECT_THROW((void)doorbell::format(memory.data(), 0), std::invalid_argument);
}

TEST(Doorbell, BitsAcrossSummaryWordsAreTakenOnceEach) {
  TestArena arena(8 << 20);
  uint64_t ref = 0;
  auto* d = arena.make_doorbell(100'000, ref);
  Waiter waiter(d, arena.doorbells());
  EXPECT_FALSE(waiter.any_ready());
  const std::set<uint32_t> rung = {0, 63, 64, 4095, 4096, 65'000, 99'999};
  for (uint32_t bit : rung) doorbell::ring_doorbell(d, bit, arena.doorbells());
  doorbell::ring_doorbell(d, 4096, arena.doorbells());  // twice: still one pending bit
  EXPECT_TRUE(waiter.any_ready());
  std::set<uint32_t> taken;
  EXPECT_EQ(waiter.take_ready([&](uint32_t bit) { taken.insert(bit); }), rung.size());
  EXPECT_EQ(taken, rung);
  EXPECT_FALSE(waiter.any_ready());
  EXPECT_EQ(waiter.take_ready([](uint32_t) {}), 0u);
}

TEST(Doorbell, WaitTimesOutWhenNothingIsRung) {
  TestArena arena(1 << 20);
  uint64_t ref = 0;
  Waiter waiter(arena.make_doorbell(64, ref), arena.doorbells());
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(waiter.wait(30ms, 1us), Status::kTimedOut);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 30ms);
}

// 1,000 rings linked to one doorbell: a publish on one of them wakes the parked waiter,
// which finds that ring alone.
TEST(Doorbell, ParkedWaiterOverManyRingsWakesForTheOneThatGotAMessage) {
  TestArena arena(256 << 20);
  constexpr uint32_t kRings = 1000;
  uint64_t ref0 = 0;
  auto* d = arena.make_doorbell(kRings, ref0);
  RingConfig config;
  config.capacity = 4096;
  config.reader_capacity = 2;
  std::vector<RingRef> rings;
  std::vector<std::unique_ptr<Reader>> readers;
  for (uint32_t i = 0; i < kRings; ++i) {
    rings.push_back(arena.make_ring(config));
    readers.push_back(std::make_unique<Reader>(rings.back()));
    readers.back()->register_slot(false, ref0 + i, d, arena.doorbells());
  }
  Waiter waiter(d, arena.doorbells());
  std::thread publisher([&] {
    std::this_thread::sleep_for(50ms);  // long enough for the waiter to park
    Publisher p(rings[777], 1, &arena.table());
    p.publish(as_bytes("to 777"));
  });
  ASSERT_EQ(waiter.wait(10s, 1us), Status::kOk);
  std::vector<uint32_t> ready;
  waiter.take_ready([&](uint32_t bit) { ready.push_back(bit); });
  publisher.join();
  ASSERT_EQ(ready, std::vector<uint32_t>{777});
  std::vector<std::byte> buffer;
  MessageInfo info;
  EXPECT_EQ(readers[777]->try_read_copy(buffer, info), Status::kOk);
  EXPECT_GE(d->futex_word.load(), 1u) << "a parked waiter must have been woken by the futex";
}

}  // namespace
}  // namespace shmbus
