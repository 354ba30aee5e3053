// StatsReader: per-channel counters straight from shared memory (the bus directory and each
// ring's header and reader table), read-only: a stats tool can never disturb the bus.
#include "shmbus/stats.hpp"

#include "client.hpp"
#include "directory.hpp"
#include "glob.hpp"

namespace shmbus {

struct StatsReader::State {
  std::unique_ptr<BusMemory> memory;
};

StatsReader::StatsReader(std::unique_ptr<State> state) : state_(std::move(state)) {}
StatsReader::StatsReader(StatsReader&&) noexcept = default;
StatsReader& StatsReader::operator=(StatsReader&&) noexcept = default;
StatsReader::~StatsReader() = default;

StatsReader StatsReader::open(const ConnectOptions& options) {
  // One HELLO to learn which bus answers on the socket (the caller may have given only the
  // socket) and to fail with the socket's name if nothing does; counters are then read
  // from shared memory only.
  const std::string bus = ControlConnection(resolve_endpoint(options), false).welcome().bus;
  auto state = std::make_unique<State>();
  state->memory = std::make_unique<BusMemory>(bus, Arena::Access::kReadOnly);
  open_directory(*state->memory);  // fails now, with a clear message, if there is no bus
  return StatsReader(std::move(state));
}

const std::string& StatsReader::bus_name() const { return state_->memory->bus(); }

BusStats StatsReader::read(std::string_view pattern) {
  BusStats stats;
  const layout::DirectoryHeader* directory = open_directory(*state_->memory);
  stats.daemon_pid = directory->daemon_pid;
  stats.started_unix_ns = directory->started_unix_ns;
  for_each_channel(*state_->memory, [&](const DirectoryEntry& e) {
    if (!pattern.empty() && !glob_match(pattern, e.name)) return;
    const layout::RingHeader* h = e.ring.header();
    ChannelStats c;
    c.channel = std::string(e.name);
    c.published = e.ring.published_relaxed();
    c.payload_bytes = h->payload_bytes.load(std::memory_order_relaxed);
    c.receivers = h->receivers.load(std::memory_order_relaxed);
    c.last_publish_unix_ns = h->last_publish_unix_ns.load(std::memory_order_relaxed);
    c.ring_bytes = e.ring.capacity();
    c.max_message_bytes = e.ring.max_payload();
    c.back_pressure = e.ring.back_pressure();
    c.repaired_frames = h->repaired_frames.load(std::memory_order_relaxed);
    const uint32_t slots = e.ring.slot_high_water();
    for (uint32_t i = 0; i < slots; ++i) {
      const layout::ReaderSlot* slot = e.ring.slot(i);
      if (slot->state.load(std::memory_order_acquire) == layout::kSlotFree) continue;
      ++c.subscribers;
      c.lost += slot->lost.load(std::memory_order_relaxed);
      c.delivered += slot->delivered.load(std::memory_order_relaxed);
    }
    stats.channels.push_back(std::move(c));
  });
  return stats;
}

}  // namespace shmbus
