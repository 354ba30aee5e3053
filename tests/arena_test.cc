// Arenas: unnamed segments handed around as descriptors. What another process can do with
// the descriptor it was given is decided by the kernel: map it, read-only where it was
// given read-only, and never resize it.
#include "arena.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>

#include "test_support.hpp"

namespace shmbus {
namespace {

using test::TestArena;

TEST(Arena, AnAttachedCopySeesTheSameBytes) {
  TestArena owner(1 << 20, 7);
  const auto block = owner.arena().allocate(10000);
  EXPECT_EQ(block.offset % layout::kPageSize, 0u);
  EXPECT_EQ(block.bytes, 12288u);
  std::memcpy(owner.arena().base() + block.offset, "hello", 5);

  Arena other = owner.attach_copy();
  EXPECT_FALSE(other.is_owner());
  EXPECT_EQ(other.id(), 7u);
  EXPECT_EQ(other.size(), owner.arena().size());
  EXPECT_NE(other.base(), owner.arena().base());
  EXPECT_EQ(std::memcmp(other.base() + block.offset, "hello", 5), 0);
}

// Nothing of the bus has a name another user could pre-create, lock or symlink.
TEST(Arena, SegmentsHaveNoNameInDevShm) {
  const auto before = std::distance(std::filesystem::directory_iterator("/dev/shm"),
                                    std::filesystem::directory_iterator());
  TestArena owner(1 << 20);
  const auto after = std::distance(std::filesystem::directory_iterator("/dev/shm"),
                                   std::filesystem::directory_iterator());
  EXPECT_EQ(after, before);
  struct stat st {};
  ASSERT_EQ(fstat(owner.arena().read_write_fd(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(Arena, AttachWithoutADescriptorSaysWhichArena) {
  try {
    (void)Arena::attach(-1, Arena::Access::kReadOnly, "shmbus.x.3");
    FAIL() << "attach succeeded";
  } catch (const std::system_error& e) {
    EXPECT_NE(std::string(e.what()).find("shmbus.x.3"), std::string::npos);
  }
}

TEST(Arena, AttachRejectsSegmentsThatAreNotSealedOrNotArenas) {
  // A segment someone could resize under us.
  const int unsealed = memfd_create("foreign", MFD_CLOEXEC);
  ASSERT_GE(unsealed, 0);
  ASSERT_EQ(ftruncate(unsealed, 8192), 0);
  EXPECT_THROW((void)Arena::attach(unsealed, Arena::Access::kReadOnly, "foreign"),
               std::runtime_error);
  // Sealed, the right size, but its header was never written.
  const int blank = memfd_create("blank", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ASSERT_EQ(ftruncate(blank, 8192), 0);
  ASSERT_EQ(fcntl(blank, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
  EXPECT_THROW((void)Arena::attach(blank, Arena::Access::kReadOnly, "blank"), std::runtime_error);
}

// A client with a writable descriptor must not be able to SIGBUS everyone by truncating.
TEST(Arena, NobodyCanResizeAnArena) {
  TestArena owner(1 << 20);
  const int fd = dup(owner.arena().read_write_fd());
  EXPECT_NE(ftruncate(fd, 4096), 0);
  EXPECT_EQ(errno, EPERM);
  EXPECT_NE(ftruncate(fd, 8 << 20), 0);
  ::close(fd);
}

// A read-only descriptor maps read-only, and nothing turns it writable: not mmap, not
// mprotect. (Reopening through /proc is refused by the mode too, for any user but the
// owner's: see the permission tests, which need a second user.)
TEST(Arena, AReadOnlyDescriptorCannotBeMadeWritable) {
  TestArena owner(1 << 20);
  Arena reader = owner.attach_copy(Arena::Access::kReadOnly);
  EXPECT_EQ(reader.header()->arena_bytes, owner.arena().size());
  const int fd = dup(owner.arena().read_only_fd());
  EXPECT_EQ(mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), MAP_FAILED);
  EXPECT_EQ(errno, EACCES);
  void* ro = mmap(nullptr, 4096, PROT_READ, MAP_SHARED, fd, 0);
  ASSERT_NE(ro, MAP_FAILED);
  EXPECT_NE(mprotect(ro, 4096, PROT_READ | PROT_WRITE), 0);
  munmap(ro, 4096);
  ::close(fd);
  // A write through the read-only mapping is a fault in the writer, nobody else.
  EXPECT_TRUE(test::write_faults([&] {
    const_cast<std::byte*>(reinterpret_cast<const std::byte*>(reader.header()))[100] = std::byte{1};
  }));
}

TEST(Arena, ExhaustionNamesTheArenaAndSizes) {
  TestArena owner(16 * layout::kPageSize);
  (void)owner.arena().allocate(10 * layout::kPageSize);
  try {
    (void)owner.arena().allocate(10 * layout::kPageSize);
    FAIL() << "allocation beyond the arena succeeded";
  } catch (const Arena::NoFreeBlock& e) {
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

TEST(Arena, OnlyTheOwnerAllocatesAndHandsOut) {
  TestArena owner(1 << 20);
  Arena other = owner.attach_copy();
  EXPECT_THROW((void)other.allocate(4096), std::logic_error);
  EXPECT_THROW((void)other.read_only_fd(), std::logic_error);
}

}  // namespace
}  // namespace shmbus
