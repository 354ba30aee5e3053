#include "directory.hpp"

#include "layout.hpp"
#include "shmbus/error.hpp"

namespace shmbus {

using namespace layout;

const DirectoryHeader* open_directory(const BusMemory& memory) {
  std::byte* control = memory.base(kControlArena);
  if (memory.size(kControlArena) < kDirectoryOffset + sizeof(DirectoryHeader))
    throw Error(Errc::kProtocol, "bus directory missing from the control arena");
  auto* directory = reinterpret_cast<DirectoryHeader*>(control + kDirectoryOffset);
  if (directory->magic.load(std::memory_order_acquire) != kDirectoryMagic ||
      directory->version != kLayoutVersion ||
      kDirectoryOffset + directory_bytes(directory->capacity) > memory.size(kControlArena))
    throw Error(Errc::kProtocol,
                "bus '" + memory.bus() + "' has no valid directory (a different shmbus version?)");
  return directory;
}

const ChannelDescriptor* descriptor_at(const BusMemory& memory, uint64_t offset) {
  const uint64_t size = memory.size(kControlArena);
  if (offset < kPageSize || offset % kCacheLine != 0 || offset > size ||
      size - offset < sizeof(ChannelDescriptor))
    return nullptr;
  const auto* d = reinterpret_cast<const ChannelDescriptor*>(memory.base(kControlArena) + offset);
  // Acquire: pairs with the daemon's release store of the magic after it wrote the rest.
  if (const_cast<ChannelDescriptor*>(d)->magic.load(std::memory_order_acquire) !=
          kDescriptorMagic ||
      d->name_length > kMaxChannelName || size - offset < descriptor_bytes(d->name_length))
    return nullptr;
  return d;
}

RingGeometry geometry_of(const ChannelDescriptor& d) {
  return RingGeometry{d.capacity, d.max_payload, (d.flags & kRingBackPressure) != 0,
                      d.reader_capacity, d.channel_id};
}

namespace {

// The ring of `d`, if both its arenas are mapped here and it opens.
std::optional<RingRef> ring_of(const BusMemory& memory, const ChannelDescriptor& d) {
  const uint32_t ring_arena = ShmRef::arena_id(d.ring_ref);
  const uint32_t readers_arena = ShmRef::arena_id(d.readers_ref);
  if (!memory.mapped(ring_arena) || !memory.mapped(readers_arena)) return std::nullopt;
  const uint64_t ring_offset = ShmRef::offset(d.ring_ref);
  const uint64_t readers_offset = ShmRef::offset(d.readers_ref);
  const uint64_t ring_size = memory.size(ring_arena);
  const uint64_t readers_size = memory.size(readers_arena);
  if (ring_offset > ring_size || readers_offset > readers_size) return std::nullopt;
  try {
    return RingRef::open(memory.base(ring_arena) + ring_offset, ring_size - ring_offset,
                         memory.base(readers_arena) + readers_offset, readers_size - readers_offset,
                         geometry_of(d));
  } catch (const std::exception&) {
    return std::nullopt;  // reclaimed and zeroed while we looked, or corrupt: no counters
  }
}

}  // namespace

void for_each_channel(const BusMemory& memory,
                      const std::function<void(const DirectoryEntry&)>& fn) {
  const DirectoryHeader* directory = open_directory(memory);
  const auto* entries = reinterpret_cast<const std::atomic<uint64_t>*>(
      reinterpret_cast<const std::byte*>(directory) + sizeof(DirectoryHeader));
  const uint32_t high =
      std::min(directory->high_water.load(std::memory_order_acquire), directory->capacity);
  for (uint32_t id = 0; id < high; ++id) {
    // Acquire: pairs with the daemon's release store after it wrote the descriptor.
    const uint64_t offset = entries[id].load(std::memory_order_acquire);
    if (offset == 0) continue;
    const ChannelDescriptor* d = descriptor_at(memory, offset);
    if (d == nullptr || d->channel_id != id ||
        d->state.load(std::memory_order_acquire) != kChannelLive)
      continue;
    DirectoryEntry entry;
    entry.channel_id = id;
    entry.descriptor = d;
    entry.name = std::string_view(reinterpret_cast<const char*>(d) + sizeof(ChannelDescriptor),
                                  d->name_length);
    entry.ring = ring_of(memory, *d);
    if (entries[id].load(std::memory_order_acquire) != offset) continue;  // reclaimed meanwhile
    fn(entry);
  }
}

}  // namespace shmbus
