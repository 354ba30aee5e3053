#include "arena.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/interprocess/exceptions.hpp>
#include <chrono>
#include <cstring>

#include "naming.hpp"
#include "sys_error.hpp"

namespace shmbus {

namespace bip = boost::interprocess;

Arena Arena::create(const std::string& name, uint64_t arena_bytes, uint32_t arena_id) {
  if (arena_id > 0xff) throw std::invalid_argument("arena id must be below 256");
  arena_bytes = layout::align_up(arena_bytes, layout::kPageSize);
  if (arena_bytes < 2 * layout::kPageSize)
    throw std::invalid_argument("arena '" + name + "' must be at least 2 pages");
  if (arena_bytes / layout::kCacheLine > 0xffffffffULL)
    throw std::invalid_argument("arena '" + name + "' exceeds the 256 GiB an ShmRef can address");

  Arena arena;
  arena.name_ = name;
  arena.owner_ = true;
  try {
    // 0660: clients in the bus's group may map it (the daemon sets the group).
    arena.shm_ = bip::shared_memory_object(bip::create_only, name.c_str(), bip::read_write,
                                           bip::permissions(0660));
    arena.shm_.truncate(static_cast<bip::offset_t>(arena_bytes));
    arena.region_ = bip::mapped_region(arena.shm_, bip::read_write);
  } catch (const bip::interprocess_exception& e) {
    if (arena.shm_.get_mapping_handle().handle != -1)
      bip::shared_memory_object::remove(name.c_str());
    throw std::system_error(e.get_native_error() ? e.get_native_error() : EIO,
                            std::generic_category(),
                            "creating shared memory arena '" + name + "' of " +
                                human_bytes(arena_bytes) + ": " + e.what());
  }
  // The header page is the one page every attacher touches: reserve it now.
  if (int err = posix_fallocate(arena.fd(), 0, layout::kPageSize); err != 0) {
    bip::shared_memory_object::remove(name.c_str());
    throw_sys_error(err, "reserving the header page of arena '" + name + "' in /dev/shm");
  }
  auto* header = arena.at<layout::ArenaHeader>(0);
  header->version = layout::kLayoutVersion;
  header->arena_bytes = arena_bytes;
  header->first_block = layout::kPageSize;
  header->owner_pid = getpid();
  header->arena_id = arena_id;
  header->created_unix_ns =
      static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count());
  // Release: an attacher that sees the magic (acquire) sees every field above.
  header->magic.store(layout::kArenaMagic, std::memory_order_release);
  arena.free_.emplace(layout::kPageSize, arena_bytes - layout::kPageSize);
  return arena;
}

Arena Arena::attach(const std::string& name, Access access) {
  Arena arena;
  arena.name_ = name;
  const auto mode = access == Access::kReadWrite ? bip::read_write : bip::read_only;
  try {
    arena.shm_ = bip::shared_memory_object(bip::open_only, name.c_str(), mode);
    arena.region_ = bip::mapped_region(arena.shm_, mode);
  } catch (const bip::interprocess_exception& e) {
    throw std::system_error(
        e.get_native_error() ? e.get_native_error() : EIO, std::generic_category(),
        "attaching shared memory arena '/dev/shm/" + name + "' (is shmbusd running for this bus?)");
  }
  if (arena.size() < layout::kPageSize)
    throw std::runtime_error("arena '" + name + "' is smaller than its header page");
  const auto* header = arena.header();
  const uint32_t magic =
      const_cast<layout::ArenaHeader*>(header)->magic.load(std::memory_order_acquire);
  if (magic != layout::kArenaMagic)
    throw std::runtime_error("'" + name + "' is not a shmbus arena (bad magic)");
  if (header->version != layout::kLayoutVersion)
    throw std::runtime_error("arena '" + name + "' has layout version " +
                             std::to_string(header->version) + ", this library speaks " +
                             std::to_string(layout::kLayoutVersion) +
                             "; restart the daemon and clients from the same release");
  if (header->arena_bytes != arena.size())
    throw std::runtime_error("arena '" + name + "' header says " +
                             std::to_string(header->arena_bytes) + " bytes but the segment has " +
                             std::to_string(arena.size()));
  return arena;
}

bool Arena::remove(const std::string& name) {
  return bip::shared_memory_object::remove(name.c_str());
}

int Arena::fd() const {
  return shm_.get_mapping_handle().handle;
}

Arena::Block Arena::allocate(uint64_t bytes) {
  if (!owner_) throw std::logic_error("only the owner of arena '" + name_ + "' may allocate");
  bytes = layout::align_up(bytes == 0 ? 1 : bytes, layout::kPageSize);
  // First fit: the daemon allocates rarely (channel creation), so simplicity beats speed.
  auto it = free_.begin();
  while (it != free_.end() && it->second < bytes) ++it;
  if (it == free_.end())
    throw NoFreeBlock(ENOSPC, std::generic_category(),
                      "arena '" + name_ + "' has no free block of " + human_bytes(bytes) + " (" +
                          human_bytes(size()) + " arena, " + human_bytes(bytes_allocated_) +
                          " allocated); use smaller rings or more arenas");
  const Block block{it->first, bytes};
  // Reserve the pages before anyone can touch them: on a full tmpfs this fails cleanly here
  // instead of raising SIGBUS in whichever client first writes the page.
  if (int err =
          posix_fallocate(fd(), static_cast<off_t>(block.offset), static_cast<off_t>(block.bytes));
      err != 0) {
    throw ReserveFailed(err, std::generic_category(),
                        "reserving " + human_bytes(bytes) + " of /dev/shm for arena '" + name_ +
                            "' (check free space with 'df -h /dev/shm')");
  }
  const uint64_t rest = it->second - bytes;
  const uint64_t rest_offset = it->first + bytes;
  free_.erase(it);
  if (rest != 0) free_.emplace(rest_offset, rest);
  bytes_allocated_ += bytes;
  return block;
}

void Arena::release(Block block) {
  if (!owner_) throw std::logic_error("only the owner of arena '" + name_ + "' may release");
  if (block.bytes == 0) return;
  // Punch the pages out: memory goes back to the system and the range reads as zero, which
  // is the state a freshly formatted ring or doorbell expects.
  if (fallocate(fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(block.offset),
                static_cast<off_t>(block.bytes)) != 0) {
    // tmpfs supports hole punching; if some filesystem does not, zero by hand.
    std::memset(base() + block.offset, 0, block.bytes);
  }
  bytes_allocated_ -= block.bytes;
  auto [it, inserted] = free_.emplace(block.offset, block.bytes);
  if (!inserted) throw std::logic_error("double release in arena '" + name_ + "'");
  // Coalesce with the following and preceding free ranges.
  auto next = std::next(it);
  if (next != free_.end() && it->first + it->second == next->first) {
    it->second += next->second;
    free_.erase(next);
  }
  if (it != free_.begin()) {
    auto prev = std::prev(it);
    if (prev->first + prev->second == it->first) {
      prev->second += it->second;
      free_.erase(it);
    }
  }
}

}  // namespace shmbus
