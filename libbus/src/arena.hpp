// Arena: one POSIX shared-memory segment that holds many rings and doorbells, so that
// 100,000 channels cost a handful of mappings and file descriptors, not 100,000
// (vm.max_map_count is 65,530).
//
// Ownership: exactly one process (the daemon) creates an arena and allocates in it; the
// allocator's bookkeeping lives in that process's heap, never in shared memory, so no lock
// in shared memory guards it and a crashed client cannot corrupt it. Other processes attach
// by name and use blocks whose offsets the owner tells them.
//
// Thread safety: allocate()/release() must be called from one thread (the owner's control
// thread). base()/size() are safe from any thread.
#pragma once

#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
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
  // first, while for the second (/dev/shm itself cannot back the pages) no arena does better.
  // Both are std::system_error, so a caller that only reports them need not care which.
  // This arena has no free range of the size (full, or fragmented); code() is ENOSPC.
  class NoFreeBlock : public std::system_error {
   public:
    using std::system_error::system_error;
  };
  // posix_fallocate could not reserve the block's pages; code() is its errno (ENOSPC when
  // /dev/shm is full).
  class ReserveFailed : public std::system_error {
   public:
    using std::system_error::system_error;
  };

  // Creates the segment `name` (as in shm_open: no slash, e.g. "shmbus.default.0") of
  // `arena_bytes` (rounded up to pages). The segment is sparse: nothing is reserved until
  // allocate(). Throws if it already exists.
  static Arena create(const std::string& name, uint64_t arena_bytes, uint32_t arena_id);
  // Maps an existing arena; validates magic, version and size.
  static Arena attach(const std::string& name, Access access = Access::kReadWrite);
  // Unlinks the segment name; mappings stay valid until unmapped. False if it did not exist.
  static bool remove(const std::string& name);

  Arena(Arena&&) noexcept = default;
  Arena& operator=(Arena&&) noexcept = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena() = default;

  std::byte* base() const { return static_cast<std::byte*>(region_.get_address()); }
  uint64_t size() const { return region_.get_size(); }
  const std::string& name() const { return name_; }
  uint32_t id() const { return header()->arena_id; }
  bool is_owner() const { return owner_; }
  const layout::ArenaHeader* header() const {
    return reinterpret_cast<const layout::ArenaHeader*>(base());
  }
  template <typename T>
  T* at(uint64_t offset) const {
    return reinterpret_cast<T*>(base() + offset);
  }

  // Owner only. Reserves a zero-filled, page-aligned block of at least `bytes`, backed by
  // tmpfs pages reserved now (posix_fallocate), so touching it can never SIGBUS.
  // Throws NoFreeBlock (ENOSPC) naming the arena and the sizes when the arena has no room,
  // or ReserveFailed when /dev/shm cannot back the block.
  Block allocate(uint64_t bytes);
  // Owner only. Returns the block's pages to the system (they read back as zero) and makes
  // the range available again.
  void release(Block block);

  uint64_t bytes_allocated() const { return bytes_allocated_; }
  uint64_t bytes_free() const { return size() - layout::kPageSize - bytes_allocated_; }

 private:
  Arena() = default;
  int fd() const;

  std::string name_;
  boost::interprocess::shared_memory_object shm_;
  boost::interprocess::mapped_region region_;
  bool owner_ = false;
  // Owner's free list: offset -> bytes, coalesced on release.
  std::map<uint64_t, uint64_t> free_;
  uint64_t bytes_allocated_ = 0;
};

}  // namespace shmbus
