// Unit tests of the channel ring: claim/commit, wrap and padding, lap detection with exact
// loss counts, start positions, back-pressure, loans, repair, and waking.
#include "ring.hpp"

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "ring_faults.hpp"
#include "test_support.hpp"

namespace shmbus {
namespace {

using test::fake_headerless_claim;
using namespace std::chrono_literals;
using test::as_bytes;
using test::as_string;
using test::read_one;
using test::small_ring;
using test::TestArena;

// Starts `act` on another thread after `delay`, waits on `reader`, and checks the wait
// ended by being woken (well before its 10 s timeout).
template <typename Act>
void expect_wait_is_woken_by(Reader& reader, std::chrono::milliseconds delay, Act&& act) {
  std::thread other([&] {
    std::this_thread::sleep_for(delay);  // the reader parks meanwhile
    act();
  });
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(reader.wait(10s, 1us), Status::kOk);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  other.join();
}

// The pid of a process that has exited and been reaped: a dead owner for a reader slot.
pid_t pid_of_exited_process() {
  const pid_t child = fork();
  if (child == 0) _exit(0);
  waitpid(child, nullptr, 0);
  return child;
}

class RingTest : public ::testing::Test {
 protected:
  // A one-bit doorbell with `reader` registered on its ring and linked to it, as a
  // subscriber that may park.
  layout::DoorbellHeader* link_doorbell(Reader& reader) {
    uint64_t doorbell_ref = 0;
    layout::DoorbellHeader* doorbell = arena_.make_doorbell(1, doorbell_ref);
    reader.register_slot(false, doorbell_ref, doorbell, arena_.doorbells());
    return doorbell;
  }
  TestArena arena_{16 << 20};
};

TEST_F(RingTest, PublishedMessageIsReadWithItsMetadata) {
  RingRef ring = arena_.make_ring(small_ring());
  Reader reader(ring);
  Publisher publisher(ring, 42, &arena_.table());
  ASSERT_EQ(publisher.publish(as_bytes("hello"), PublishMeta{123456789, 3}), Status::kOk);
  MessageInfo info;
  EXPECT_EQ(read_one(reader, &info), "hello");
  EXPECT_EQ(info.sequence, 0u);
  EXPECT_EQ(info.publisher_id, 42u);
  EXPECT_EQ(info.origin, 3u);
  EXPECT_EQ(info.publish_unix_ns, 123456789u);
  EXPECT_EQ(info.lost_before, 0u);
  EXPECT_EQ(read_one(reader), "<empty>");
  EXPECT_EQ(ring.published(), 1u);
}

TEST_F(RingTest, EmptyMessageIsAMessage) {
  RingRef ring = arena_.make_ring(small_ring());
  Reader reader(ring);
  Publisher publisher(ring, 1, &arena_.table());
  ASSERT_EQ(publisher.publish({}), Status::kOk);
  MessageInfo info;
  EXPECT_EQ(read_one(reader, &info), "");
  EXPECT_EQ(info.length, 0u);
}

TEST_F(RingTest, LatestReaderSeesOnlyLaterMessages) {
  RingRef ring = arena_.make_ring(small_ring());
  Publisher publisher(ring, 1, &arena_.table());
  ASSERT_EQ(publisher.publish(as_bytes("before")), Status::kOk);
  Reader reader(ring, Reader::Start::kLatest);
  ASSERT_EQ(publisher.publish(as_bytes("after")), Status::kOk);
  MessageInfo info;
  EXPECT_EQ(read_one(reader, &info), "after");
  EXPECT_EQ(info.sequence, 1u);
  EXPECT_EQ(info.lost_before, 0u);
}

TEST_F(RingTest, TooLargeIsRefusedAndNothingIsClaimed) {
  RingRef ring = arena_.make_ring(small_ring());
  Publisher publisher(ring, 1, &arena_.table());
  std::vector<std::byte> big(ring.max_payload() + 1);
  EXPECT_EQ(publisher.publish(big), Status::kTooLarge);
  EXPECT_EQ(ring.published(), 0u);
  std::vector<std::byte> largest(ring.max_payload());
  EXPECT_EQ(publisher.publish(largest), Status::kOk);
  EXPECT_EQ(ring.max_payload(), RingRef::largest_payload(4096));
}

TEST_F(RingTest, FormatRefusesBadConfigsWithTheReason) {
  const auto block = arena_.arena().allocate(1 << 20);
  RingConfig config = small_ring(3000);
  try {
    (void)RingRef::format(arena_.arena().base() + block.offset,
                          arena_.arena().base() + block.offset + (1 << 19), config);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("power of two"), std::string::npos);
  }
  config = small_ring(4096);
  config.max_payload = 4000;
  try {
    (void)RingRef::format(arena_.arena().base() + block.offset,
                          arena_.arena().base() + block.offset + (1 << 19), config);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("twice the message size"), std::string::npos);
  }
}

// A ring opens only with the geometry its header says: the daemon's word and the ring's
// must agree once, when a process opens it.
TEST_F(RingTest, OpenChecksTheHeaderAgainstTheGeometryItWasGiven) {
  RingRef ring = arena_.make_ring(small_ring());
  auto* block = reinterpret_cast<std::byte*>(ring.header());
  auto* readers = reinterpret_cast<std::byte*>(ring.readers());
  const uint64_t block_bytes = RingRef::block_bytes(small_ring());
  const uint64_t readers_bytes = RingRef::readers_bytes(small_ring());
  RingRef again = RingRef::open(block, block_bytes, readers, readers_bytes, ring.geometry());
  EXPECT_EQ(again.capacity(), 4096u);
  EXPECT_EQ(again.slot(0), ring.slot(0));
  EXPECT_THROW((void)RingRef::open(block, 100, readers, readers_bytes, ring.geometry()),
               std::runtime_error);
  EXPECT_THROW((void)RingRef::open(block, block_bytes, readers, 64, ring.geometry()),
               std::runtime_error);
  RingGeometry other = ring.geometry();
  other.capacity = 8192;
  EXPECT_THROW((void)RingRef::open(block, 3 * 4096, readers, readers_bytes, other),
               std::runtime_error);
  other = ring.geometry();
  other.back_pressure = !other.back_pressure;
  EXPECT_THROW((void)RingRef::open(block, block_bytes, readers, readers_bytes, other),
               std::runtime_error);
  std::vector<std::byte> garbage(8192, std::byte{0x5a});
  EXPECT_THROW(
      (void)RingRef::open(garbage.data(), garbage.size(), readers, readers_bytes, ring.geometry()),
      std::runtime_error);
}

TEST_F(RingTest, FramesWrapWithPaddingAndStayIntact) {
  RingRef ring = arena_.make_ring(small_ring(4096, /*back_pressure=*/true));
  Reader reader(ring);
  reader.register_slot(/*gating=*/true);
  Publisher publisher(ring, 1, &arena_.table());
  // 700-byte payloads: 736-byte frames do not divide 4096, so claims must pad at the end.
  uint64_t padded_wraps = 0;
  for (int i = 0; i < 200; ++i) {
    std::string message = std::to_string(i) + ":" + std::string(700 - 4, 'a' + i % 26);
    message.resize(700, '.');
    const uint64_t before = ring.load_claim().position;
    ASSERT_EQ(publisher.publish(as_bytes(message)), Status::kOk);
    const uint64_t after = ring.load_claim().position;
    if (after - before > layout::frame_bytes(700)) ++padded_wraps;
    MessageInfo info;
    ASSERT_EQ(read_one(reader, &info), message);
    EXPECT_EQ(info.sequence, static_cast<uint64_t>(i));
    EXPECT_EQ(info.lost_before, 0u);
  }
  EXPECT_GT(padded_wraps, 20u);
  EXPECT_EQ(reader.lost(), 0u);
  EXPECT_EQ(reader.delivered(), 200u);
}

TEST_F(RingTest, LappedReaderLearnsExactlyHowManyItLost) {
  RingRef ring = arena_.make_ring(small_ring(4096));
  Reader reader(ring);
  Publisher publisher(ring, 1, &arena_.table());
  // 96-byte frames: 42 fit in 4096 bytes. Publish 1000 without reading.
  for (int i = 0; i < 1000; ++i)
    ASSERT_EQ(publisher.publish(as_bytes("msg" + std::to_string(i) + std::string(40, 'x'))),
              Status::kOk);
  std::vector<std::byte> buffer;
  MessageInfo info;
  uint64_t delivered = 0;
  uint64_t first_sequence = 0;
  uint64_t reported_lost = 0;
  while (reader.try_read_copy(buffer, info) == Status::kOk) {
    if (delivered == 0) first_sequence = info.sequence;
    reported_lost += info.lost_before;
    EXPECT_EQ(as_string(buffer.data(), 6).substr(0, 3), "msg");
    ++delivered;
  }
  EXPECT_GT(first_sequence, 900u);
  EXPECT_EQ(reported_lost, first_sequence);
  EXPECT_EQ(delivered + reported_lost, 1000u);
  EXPECT_EQ(reader.lost(), reported_lost);
  EXPECT_GE(reader.lapped(), 1u);
}

TEST_F(RingTest, ViewOverwrittenWhileHeldIsNotDelivered) {
  RingRef ring = arena_.make_ring(small_ring(4096));
  Reader reader(ring);
  Publisher publisher(ring, 1, &arena_.table());
  ASSERT_EQ(publisher.publish(as_bytes("first")), Status::kOk);
  MessageView view;
  ASSERT_EQ(reader.try_read(view), Status::kOk);
  EXPECT_EQ(as_string(view.payload, view.length), "first");
  // While the reader holds the view, publishers lap the ring and reuse its bytes.
  for (int i = 0; i < 200; ++i)
    ASSERT_EQ(publisher.publish(as_bytes(std::string(60, 'z'))), Status::kOk);
  EXPECT_FALSE(reader.consume(view));
  // Everything after is counted: what it reads next says how much it missed.
  MessageInfo info;
  EXPECT_NE(read_one(reader, &info), "<empty>");
  EXPECT_EQ(info.lost_before, info.sequence);  // sequences 0..info.sequence-1 lost
  EXPECT_EQ(reader.lost() + reader.delivered(), info.sequence + 1);
}

TEST_F(RingTest, EarliestStartsAtTheOldestFrameStillInTheRing) {
  RingRef ring = arena_.make_ring(small_ring(4096));
  Publisher publisher(ring, 1, &arena_.table());
  for (int i = 0; i < 10; ++i)
    ASSERT_EQ(publisher.publish(as_bytes("m" + std::to_string(i))), Status::kOk);
  Reader early(ring, Reader::Start::kEarliest);
  MessageInfo info;
  EXPECT_EQ(read_one(early, &info), "m0");
  EXPECT_EQ(info.lost_before, 0u);
  // After wrapping, the earliest is whatever the retire frontier has not passed.
  for (int i = 10; i < 500; ++i)
    ASSERT_EQ(publisher.publish(as_bytes("m" + std::to_string(i))), Status::kOk);
  Reader late(ring, Reader::Start::kEarliest);
  ASSERT_NE(read_one(late, &info), "<empty>");
  EXPECT_GT(info.sequence, 300u);
  EXPECT_EQ(info.lost_before, 0u);  // history before joining is not loss
  uint64_t count = 1;
  while (read_one(late) != "<empty>") ++count;
  EXPECT_EQ(info.sequence + count, 500u);
}

TEST_F(RingTest, ResumeAfterSequenceDeliversTheRestWithoutLoss) {
  RingRef ring = arena_.make_ring(small_ring(8192));
  Publisher publisher(ring, 1, &arena_.table());
  for (int i = 0; i < 50; ++i)
    ASSERT_EQ(publisher.publish(as_bytes("m" + std::to_string(i))), Status::kOk);
  Reader resumed(ring, Reader::Start::kAfterSequence, 41);
  MessageInfo info;
  EXPECT_EQ(read_one(resumed, &info), "m42");
  EXPECT_EQ(info.sequence, 42u);
  EXPECT_EQ(info.lost_before, 0u);
  for (int i = 43; i < 50; ++i) EXPECT_EQ(read_one(resumed), "m" + std::to_string(i));
  EXPECT_EQ(read_one(resumed), "<empty>");

  // Resuming after the newest message waits for the next one.
  Reader caught_up(ring, Reader::Start::kAfterSequence, 49);
  EXPECT_EQ(read_one(caught_up), "<empty>");
  ASSERT_EQ(publisher.publish(as_bytes("m50")), Status::kOk);
  EXPECT_EQ(read_one(caught_up), "m50");
}

TEST_F(RingTest, ResumeAfterASequenceNoLongerInTheRingReportsTheGap) {
  RingRef ring = arena_.make_ring(small_ring(4096));
  Publisher publisher(ring, 1, &arena_.table());
  for (int i = 0; i < 400; ++i)
    ASSERT_EQ(publisher.publish(as_bytes(std::string(60, 'q'))), Status::kOk);
  Reader resumed(ring, Reader::Start::kAfterSequence, 9);
  MessageInfo info;
  ASSERT_NE(read_one(resumed, &info), "<empty>");
  EXPECT_GT(info.sequence, 10u);
  EXPECT_EQ(info.lost_before, info.sequence - 10);
}

TEST_F(RingTest, BackPressureBlocksPublisherUntilTheGatingReaderMoves) {
  RingRef ring = arena_.make_ring(small_ring(4096, /*back_pressure=*/true));
  Reader reader(ring);
  reader.register_slot(/*gating=*/true);
  Publisher publisher(ring, 1, &arena_.table());
  const std::string message(60, 'b');  // 96-byte frames
  int accepted = 0;
  while (publisher.publish(as_bytes(message)) == Status::kOk) ++accepted;
  EXPECT_EQ(accepted, 4096 / 96);
  EXPECT_EQ(publisher.publish(as_bytes(message)), Status::kWouldBlock);
  EXPECT_EQ(publisher.publish(as_bytes(message), {}, 20ms), Status::kTimedOut);
  EXPECT_GE(ring.header()->back_pressure_waits.load(), 2u);
  // Reading one frame makes room for one more; nothing was lost.
  EXPECT_EQ(read_one(reader), message);
  EXPECT_EQ(publisher.publish(as_bytes(message)), Status::kOk);
  int read = 1;
  while (read_one(reader) == message) ++read;
  EXPECT_EQ(read, accepted + 1);
  EXPECT_EQ(reader.lost(), 0u);
}

TEST_F(RingTest, BackPressureWaitsWithATimeoutAndResumesWhenReaderCatchesUp) {
  RingRef ring = arena_.make_ring(small_ring(4096, true));
  Reader reader(ring);
  reader.register_slot(true);
  Publisher publisher(ring, 1, &arena_.table());
  const std::string message(60, 'w');
  while (publisher.publish(as_bytes(message)) == Status::kOk) {
  }
  std::thread consumer([&] {
    std::this_thread::sleep_for(30ms);
    for (int i = 0; i < 5; ++i) read_one(reader);
  });
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(publisher.publish(as_bytes(message), {}, 5s), Status::kOk);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 4s);
  consumer.join();
}

TEST_F(RingTest, UnregisteredOrDeadGatingReaderDoesNotStallPublishers) {
  RingRef ring = arena_.make_ring(small_ring(4096, true));
  Publisher publisher(ring, 1, &arena_.table());
  {
    Reader reader(ring);
    reader.register_slot(true);
    while (publisher.publish(as_bytes(std::string(60, 'u'))) == Status::kOk) {
    }
  }  // unregisters
  EXPECT_EQ(publisher.publish(as_bytes(std::string(60, 'u'))), Status::kOk);

  // A gating slot owned by a process that no longer exists does not hold publishers back.
  Reader ghost(ring);
  ghost.register_slot(true);
  while (publisher.publish(as_bytes(std::string(60, 'g'))) == Status::kOk) {
  }
  const pid_t child = pid_of_exited_process();
  ASSERT_GT(child, 0);
  for (uint32_t i = 0; i < ring.reader_capacity(); ++i)
    if (ring.slot(i)->state.load() == layout::kSlotGating) ring.slot(i)->pid.store(child);
  EXPECT_EQ(publisher.publish(as_bytes(std::string(60, 'g')), {}, 2s), Status::kOk);
}

TEST_F(RingTest, LoanCommitShorterThanClaimedLeavesPaddingReadersSkip) {
  RingRef ring = arena_.make_ring(small_ring());
  Reader reader(ring);
  Publisher publisher(ring, 1, &arena_.table());
  RingLoan loan;
  ASSERT_EQ(publisher.claim(1000, loan), Status::kOk);
  std::memcpy(loan.payload, "short", 5);
  publisher.commit(loan, 5);
  ASSERT_EQ(publisher.publish(as_bytes("next")), Status::kOk);
  MessageInfo info;
  EXPECT_EQ(read_one(reader, &info), "short");
  EXPECT_EQ(info.sequence, 0u);
  EXPECT_EQ(read_one(reader, &info), "next");
  EXPECT_EQ(info.sequence, 1u);
  EXPECT_EQ(info.lost_before, 0u);
}

// Regression: a commit shorter than the loan but within the same 32-byte frame left the
// claimed length in the header, so readers got the unused tail as payload.
TEST_F(RingTest, LoanCommitShorterWithinTheSameFrameSizeDeliversOnlyTheCommittedBytes) {
  RingRef ring = arena_.make_ring(small_ring());
  Reader reader(ring);
  Publisher publisher(ring, 1, &arena_.table());
  RingLoan loan;
  ASSERT_EQ(publisher.claim(10, loan), Status::kOk);  // 32 + 10 and 32 + 3 both take 64
  std::memcpy(loan.payload, "abcXXXXXXX", 10);
  publisher.commit(loan, 3);
  MessageInfo info;
  EXPECT_EQ(read_one(reader, &info), "abc");
  EXPECT_EQ(info.length, 3u);
}

TEST_F(RingTest, AbandonedLoanIsReportedLostSoEveryNumberIsAccountedFor) {
  RingRef ring = arena_.make_ring(small_ring());
  Reader reader(ring);
  Publisher publisher(ring, 1, &arena_.table());
  RingLoan loan;
  ASSERT_EQ(publisher.claim(100, loan), Status::kOk);
  publisher.abandon(loan);
  ASSERT_EQ(publisher.publish(as_bytes("kept")), Status::kOk);
  MessageInfo info;
  EXPECT_EQ(read_one(reader, &info), "kept");
  EXPECT_EQ(info.sequence, 1u);
  EXPECT_EQ(info.lost_before, 1u);
  EXPECT_EQ(reader.lost() + reader.delivered(), ring.published());
}

TEST_F(RingTest, UnfinishedFrameHoldsReadersAndNextLapPublishersButNothingIsOverwritten) {
  RingRef ring = arena_.make_ring(small_ring(4096));
  Reader reader(ring);
  Publisher slow(ring, 1, &arena_.table());
  Publisher fast(ring, 2, &arena_.table());
  RingLoan loan;
  ASSERT_EQ(slow.claim(60, loan), Status::kOk);
  std::memcpy(loan.payload, "slow", 4);
  // Readers cannot pass an unfinished frame.
  ASSERT_EQ(fast.publish(as_bytes("fast0")), Status::kOk);
  EXPECT_EQ(read_one(reader), "<empty>");
  // Other publishers fill the rest of the lap, then must not overwrite the unfinished frame.
  int published = 1;
  while (fast.publish(as_bytes(std::string(60, 'f'))) == Status::kOk) ++published;
  // slow frame 96 B + fast0 64 B + 41 x 96 B fill the lap exactly.
  EXPECT_EQ(published, 1 + (4096 - 96 - 64) / 96);
  EXPECT_EQ(fast.publish(as_bytes("x"), {}, 10ms), Status::kTimedOut);
  EXPECT_EQ(inspect_ring(ring).first_unfinished, loan.position);
  // The slow publisher finishes: everyone moves on, nothing lost.
  slow.commit(loan, 4);
  EXPECT_EQ(read_one(reader), "slow");
  EXPECT_EQ(read_one(reader), "fast0");
  EXPECT_EQ(fast.publish(as_bytes("y")), Status::kOk);
  EXPECT_EQ(inspect_ring(ring).first_unfinished, std::nullopt);
}

TEST_F(RingTest, RepairPadsOverADeadPublishersFrame) {
  RingRef ring = arena_.make_ring(small_ring(4096));
  Reader reader(ring);
  Publisher dead(ring, 7, &arena_.table());
  Publisher alive(ring, 8, &arena_.table());
  RingLoan loan;
  ASSERT_EQ(dead.claim(200, loan), Status::kOk);
  std::memset(loan.payload, 0xee, 100);  // half-written, then its process "dies"
  ASSERT_EQ(alive.publish(as_bytes("after")), Status::kOk);
  EXPECT_EQ(read_one(reader), "<empty>");
  EXPECT_EQ(repair_dead_publisher(ring, 8, &arena_.table()).repaired,
            0u);  // alive's frames are committed
  EXPECT_EQ(repair_dead_publisher(ring, 7, &arena_.table()).repaired, 1u);
  MessageInfo info;
  EXPECT_EQ(read_one(reader, &info), "after");
  EXPECT_EQ(info.sequence, 1u);
  EXPECT_EQ(info.lost_before, 1u);  // the dead publisher's message never arrived
  EXPECT_EQ(ring.header()->repaired_frames.load(), 1u);
  for (int i = 0; i < 300; ++i)
    ASSERT_EQ(alive.publish(as_bytes(std::string(60, 'r'))), Status::kOk);
}

TEST_F(RingTest, RepairOfAClaimThatNeverGotAHeader) {
  RingRef ring = arena_.make_ring(small_ring(4096));
  Publisher alive(ring, 8, &arena_.table());
  ASSERT_EQ(alive.publish(as_bytes("one")), Status::kOk);
  Reader reader(ring);
  // Simulate a publisher that died right after its claim CAS.
  const layout::ClaimWord before = ring.load_claim();
  fake_headerless_claim(ring, layout::frame_bytes(100));
  ASSERT_EQ(alive.publish(as_bytes("two")), Status::kOk);
  EXPECT_EQ(read_one(reader), "<empty>");
  EXPECT_EQ(inspect_ring(ring).first_unfinished, before.position);
  EXPECT_EQ(repair_stalled_frame(ring, before.position, &arena_.table()), StalledRepair::kRepaired);
  MessageInfo info;
  EXPECT_EQ(read_one(reader, &info), "two");
  EXPECT_EQ(info.sequence, before.sequence + 1);
  EXPECT_EQ(info.lost_before, 1u);
  EXPECT_EQ(repair_stalled_frame(ring, before.position, &arena_.table()),
            StalledRepair::kNotNow);  // already repaired
}

// Regression: repair changed the frame but rang no doorbell, so a reader parked behind the
// dead frame slept on (and in a back-pressure ring, everyone waited on it forever).
TEST_F(RingTest, RepairWakesAReaderParkedBehindTheDeadFrame) {
  RingRef ring = arena_.make_ring(small_ring());
  Reader reader(ring);
  link_doorbell(reader);
  Publisher dead(ring, 7, &arena_.table());
  Publisher alive(ring, 8, &arena_.table());
  RingLoan loan;
  ASSERT_EQ(dead.claim(100, loan), Status::kOk);
  ASSERT_EQ(alive.publish(as_bytes("after")), Status::kOk);
  expect_wait_is_woken_by(reader, 100ms, [&] { repair_dead_publisher(ring, 7, &arena_.table()); });
  EXPECT_EQ(read_one(reader), "after");
}

// Regression (found by the crash matrix): a dead publisher's frame beyond another dead
// publisher's claim without a header was never padded: the walk stops at a claim whose size
// it cannot know, so repair by id reported nothing, and once the headerless claim was
// repaired the frame, having a header, was waited on as a live publisher's - for ever.
TEST_F(RingTest, RepairByIdSaysWhenItCouldNotReachEveryFrame) {
  RingRef ring = arena_.make_ring(small_ring());
  Publisher alive(ring, 8, &arena_.table());
  ASSERT_EQ(alive.publish(as_bytes("first")), Status::kOk);
  Reader reader(ring);
  const uint64_t headerless = fake_headerless_claim(ring, layout::frame_bytes(10));
  Publisher dead(ring, 7, &arena_.table());
  RingLoan loan;
  ASSERT_EQ(dead.claim(20, loan), Status::kOk);  // a header, then its process "dies"
  ASSERT_EQ(alive.publish(as_bytes("after")), Status::kOk);
  RepairResult result = repair_dead_publisher(ring, 7, &arena_.table());
  EXPECT_EQ(result.repaired, 0u);
  EXPECT_FALSE(result.complete);
  ASSERT_EQ(repair_stalled_frame(ring, headerless, &arena_.table()), StalledRepair::kRepaired);
  result = repair_dead_publisher(ring, 7, &arena_.table());
  EXPECT_EQ(result.repaired, 1u);
  EXPECT_TRUE(result.complete);
  MessageInfo info;
  EXPECT_EQ(read_one(reader, &info), "after");
  EXPECT_EQ(info.lost_before, 2u);
}

// Regression: a headerless dead claim followed by a live publisher's headerless claim was
// padded as one, hiding the live message and letting the next lap overwrite it.
TEST_F(RingTest, StalledRepairRefusesAGapHoldingAnotherHeaderlessClaim) {
  RingRef ring = arena_.make_ring(small_ring());
  Publisher alive(ring, 8, &arena_.table());
  ASSERT_EQ(alive.publish(as_bytes("first")), Status::kOk);
  Reader reader(ring);
  const uint64_t dead = fake_headerless_claim(ring, 96);
  const layout::ClaimWord live_claim = ring.load_claim();
  const uint64_t live = fake_headerless_claim(ring, 96);  // a live publisher, not yet written
  ASSERT_EQ(alive.publish(as_bytes("third")), Status::kOk);
  EXPECT_EQ(repair_stalled_frame(ring, dead, &arena_.table()), StalledRepair::kNotNow);
  // The live publisher writes its header and commits: now the gap is provably one claim.
  layout::FrameHeader* f = ring.frame_at(live);
  const std::string live_message = "live" + std::string(60, '.');  // fills its 96-byte claim
  f->sequence.store(live_claim.sequence);
  f->payload_length.store(static_cast<uint32_t>(live_message.size()));
  f->publisher_id.store(9);
  f->state.store(live | layout::kFrameWriting);
  std::memcpy(reinterpret_cast<std::byte*>(f) + 32, live_message.data(), live_message.size());
  EXPECT_EQ(repair_stalled_frame(ring, dead, &arena_.table()), StalledRepair::kRepaired);
  f->state.store(live | layout::kFrameCommitted);
  MessageInfo info;
  EXPECT_EQ(read_one(reader, &info), live_message);
  EXPECT_EQ(info.lost_before, 1u);  // the dead one
  EXPECT_EQ(read_one(reader), "third");
}

// Regression: resuming stopped at a headerless frame and delivered what came after it
// from there, including messages at or below the resume point.
TEST_F(RingTest, ResumeNeverRedeliversMessagesBehindAHeaderlessFrame) {
  RingRef ring = arena_.make_ring(small_ring(8192));
  Publisher publisher(ring, 1, &arena_.table());
  for (int i = 0; i < 50; ++i)
    ASSERT_EQ(publisher.publish(as_bytes("m" + std::to_string(i))), Status::kOk);
  const uint64_t dead = fake_headerless_claim(ring, 64);  // sequence 50
  for (int i = 51; i < 60; ++i)
    ASSERT_EQ(publisher.publish(as_bytes("m" + std::to_string(i))), Status::kOk);
  Reader resumed(ring, Reader::Start::kAfterSequence, 55);
  EXPECT_EQ(read_one(resumed), "<empty>");  // held up by the headerless frame
  ASSERT_EQ(repair_stalled_frame(ring, dead, &arena_.table()), StalledRepair::kRepaired);
  for (int i = 56; i < 60; ++i) {
    MessageInfo info;
    EXPECT_EQ(read_one(resumed, &info), "m" + std::to_string(i));
    EXPECT_EQ(info.lost_before, 0u);
  }
  EXPECT_EQ(read_one(resumed), "<empty>");
  EXPECT_EQ(resumed.delivered(), 4u);
}

// A publisher held up by a dead gating reader looks past it, and writes nothing to the
// reader table to do so (it may map it read-only): the daemon frees the slot.
TEST_F(RingTest, PublishersLookPastADeadGatingReaderWithoutFreeingItsSlot) {
  RingRef ring = arena_.make_ring(small_ring(4096, true));
  uint64_t doorbell_ref = 0;
  layout::DoorbellHeader* doorbell = arena_.make_doorbell(1, doorbell_ref);
  Reader ghost(ring);
  ghost.register_slot(true, doorbell_ref, doorbell, arena_.doorbells());
  Publisher publisher(ring, 1, &arena_.table());
  while (publisher.publish(as_bytes(std::string(60, 'g'))) == Status::kOk) {
  }
  ring.slot(0)->pid.store(pid_of_exited_process());
  const uint64_t generation = ring.readers()->generation.load();
  ASSERT_EQ(publisher.publish(as_bytes(std::string(60, 'g')), {}, 2s), Status::kOk);
  EXPECT_EQ(ring.slot(0)->state.load(), layout::kSlotGating);
  EXPECT_EQ(ring.notify()[0].load(), doorbell_ref);
  EXPECT_EQ(ring.readers()->generation.load(), generation);
  EXPECT_EQ(release_reader_slots_of(ring, ring.slot(0)->pid.load()), 1u);  // the daemon's job
}

// Regression: a frame retired by a publisher that stopped before moving the frontier made
// try_read spin without returning, and repair could not get past it.
TEST_F(RingTest, RetiredFrameTheFrontierHasNotPassedIsSteppedOver) {
  RingRef ring = arena_.make_ring(small_ring());
  Publisher publisher(ring, 1, &arena_.table());
  ASSERT_EQ(publisher.publish(as_bytes("retired")), Status::kOk);
  ASSERT_EQ(publisher.publish(as_bytes("kept")), Status::kOk);
  Reader reader(ring, Reader::Start::kEarliest);
  // The retire CAS done, the frontier not moved.
  ring.frame_at(0)->state.store(layout::retired_state(ring.frame_at(0)->state.load()));
  MessageInfo info;
  EXPECT_EQ(read_one(reader, &info), "kept");
  EXPECT_EQ(reader.delivered(), 1u);
  EXPECT_EQ(ring.retire_frontier(), 0u);
  EXPECT_EQ(inspect_ring(ring).first_unfinished, std::nullopt);  // walking moves the frontier on
  EXPECT_EQ(ring.retire_frontier(), layout::frame_bytes(7));
}

TEST_F(RingTest, ReaderSlotsRunOutWithAClearErrorAndAreReleasedForDeadPids) {
  RingRef ring = arena_.make_ring(small_ring());
  std::vector<std::unique_ptr<Reader>> readers;
  for (uint32_t i = 0; i < ring.reader_capacity(); ++i) {
    readers.push_back(std::make_unique<Reader>(ring));
    readers.back()->register_slot(false);
  }
  Reader extra(ring);
  try {
    extra.register_slot(false);
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("reader_capacity"), std::string::npos);
  }
  EXPECT_EQ(release_reader_slots_of(ring, getpid()), ring.reader_capacity());
  EXPECT_NO_THROW(extra.register_slot(false));
}

TEST_F(RingTest, WaitWakesOnPublishAndTimesOutWithout) {
  RingRef ring = arena_.make_ring(small_ring());
  Reader reader(ring);
  link_doorbell(reader);
  Publisher publisher(ring, 1, &arena_.table());

  EXPECT_EQ(reader.wait(20ms, 1us), Status::kTimedOut);
  expect_wait_is_woken_by(reader, 50ms, [&] { publisher.publish(as_bytes("wake")); });
  EXPECT_EQ(read_one(reader), "wake");
}

TEST_F(RingTest, PublishWithoutSleepersDoesNotTouchTheFutex) {
  RingRef ring = arena_.make_ring(small_ring());
  Reader reader(ring);
  layout::DoorbellHeader* doorbell = link_doorbell(reader);
  Publisher publisher(ring, 1, &arena_.table());
  for (int i = 0; i < 100; ++i) ASSERT_EQ(publisher.publish(as_bytes("x")), Status::kOk);
  // The futex word changes only when a waker saw a sleeper; nobody slept.
  EXPECT_EQ(doorbell->futex_word.load(), 0u);
  EXPECT_EQ(doorbell->wake_armed.load(), 0u);
}

// A local-only doorbell (a bridge's exporter) is not rung for imported messages (origin
// != 0) on a lossy ring; it is for local ones, and on a back-pressure ring for both.
TEST_F(RingTest, ImportedMessagesDoNotRingALocalOnlyDoorbellOnALossyRing) {
  for (const bool back_pressure : {false, true}) {
    RingConfig config = small_ring();
    config.back_pressure = back_pressure;
    RingRef ring = arena_.make_ring(config);
    uint64_t doorbell_ref = 0;
    layout::DoorbellHeader* doorbell = arena_.make_doorbell(8, doorbell_ref);
    doorbell->local_only.store(1);
    Reader reader(ring);
    reader.register_slot(back_pressure, doorbell_ref, doorbell, arena_.doorbells());
    Publisher publisher(ring, 1, &arena_.table());
    Waiter waiter(doorbell, arena_.doorbells());
    doorbell->wake_armed.store(1);  // a waiter asleep
    ASSERT_EQ(publisher.publish(as_bytes("imported"), PublishMeta{1, 7}), Status::kOk);
    EXPECT_EQ(waiter.any_ready(), back_pressure);
    EXPECT_EQ(doorbell->futex_word.load(), back_pressure ? 1u : 0u);
    doorbell->wake_armed.store(1);
    ASSERT_EQ(publisher.publish(as_bytes("local"), PublishMeta{1, 0}), Status::kOk);
    EXPECT_TRUE(waiter.any_ready());
    EXPECT_EQ(doorbell->futex_word.load(), back_pressure ? 2u : 1u);
  }
}

TEST_F(RingTest, AParkedWaiterIsWokenOnceHoweverManyPublishesComeBeforeItRuns) {
  RingRef ring = arena_.make_ring(small_ring());
  Reader reader(ring);
  layout::DoorbellHeader* doorbell = link_doorbell(reader);
  Publisher publisher(ring, 1, &arena_.table());
  // What Waiter::park_until leaves behind a waiter that is asleep (or about to be).
  doorbell->wake_armed.store(1);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(publisher.publish(as_bytes("x")), Status::kOk);
  // The first publish disarmed it and woke the futex; the other 99 made no system call.
  EXPECT_EQ(doorbell->futex_word.load(), 1u);
  EXPECT_EQ(doorbell->wake_armed.load(), 0u);
  // Parking again re-arms it: the next publish wakes again.
  doorbell->wake_armed.store(1);
  ASSERT_EQ(publisher.publish(as_bytes("y")), Status::kOk);
  EXPECT_EQ(doorbell->futex_word.load(), 2u);
}

}  // namespace
}  // namespace shmbus
