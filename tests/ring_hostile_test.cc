// The ring against a hostile or buggy process that writes garbage into shared memory: every
// value another process can write (claim word, frontier, frame headers, configuration line,
// reader slots, doorbell links and headers) is checked before it is used, so no such value
// crashes, hangs or misleads an honest publisher, reader or the daemon's maintenance walks.
// Each test forges one value the way such a process would, then checks the honest side
// stays within bounds (memory, time) and reports what it found.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "ring.hpp"
#include "ring_faults.hpp"
#include "test_support.hpp"

namespace shmbus {
namespace {

using namespace std::chrono_literals;
using test::as_bytes;
using test::as_string;
using test::read_one;
using test::small_ring;
using test::TestArena;

// Runs `fn` and fails the test if it takes longer than `limit` (it must return at all).
template <typename Fn>
auto within(std::chrono::milliseconds limit, Fn&& fn) {
  const auto start = std::chrono::steady_clock::now();
  auto result = fn();
  EXPECT_LT(std::chrono::steady_clock::now() - start, limit);
  return result;
}

void store_claim(RingRef ring, uint64_t position, uint64_t sequence) {
  __extension__ typedef unsigned __int128 u128;
  __atomic_store_n(reinterpret_cast<u128*>(&ring.header()->claim),
                   (static_cast<u128>(sequence) << 64) | position, __ATOMIC_SEQ_CST);
}

class RingHostileTest : public ::testing::Test {
 protected:
  TestArena arena_{16 << 20};
};

// The attack: a forged frame length of 2 GB made a next() subscriber allocate
// 2.4 GB and crash, and handed a zero-copy reader a 2 GB payload.
TEST_F(RingHostileTest, AForgedFrameLengthIsSkippedAndCountedNeverHandedOut) {
  RingRef ring = arena_.make_ring(small_ring());
  Reader reader(ring);
  Publisher publisher(ring, 1, &arena_.table());
  ASSERT_EQ(publisher.publish(as_bytes("honest 0")), Status::kOk);
  ASSERT_EQ(publisher.publish(as_bytes("forged")), Status::kOk);
  const uint64_t forged_at = layout::frame_bytes(8);
  ring.frame_at(forged_at)->payload_length.store(0x7fffffff);
  ASSERT_EQ(publisher.publish(as_bytes("honest 2")), Status::kOk);

  EXPECT_EQ(read_one(reader), "honest 0");
  MessageView view;
  // The forged frame is never handed out; the reader skips to the head (nothing newer
  // there yet: the claim is where the next message will go).
  EXPECT_EQ(reader.try_read(view), Status::kEmpty);
  EXPECT_GE(reader.corruption_seen(), 1u);
  ASSERT_EQ(publisher.publish(as_bytes("honest 3")), Status::kOk);
  MessageInfo info;
  EXPECT_EQ(read_one(reader, &info), "honest 3");
  EXPECT_EQ(info.lost_before, 2u);  // the forged message and the one the skip passed over
  EXPECT_LE(info.length, ring.max_payload());
}

// A corrupt frame at the head with nothing to skip to: the reader neither spins nor hands
// it out, and reads again once a publisher writes over it.
TEST_F(RingHostileTest, ACorruptFrameAtTheHeadIsEmptyUntilSomethingChangesIt) {
  RingRef ring = arena_.make_ring(small_ring());
  Publisher publisher(ring, 1, &arena_.table());
  Reader reader(ring);
  // A frame forged at the head, committed with a length no ring carries.
  layout::FrameHeader* f = ring.frame_at(0);
  f->payload_length.store(0xffffffff);
  f->state.store(0 | layout::kFrameCommitted);
  EXPECT_TRUE(reader.has_data());
  MessageView view;
  EXPECT_EQ(reader.try_read(view), Status::kEmpty);
  EXPECT_FALSE(reader.has_data()) << "a frame found corrupt must not look like news again";
  EXPECT_EQ(reader.wait(20ms, 1us), Status::kTimedOut);
  ASSERT_EQ(publisher.publish(as_bytes("over it")), Status::kOk);
  EXPECT_EQ(read_one(reader), "over it");
}

// The attack: one 8-byte change to a ring's capacity made its honest publisher
// write past the ring into the next channel's header.
TEST_F(RingHostileTest, ACapacityChangedAfterOpenMovesNothingOutsideTheRing) {
  RingRef ring = arena_.make_ring(small_ring());
  RingRef neighbour = arena_.make_ring(small_ring());
  // Whatever follows the data area (here the ring's reader table, then the next channel).
  std::byte* after = ring.data() + ring.capacity();
  ASSERT_LT(after, reinterpret_cast<std::byte*>(neighbour.header()));
  const std::vector<std::byte> before(after, after + 2 * 4096);
  Publisher publisher(ring, 1, &arena_.table());
  Reader reader(ring);
  ring.header()->capacity = uint64_t{1} << 40;
  ring.header()->max_payload = 0x7fffffff;
  EXPECT_EQ(publisher.publish(as_bytes(std::string(5000, 'x'))), Status::kTooLarge);
  for (int i = 0; i < 500; ++i)
    ASSERT_EQ(publisher.publish(as_bytes(std::string(100, static_cast<char>('a' + i % 26)))),
              Status::kOk);
  EXPECT_EQ(std::memcmp(before.data(), after, before.size()), 0);
  EXPECT_EQ(ring.capacity(), 4096u);
  EXPECT_FALSE(ring.header_matches_geometry());
  const RingInspection inspection = inspect_ring(ring);
  EXPECT_TRUE(inspection.corrupt);
  EXPECT_NE(inspection.problem.find("configuration"), std::string::npos);
}

// The attack: a claim position pushed forward by 2^50 made the daemon spin at
// 99 % in repair, and honest publishers wait for room that never comes.
TEST_F(RingHostileTest, AClaimPushedFarAheadIsReportedCorruptAtOnceNotWaitedOn) {
  RingRef ring = arena_.make_ring(small_ring());
  Publisher publisher(ring, 1, &arena_.table());
  for (int i = 0; i < 100; ++i) ASSERT_EQ(publisher.publish(as_bytes("fill")), Status::kOk);
  const layout::ClaimWord claim = ring.load_claim();
  store_claim(ring, claim.position + (uint64_t{1} << 50), claim.sequence);
  EXPECT_FALSE(ring.claim_plausible());
  EXPECT_EQ(within(1000ms, [&] { return publisher.publish(as_bytes("x"), {}, kWaitForever); }),
            Status::kCorrupt);
  const RingInspection inspection = within(1000ms, [&] { return inspect_ring(ring); });
  EXPECT_TRUE(inspection.corrupt);
  EXPECT_EQ(
      within(1000ms, [&] { return repair_stalled_frame(ring, claim.position, &arena_.table()); }),
      StalledRepair::kCorrupt);
  EXPECT_EQ(
      within(1000ms, [&] { return repair_dead_publisher(ring, 1, &arena_.table()); }).repaired, 0u);
  // A reader that resumes after a sequence does not walk 2^50 bytes either.
  Reader resumed(ring, Reader::Start::kAfterSequence, 3);
  MessageView view;
  EXPECT_EQ(within(1000ms, [&] { return resumed.try_read(view); }), Status::kEmpty);
}

// A claim moved behind the frontier (I1 broken the other way).
TEST_F(RingHostileTest, AClaimBehindTheFrontierIsCorrupt) {
  RingRef ring = arena_.make_ring(small_ring());
  Publisher publisher(ring, 1, &arena_.table());
  for (int i = 0; i < 200; ++i) ASSERT_EQ(publisher.publish(as_bytes("fill")), Status::kOk);
  ASSERT_GT(ring.retire_frontier(), 0u);
  store_claim(ring, 0, 0);
  EXPECT_FALSE(ring.claim_plausible());
  EXPECT_TRUE(inspect_ring(ring).corrupt);
}

// A frontier forged past the claim: readers neither follow it (they would wait for a
// position no publisher reaches) nor spin on it.
TEST_F(RingHostileTest, AFrontierForgedPastTheClaimIsNotFollowed) {
  RingRef ring = arena_.make_ring(small_ring());
  Publisher publisher(ring, 1, &arena_.table());
  ASSERT_EQ(publisher.publish(as_bytes("one")), Status::kOk);
  Reader reader(ring, Reader::Start::kEarliest);
  ring.header()->retire_frontier.store(uint64_t{1} << 45);
  EXPECT_EQ(read_one(reader), "one");  // the frame is still intact where it is
  MessageView view;
  // An idle reader asks the frontier every 16th poll (try_read); after that it knows.
  for (int i = 0; i < 16; ++i) EXPECT_EQ(reader.try_read(view), Status::kEmpty);
  EXPECT_FALSE(reader.has_data());
  EXPECT_GE(reader.corruption_seen(), 1u);
  EXPECT_TRUE(inspect_ring(ring).corrupt);
}

// Frames whose sizes chain on forever (each forged frame points at another): the
// daemon's walks stop within their budget and report the ring corrupt.
TEST_F(RingHostileTest, MaintenanceWalksOverForgedFramesAreBoundedAndReportCorruption) {
  RingRef ring = arena_.make_ring(small_ring(1 << 20));
  Publisher publisher(ring, 1, &arena_.table());
  ASSERT_EQ(publisher.publish(as_bytes("one")), Status::kOk);
  // A frame that claims to reach past the claim position.
  ring.frame_at(0)->payload_length.store(1 << 19);
  const RingInspection inspection = within(1000ms, [&] { return inspect_ring(ring); });
  EXPECT_TRUE(inspection.corrupt);
  EXPECT_NE(inspection.problem.find("size"), std::string::npos);
}

// A publisher helping to retire a forged frame must not move the frontier past it (which
// would let every later publisher overwrite live frames).
TEST_F(RingHostileTest, RetiringAForgedFrameReportsCorruptionInsteadOfMovingTheFrontier) {
  RingRef ring = arena_.make_ring(small_ring());
  Publisher publisher(ring, 1, &arena_.table());
  // Fill one lap exactly with 96-byte frames (4096 / 96 leaves padding at the end).
  while (ring.load_claim().position < 4096)
    ASSERT_EQ(publisher.publish(as_bytes(std::string(60, 'f'))), Status::kOk);
  const uint64_t frontier = ring.retire_frontier();
  ring.frame_at(frontier)->payload_length.store(3000);  // a data frame a lap long
  Status status = Status::kOk;
  for (int i = 0; i < 100 && status == Status::kOk; ++i)
    status = publisher.publish(as_bytes(std::string(60, 'g')), {}, kWaitForever);
  EXPECT_EQ(status, Status::kCorrupt);
  EXPECT_LE(ring.retire_frontier(), ring.load_claim().position);
}

// Someone keeps the ring full of valid padding: try_read still returns.
TEST_F(RingHostileTest, EndlessPaddingDoesNotKeepTheReaderInside) {
  RingRef ring = arena_.make_ring(small_ring());
  Reader reader(ring);
  std::atomic<bool> stop{false};
  std::thread flood([&] {
    Publisher publisher(ring, 1, &arena_.table());
    RingLoan loan;
    while (!stop.load()) {
      if (publisher.claim(32, loan) == Status::kOk) publisher.abandon(loan);
    }
  });
  while (ring.published() < 10'000) std::this_thread::yield();
  MessageView view;
  for (int i = 0; i < 100; ++i)
    EXPECT_EQ(within(1000ms, [&] { return reader.try_read(view); }), Status::kEmpty);
  stop = true;
  flood.join();
  Publisher publisher(ring, 2, &arena_.table());
  ASSERT_EQ(publisher.publish(as_bytes("after the flood")), Status::kOk);
  MessageInfo info;
  EXPECT_EQ(read_one(reader, &info), "after the flood");
  EXPECT_GT(info.lost_before, 0u);  // abandoned loans are losses
}

// A reader slot's position forged before the subscriber adopts it.
TEST_F(RingHostileTest, AForgedSlotPositionIsNotWhereTheReaderStarts) {
  RingRef ring = arena_.make_ring(small_ring());
  Publisher publisher(ring, 1, &arena_.table());
  ASSERT_EQ(publisher.publish(as_bytes("before")), Status::kOk);
  const int32_t slot = claim_reader_slot(ring, SlotClaim{ring.load_claim().position, 9, 1});
  ASSERT_GE(slot, 0);
  ring.slot(static_cast<uint32_t>(slot))->position.store(uint64_t{1} << 40);
  Reader reader(ring);
  reader.adopt_slot(static_cast<uint32_t>(slot), nullptr, {}, 0, true, 1);
  EXPECT_GE(reader.corruption_seen(), 1u);
  ASSERT_EQ(publisher.publish(as_bytes("after")), Status::kOk);
  EXPECT_EQ(read_one(reader), "after");
}

// The attack: a bad doorbell link in a ring's reader table made every publisher of
// the channel crash on its next publish.
TEST_F(RingHostileTest, BadDoorbellLinksAreSkippedAndGoodOnesStillRing) {
  RingRef ring = arena_.make_ring(small_ring());
  Reader reader(ring);
  uint64_t ref = 0;
  layout::DoorbellHeader* doorbell = arena_.make_doorbell(64, ref);
  reader.register_slot(false, ref + 5, doorbell, arena_.doorbells());
  const uint32_t bells = TestArena::kDoorbellArenaId;
  const uint64_t at = layout::ShmRef::offset(ref);
  const std::vector<uint64_t> forged = {
      layout::ShmRef::make(bells + 1, at, 1),            // an arena not mapped
      layout::ShmRef::make(arena_.arena().id(), at, 1),  // not the doorbell arena
      layout::ShmRef::make(bells, 0, 1),                 // the arena's header
      layout::ShmRef::make(bells, at + 64, 1),           // inside a doorbell
      layout::ShmRef::make(bells, 64 << 20, 1),          // past the end
      layout::ShmRef::make(bells, uint64_t{1} << 37, 1),
      ref + 64,  // a bit past the doorbell
      ref + 0xffffff,
  };
  for (uint32_t i = 0; i < forged.size(); ++i) ring.notify()[1 + i].store(forged[i]);
  ring.readers()->notify_high_water.store(ring.reader_capacity());
  Publisher publisher(ring, 1, &arena_.table());
  ASSERT_EQ(publisher.publish(as_bytes("still rings")), Status::kOk);
  Waiter waiter(doorbell, arena_.doorbells());
  std::vector<uint32_t> bits;
  waiter.take_ready([&](uint32_t bit) { bits.push_back(bit); });
  EXPECT_EQ(bits, std::vector<uint32_t>{5});
}

// The attack: garbage in a doorbell's header crashed subscribers. Its geometry now
// comes from the process, so forged word counts send no access out of the doorbell.
TEST_F(RingHostileTest, AForgedDoorbellHeaderDoesNotMoveTheWaitersAccesses) {
  uint64_t ref = 0;
  layout::DoorbellHeader* d = arena_.make_doorbell(128, ref);
  Waiter waiter(d, arena_.doorbells());
  d->summary_words = 0x7fffffff;
  d->leaf_words = 0x7fffffff;
  d->bit_capacity = 0xffffffff;
  doorbell::ring_doorbell(d, 100, arena_.doorbells());
  // Summary bits naming leaf words that do not exist are ignored.
  doorbell::summary_words(d)[0].fetch_or(~uint64_t{0});
  std::vector<uint32_t> bits;
  EXPECT_EQ(waiter.take_ready([&](uint32_t bit) { bits.push_back(bit); }), 1u);
  EXPECT_EQ(bits, std::vector<uint32_t>{100});
}

// A hostile process clears a waiter's bits and armed flag so the publisher's wake-up never
// comes: the parked waiter still finds the message, within Waiter's kMaxPark.
TEST_F(RingHostileTest, AWithheldWakeUpDelaysAParkedReaderByAtMostTheParkCap) {
  RingRef ring = arena_.make_ring(small_ring());
  Reader reader(ring);
  uint64_t ref = 0;
  layout::DoorbellHeader* doorbell = arena_.make_doorbell(1, ref);
  reader.register_slot(false, ref, doorbell, arena_.doorbells());
  std::thread publisher([&] {
    std::this_thread::sleep_for(100ms);  // the reader parks
    // The attacker unlinks the reader first, so the publish rings nobody.
    ring.notify()[0].store(layout::ShmRef::kNone);
    Publisher p(ring, 1, &arena_.table());
    ASSERT_EQ(p.publish(as_bytes("withheld")), Status::kOk);
  });
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(reader.wait(10s, 1us), Status::kOk);
  const auto waited = std::chrono::steady_clock::now() - start;
  publisher.join();
  EXPECT_LT(waited, kMaxPark + 500ms);
  EXPECT_EQ(read_one(reader), "withheld");
}

// Someone bumps a doorbell's futex word without end: the parked waiter is woken for
// nothing again and again, and slows down instead of spinning.
TEST_F(RingHostileTest, AFutexWordChangedWithoutEndDoesNotMakeTheWaiterSpin) {
  uint64_t ref = 0;
  layout::DoorbellHeader* d = arena_.make_doorbell(64, ref);
  Waiter waiter(d, arena_.doorbells());
  std::atomic<bool> stop{false};
  std::thread bumper([&] {
    while (!stop.load()) d->futex_word.fetch_add(1);
  });
  timespec cpu_before{}, cpu_after{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu_before);
  EXPECT_EQ(waiter.wait(300ms, 1us), Status::kTimedOut);
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu_after);
  stop = true;
  bumper.join();
  const double cpu_ms =
      (cpu_after.tv_sec - cpu_before.tv_sec) * 1e3 + (cpu_after.tv_nsec - cpu_before.tv_nsec) / 1e6;
  EXPECT_LT(cpu_ms, 150.0) << "the waiter spun on the futex";
}

}  // namespace
}  // namespace shmbus
