#include "arena.hpp"

#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <system_error>

#include "test_support.hpp"

namespace shmbus {
namespace {

using test::TestArena;

TEST(Arena, CreateAttachSeeTheSameBytes) {
  TestArena owner(1 << 20, 7);
  const auto block = owner.arena().allocate(10000);
  EXPECT_EQ(block.offset % layout::kPageSize, 0u);
  EXPECT_EQ(block.bytes, 12288u);
  std::memcpy(owner.arena().base() + block.offset, "hello", 5);

  Arena other = Arena::attach(owner.name());
  EXPECT_FALSE(other.is_owner());
  EXPECT_EQ(other.id(), 7u);
  EXPECT_EQ(other.size(), owner.arena().size());
  EXPECT_EQ(std::memcmp(other.base() + block.offset, "hello", 5), 0);
}

TEST(Arena, AttachToMissingArenaNamesItAndShmbusd) {
  try {
    (void)Arena::attach("shmbus-test.does-not-exist");
    FAIL() << "attach succeeded";
  } catch (const std::system_error& e) {
    EXPECT_NE(std::string(e.what()).find("shmbus-test.does-not-exist"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("shmbusd"), std::string::npos);
  }
}

TEST(Arena, SecondCreateOfTheSameNameFails) {
  TestArena owner(1 << 20);
  EXPECT_THROW((void)Arena::create(owner.name(), 1 << 20, 2), std::system_error);
}

TEST(Arena, AttachRejectsForeignSegments) {
  const std::string name = test::unique_arena_name("foreign");
  {
    // A segment of the right size whose header was never written.
    namespace bip = boost::interprocess;
    bip::shared_memory_object shm(bip::create_only, name.c_str(), bip::read_write);
    shm.truncate(8192);
  }
  EXPECT_THROW((void)Arena::attach(name), std::runtime_error);
  Arena::remove(name);
}

TEST(Arena, ExhaustionNamesTheArenaAndSizes) {
  TestArena owner(16 * layout::kPageSize);
  (void)owner.arena().allocate(10 * layout::kPageSize);
  try {
    (void)owner.arena().allocate(10 * layout::kPageSize);
    FAIL() << "allocation beyond the arena succeeded";
  } catch (const Arena::NoFreeBlock& e) {  // not ReserveFailed: another arena may have room
    EXPECT_EQ(e.code().value(), ENOSPC);
    const std::string what = e.what();
    EXPECT_NE(what.find(owner.name()), std::string::npos) << what;
    EXPECT_NE(what.find("40 KiB"), std::string::npos) << what;
  }
}

TEST(Arena, ReleaseCoalescesAndReturnsZeroedPages) {
  TestArena owner(64 * layout::kPageSize);
  Arena& arena = owner.arena();
  const uint64_t free_at_start = arena.bytes_free();
  auto a = arena.allocate(4 * layout::kPageSize);
  auto b = arena.allocate(4 * layout::kPageSize);
  auto c = arena.allocate(4 * layout::kPageSize);
  std::memset(arena.base() + b.offset, 0xab, b.bytes);
  arena.release(a);
  arena.release(c);
  arena.release(b);  // joins a and c into one range
  EXPECT_EQ(arena.bytes_free(), free_at_start);
  // The whole free space is one range again: a block as large as all of it fits.
  auto all = arena.allocate(free_at_start);
  EXPECT_EQ(all.offset, a.offset);
  for (uint64_t i = 0; i < b.bytes; i += 512) ASSERT_EQ(arena.base()[b.offset + i], std::byte{0});
}

TEST(Arena, OnlyTheOwnerAllocates) {
  TestArena owner(1 << 20);
  Arena other = Arena::attach(owner.name());
  EXPECT_THROW((void)other.allocate(4096), std::logic_error);
}

TEST(Arena, ReadOnlyAttachMapsWithoutWriteAccess) {
  TestArena owner(1 << 20);
  Arena reader = Arena::attach(owner.name(), Arena::Access::kReadOnly);
  EXPECT_EQ(reader.header()->arena_bytes, owner.arena().size());
}

// A full /dev/shm must be a clean error in the allocating process, never a SIGBUS in a
// client. The child mounts a 1 MiB tmpfs over /dev/shm in its own mount namespace.
TEST(Arena, FullDevShmIsAnAllocationErrorNotSigbus) {
  const int code = test::run_with_small_dev_shm("1m", [] {
    // A 64 MiB arena on a 1 MiB tmpfs: creation is sparse and succeeds...
    Arena arena = Arena::create("shmbus-test.full", 64 << 20, 1);
    (void)arena.allocate(512 << 10);  // fits
    try {
      (void)arena.allocate(1 << 20);  // does not: /dev/shm is full
      return 2;
    } catch (const Arena::ReserveFailed& e) {  // not NoFreeBlock: no other arena does better
      if (e.code().value() != ENOSPC) return 3;
      if (std::string(e.what()).find("/dev/shm") == std::string::npos) return 4;
    } catch (const std::system_error&) {
      return 5;
    }
    return 0;
  });
  if (code == test::kNoPrivateDevShm)
    GTEST_SKIP() << "needs CAP_SYS_ADMIN to mount a small tmpfs in a private namespace";
  EXPECT_EQ(code, 0) << "see the child's exit code in the test";
}

}  // namespace
}  // namespace shmbus
