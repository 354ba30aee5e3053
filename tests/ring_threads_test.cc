// Threads instead of processes, so ThreadSanitizer can check the ring's orderings: several
// publishers and readers on one ring, lossy and back-pressured.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <thread>
#include <vector>

#include "ring.hpp"
#include "test_support.hpp"

namespace shmbus {
namespace {

using test::StressHeader;
using test::TestArena;

struct ReaderTally {
  uint64_t delivered = 0;
  uint64_t lost = 0;
  uint64_t corrupt = 0;
  uint64_t out_of_order = 0;
};

void run(bool back_pressure, int publishers, int readers, int per_publisher,
         uint64_t capacity) {
  TestArena arena(64 << 20);
  RingConfig config;
  config.capacity = capacity;
  config.back_pressure = back_pressure;
  RingRef ring = arena.make_ring(config);

  std::vector<std::unique_ptr<Reader>> reader_objects;
  for (int r = 0; r < readers; ++r) {
    reader_objects.push_back(std::make_unique<Reader>(ring));
    reader_objects.back()->register_slot(back_pressure);
  }
  std::atomic<int> publishers_done{0};
  std::vector<ReaderTally> tallies(readers);
  std::vector<std::thread> threads;
  for (int r = 0; r < readers; ++r) {
    threads.emplace_back([&, r] {
      Reader& reader = *reader_objects[r];
      std::map<uint32_t, uint64_t> next_per_publisher;
      std::vector<std::byte> buffer;
      MessageInfo info;
      for (;;) {
        const Status status = reader.try_read_copy(buffer, info);
        if (status == Status::kEmpty) {
          if (publishers_done.load() == publishers && !reader.has_data()) break;
          std::this_thread::yield();
          continue;
        }
        StressHeader h;
        if (!test::stress_payload_intact(buffer.data(), info.length, h)) {
          ++tallies[r].corrupt;
          continue;
        }
        auto& next = next_per_publisher[h.publisher];
        if (h.sequence < next) ++tallies[r].out_of_order;
        next = h.sequence + 1;
      }
      tallies[r].delivered = reader.delivered();
      tallies[r].lost = reader.lost();
    });
  }
  for (int p = 0; p < publishers; ++p) {
    threads.emplace_back([&, p] {
      Publisher publisher(ring, static_cast<uint16_t>(p + 1), &arena.table());
      uint64_t seed = 0x1234567ULL * (p + 1);
      for (int i = 0; i < per_publisher; ++i) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        const uint32_t length = 24 + static_cast<uint32_t>((seed >> 33) % 300);
        RingLoan loan;
        ASSERT_EQ(publisher.claim(length, loan, kWaitForever), Status::kOk);
        test::fill_stress_payload(loan.payload, length, static_cast<uint32_t>(p), i);
        publisher.commit(loan, length);
      }
      publishers_done.fetch_add(1);
    });
  }
  for (auto& t : threads) t.join();
  const uint64_t published = static_cast<uint64_t>(publishers) * per_publisher;
  EXPECT_EQ(ring.published(), published);
  for (int r = 0; r < readers; ++r) {
    SCOPED_TRACE("reader " + std::to_string(r));
    EXPECT_EQ(tallies[r].corrupt, 0u);
    EXPECT_EQ(tallies[r].out_of_order, 0u);
    EXPECT_EQ(tallies[r].delivered + tallies[r].lost, published);
    if (back_pressure) {
      EXPECT_EQ(tallies[r].lost, 0u);
    }
  }
}

TEST(RingThreads, LossyThreePublishersThreeReaders) { run(false, 3, 3, 20000, 8192); }

TEST(RingThreads, BackPressureThreePublishersThreeReadersLoseNothing) {
  run(true, 3, 3, 20000, 8192);
}

}  // namespace
}  // namespace shmbus
