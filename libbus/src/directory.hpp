// Walks the bus directory (layout.hpp) from shared memory: how tools, Bus::channels() and
// StatsReader list channels without a round trip to the daemon.
//
// The daemon may add or reclaim channels during a walk; an entry is used only if its ring
// validates (magic) and the entry still points at it after reading, so a walk sees each
// channel that existed throughout it, and never a half-made one.
//
// Thread safety: uses the caller's BusMemory (thread-safe); one walk per thread.
#pragma once

#include <functional>
#include <string_view>

#include "client.hpp"
#include "ring.hpp"

namespace shmbus {

struct DirectoryEntry {
  uint32_t channel_id = 0;
  std::string_view name;
  RingRef ring;
};

layout::DirectoryHeader* open_directory(BusMemory& memory);

// Calls fn for every live channel.
void for_each_channel(BusMemory& memory, const std::function<void(const DirectoryEntry&)>& fn);

}  // namespace shmbus
