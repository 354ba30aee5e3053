#include "directory.hpp"

#include "layout.hpp"
#include "shmbus/error.hpp"

namespace shmbus {

using namespace layout;

DirectoryHeader* open_directory(BusMemory& memory) {
  std::byte* arena0 = memory.base(0);
  if (memory.size(0) < kPageSize + sizeof(DirectoryHeader))
    throw Error(Errc::kProtocol, "bus directory missing from arena 0");
  auto* directory = reinterpret_cast<DirectoryHeader*>(arena0 + kDirectoryOffset);
  if (directory->magic.load(std::memory_order_acquire) != kDirectoryMagic ||
      directory->version != kLayoutVersion ||
      kDirectoryOffset + directory_bytes(directory->capacity) > memory.size(0))
    throw Error(Errc::kProtocol, "bus '" + memory.bus() +
                                     "' has no valid directory (a different shmbus version?)");
  return directory;
}

void for_each_channel(BusMemory& memory, const std::function<void(const DirectoryEntry&)>& fn) {
  DirectoryHeader* directory = open_directory(memory);
  auto* entries = reinterpret_cast<std::atomic<uint64_t>*>(
      reinterpret_cast<std::byte*>(directory) + sizeof(DirectoryHeader));
  const uint32_t high = std::min(directory->high_water.load(std::memory_order_acquire),
                                 directory->capacity);
  for (uint32_t id = 0; id < high; ++id) {
    // Acquire: pairs with the daemon's release store after it formatted the ring.
    const uint64_t ref = entries[id].load(std::memory_order_acquire);
    if (ref == ShmRef::kNone) continue;
    try {
      std::byte* arena = memory.base(ShmRef::arena_id(ref));
      const uint64_t arena_bytes = memory.size(ShmRef::arena_id(ref));
      const uint64_t offset = ShmRef::offset(ref);
      if (offset + kRingDataOffset > arena_bytes) continue;
      RingRef ring = RingRef::open(arena + offset, arena_bytes - offset);
      const auto* name = reinterpret_cast<const RingName*>(arena + offset + kRingNameOffset);
      const uint32_t length = std::min<uint32_t>(name->length, kMaxChannelName);
      DirectoryEntry entry{id, std::string_view(name->bytes, length), ring};
      if (entries[id].load(std::memory_order_acquire) != ref) continue;  // reclaimed meanwhile
      fn(entry);
    } catch (const std::exception&) {
      continue;  // reclaimed and zeroed while we looked: it no longer exists
    }
  }
}

}  // namespace shmbus
