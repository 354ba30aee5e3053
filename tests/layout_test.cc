// Layout checks that need run time; the offsets themselves are static_asserts in layout.hpp.
#include "layout.hpp"

#include <gtest/gtest.h>

namespace shmbus::layout {
namespace {

TEST(Layout, FrameSizesAreAlignedAndIncludeTheHeader) {
  EXPECT_EQ(frame_bytes(0), 32u);
  EXPECT_EQ(frame_bytes(1), 64u);
  EXPECT_EQ(frame_bytes(32), 64u);
  EXPECT_EQ(frame_bytes(33), 96u);
  EXPECT_EQ(frame_bytes(64), 96u);
  for (uint32_t n = 0; n < 5000; n += 7) EXPECT_EQ(frame_bytes(n) % kFrameAlignment, 0u);
}

TEST(Layout, StateTagIgnoresFlags) {
  const uint64_t position = 1ULL << 40 | 4096;
  EXPECT_EQ(frame_tag(position | kFrameCommitted | kFramePadding | kFrameAborted), position);
  EXPECT_EQ(kFrameFlagMask & position, 0u);
  // All flags fit below the alignment.
  EXPECT_LT(kFrameCommitted | kFramePadding | kFrameRetired | kFrameWriting | kFrameAborted,
            kFrameAlignment);
}

TEST(Layout, ShmRefRoundTripsAtTheLimits) {
  const uint64_t offset = (uint64_t{0xffffffff}) * kCacheLine;
  const uint64_t ref = ShmRef::make(255, offset, ShmRef::kMaxBit);
  EXPECT_EQ(ShmRef::arena_id(ref), 255u);
  EXPECT_EQ(ShmRef::offset(ref), offset);
  EXPECT_EQ(ShmRef::bit(ref), ShmRef::kMaxBit);
  EXPECT_NE(ShmRef::make(0, kPageSize, 0), ShmRef::kNone);
}

TEST(Layout, RingBlockIsAHeaderPageAndTheData) {
  EXPECT_EQ(ring_block_bytes(4096), 2 * kPageSize);
  EXPECT_EQ(ring_block_bytes(1 << 16) % kPageSize, 0u);
  EXPECT_EQ(kRingDataOffset % kPageSize, 0u);
}

// Reader tables live apart from rings (a subscriber writes its slot; it maps the ring
// read-only), packed at 64-byte granularity: 100,000 small channels with 4 subscriber slots
// each take 384 bytes of reader table apiece, not a page.
TEST(Layout, ReaderTablesArePackedAndEachSlotHasItsLine) {
  EXPECT_EQ(reader_table_bytes(4), 6 * kCacheLine);
  EXPECT_EQ(reader_table_bytes(100) % kCacheLine, 0u);
  EXPECT_GE(reader_table_bytes(100),
            sizeof(ReaderTableHeader) + 8 * 100 + sizeof(ReaderSlot) * 100);
  EXPECT_EQ(slots_offset(100) % kCacheLine, 0u);
  EXPECT_EQ(notify_array_offset(), sizeof(ReaderTableHeader));
}

// A descriptor is the daemon's word on a channel: geometry, live counters and the name.
TEST(Layout, DescriptorsHoldTheNameAfterTwoLines) {
  EXPECT_EQ(descriptor_bytes(0), 2 * kCacheLine);
  EXPECT_EQ(descriptor_bytes(1), 3 * kCacheLine);
  EXPECT_EQ(descriptor_bytes(kMaxChannelName), 2 * kCacheLine + kMaxChannelName);
  EXPECT_EQ(doorbell_stride(1), kPageSize);
  EXPECT_TRUE(is_power_of_two(doorbell_stride(200001)));
  EXPECT_GE(doorbell_stride(200001), doorbell_bytes(200001));
}

TEST(Layout, DoorbellFor100kRingsIsSmall) {
  const uint32_t bits = 100'000;
  EXPECT_EQ(doorbell_leaf_words(bits), 1563u);
  EXPECT_EQ(doorbell_summary_words(bits), 25u);
  EXPECT_LT(doorbell_bytes(bits), 16u * 1024);
}

}  // namespace
}  // namespace shmbus::layout
