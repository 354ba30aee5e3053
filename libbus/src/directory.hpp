// Walks the bus directory and channel descriptors (layout.hpp) in the control arena: how
// tools, Bus::channels() and StatsReader list channels without a round trip to the daemon.
//
// Only the daemon writes the control arena (clients map it read-only), so what it says can
// be trusted; offsets are still checked against the mapping before they are followed. The
// daemon may add or reclaim channels during a walk; an entry is used only if its descriptor
// validates and the entry still points at it after reading, so a walk sees each channel that
// existed throughout it, and never a half-made one.
//
// Thread safety: uses the caller's BusMemory (thread-safe); one walk per thread.
#pragma once

#include <functional>
#include <optional>
#include <string_view>

#include "client.hpp"
#include "ring.hpp"

namespace shmbus {

struct DirectoryEntry {
  uint32_t channel_id = 0;
  std::string_view name;
  const layout::ChannelDescriptor* descriptor = nullptr;
  // The ring, when this process has its arenas mapped (an observer maps those of the
  // channels it may read; see protocol::Role).
  std::optional<RingRef> ring;
};

// The directory header; throws Error(kProtocol) if the control arena holds none.
const layout::DirectoryHeader* open_directory(const BusMemory& memory);

// The descriptor at `offset` of the control arena, or nullptr if none is there.
const layout::ChannelDescriptor* descriptor_at(const BusMemory& memory, uint64_t offset);

// The geometry a descriptor gives its ring.
RingGeometry geometry_of(const layout::ChannelDescriptor& descriptor);

// Calls fn for every live channel.
void for_each_channel(const BusMemory& memory,
                      const std::function<void(const DirectoryEntry&)>& fn);

}  // namespace shmbus
