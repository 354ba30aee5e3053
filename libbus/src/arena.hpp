// Arena: one shared-memory segment that holds many rings, reader tables or doorbells, so
// that 100,000 channels cost a handful of mappings and file descriptors, not 100,000
// (vm.max_map_count is 65,530).
//
// Segments have no name: the owner (the daemon) creates each one with memfd_create and
// hands it to clients as a file descriptor over the control socket (SCM_RIGHTS). Nothing in
// /dev/shm can be pre-created, locked or symlinked by another user to stop the bus, and the
// kernel decides who maps what:
// - the segment's mode is 0600 (the daemon's user), so a client that received a read-only
//   descriptor cannot reopen it writable through /proc/self/fd;
// - it is sealed against shrinking and growing (F_SEAL_SHRINK | F_SEAL_GROW), so no client
//   holding a writable descriptor can truncate it under everyone's mappings (SIGBUS).
//
// Ownership: exactly one process (the daemon) creates an arena and allocates in it; the
// allocator's bookkeeping lives in that process's heap, never in shared memory, so no lock
// in shared memory guards it and a crashed client cannot corrupt it. Other processes map
// the descriptors they are given and use blocks whose offsets the owner tells them.
//
// Thread safety: allocate()/release() must be called from one thread (the owner's control
// thread). base()/size() are safe from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <system_error>

#include "layout.hpp"

namespace shmbus {

class Arena {
 public:
  struct Block {
    uint64_t offset = 0;  // from the start of the segment; page aligned
    uint64_t bytes = 0;   // page multiple
  };

  enum class Access { kReadWrite, kReadOnly };

  // allocate()'s two failures, told apart by type: the owner may try another arena for the
  // first, while for the second (the system will not back the pages) no arena does better.
  // Both are std::system_error, so a caller that only reports them need not care which.
  // This arena has no free range of the size (full, or fragmented); code() is ENOSPC.
  class NoFreeBlock : public std::system_error {
   public:
    using std::system_error::system_error;
  };
  // posix_fallocate could not reserve the block's pages; code() is its errno (ENOSPC or
  // ENOMEM: the memory limit of the daemon's cgroup, or the system's, is reached).
  class ReserveFailed : public std::system_error {
   public:
    using std::system_error::system_error;
  };

  // Creates an unnamed segment of `arena_bytes` (rounded up to pages), mode 0600, sealed
  // against resizing. `label` names it in /proc/PID/maps and in messages ("shmbus.default.0").
  // Sparse: nothing is reserved until allocate().
  static Arena create(const std::string& label, uint64_t arena_bytes, uint32_t arena_id);
  // Maps the segment behind `fd` (which this call closes, whatever happens); validates the
  // seals, magic, version and size. With kReadOnly the mapping cannot be made writable.
  static Arena attach(int fd, Access access, const std::string& label);

  Arena(Arena&& other) noexcept;
  Arena& operator=(Arena&& other) noexcept;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena();

  std::byte* base() const { return base_; }
  uint64_t size() const { return size_; }
  const std::string& name() const { return label_; }
  // From this process's memory (the header's copy may be overwritten by any writer).
  uint32_t id() const { return id_; }
  bool is_owner() const { return owner_; }
  Access access() const { return access_; }
  const layout::ArenaHeader* header() const {
    return reinterpret_cast<const layout::ArenaHeader*>(base_);
  }
  template <typename T>
  T* at(uint64_t offset) const {
    return reinterpret_cast<T*>(base_ + offset);
  }

  // Owner only: descriptors to hand out. The read-write one is the owner's own; the read-only
  // one is opened once (through /proc/self/fd) and kept. Both stay owned by the Arena.
  int read_write_fd() const;
  int read_only_fd();

  // Owner only. Reserves a zero-filled, page-aligned block of at least `bytes`, backed by
  // pages reserved now (posix_fallocate), so touching it can never SIGBUS.
  // Throws NoFreeBlock naming the arena and the sizes when the arena has no free range that
  // large, and ReserveFailed naming the arena when the system would not reserve the memory.
  Block allocate(uint64_t bytes);
  // Owner only. Returns the block's pages to the system (they read back as zero) and makes
  // the range available again.
  void release(Block block);

  uint64_t bytes_allocated() const { return bytes_allocated_; }
  uint64_t bytes_free() const { return size() - layout::kPageSize - bytes_allocated_; }

 private:
  Arena() = default;
  void unmap();

  std::string label_;
  std::byte* base_ = nullptr;
  uint64_t size_ = 0;
  uint32_t id_ = 0;
  bool owner_ = false;
  Access access_ = Access::kReadWrite;
  int fd_ = -1;     // owner: the memfd (read-write); clients close theirs after mapping
  int ro_fd_ = -1;  // owner: a read-only descriptor of the same segment, opened on demand
  // Owner's free list: offset -> bytes, coalesced on release.
  std::map<uint64_t, uint64_t> free_;
  uint64_t bytes_allocated_ = 0;
};

}  // namespace shmbus
