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

TEST(Layout, RingBlockKeepsReaderStateOffTheDataPages) {
  const uint64_t capacity = 1 << 16;
  const uint32_t readers = 100;
  EXPECT_EQ(ring_block_bytes(capacity, readers) % kPageSize, 0u);
  // Reader table starts on the page after the data, so reader writes never share a page
  // with frames.
  EXPECT_EQ((kRingDataOffset + capacity) % kPageSize, 0u);
  EXPECT_GE(reader_table_bytes(readers),
            sizeof(ReaderTableHeader) + 8 * readers + sizeof(ReaderSlot) * readers);
  EXPECT_EQ(slots_offset(readers) % kCacheLine, 0u);
  EXPECT_EQ(readers_offset(capacity, readers), kRingDataOffset + capacity);
}

TEST(Layout, SmallReaderTableSharesTheHeaderPageNotTheData) {
  // 100,000 small channels: the header page holds name and readers, so a 4 KiB ring
  // costs two pages, not three.
  EXPECT_EQ(ring_block_bytes(4096, 16), 2 * kPageSize);
  EXPECT_EQ(readers_offset(4096, 16), kRingInlineReadersOffset);
  EXPECT_LE(kRingInlineReadersOffset + reader_table_used_bytes(16), kRingDataOffset);
  EXPECT_GE(kRingInlineReadersOffset, kRingNameOffset + sizeof(RingName));
}

TEST(Layout, DoorbellFor100kRingsIsSmall) {
  const uint32_t bits = 100'000;
  EXPECT_EQ(doorbell_leaf_words(bits), 1563u);
  EXPECT_EQ(doorbell_summary_words(bits), 25u);
  EXPECT_LT(doorbell_bytes(bits), 16u * 1024);
}

}  // namespace
}  // namespace shmbus::layout
