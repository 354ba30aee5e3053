// StatsReader: per-channel counters straight from shared memory (the bus directory and each
// ring's header and reader table), read-only: a stats tool can never disturb the bus.
#include "shmbus/stats.hpp"

#include "client.hpp"
#include "directory.hpp"
#include "glob.hpp"

namespace shmbus {

struct StatsReader::State {
  std::unique_ptr<BusMemory> memory;  // before `connection`, which hands it grants
  std::unique_ptr<ControlConnection> connection;

  // Asks for read-only descriptors of every arena this user may read that we do not map yet
  // (new arenas appear as channels are created).
  void map_readable_arenas() {
    protocol::Writer w = connection->next_request(protocol::Type::kMapArenas);
    connection->request(w);
  }
};

StatsReader::StatsReader(std::unique_ptr<State> state) : state_(std::move(state)) {}
StatsReader::StatsReader(StatsReader&&) noexcept = default;
StatsReader& StatsReader::operator=(StatsReader&&) noexcept = default;
StatsReader::~StatsReader() = default;

StatsReader StatsReader::open(const ConnectOptions& options) {
  // An observer: the daemon grants the control arena (names, receiver counts) and, on
  // request, read-only descriptors of the rings it may read. Counters are then read from
  // shared memory, never asked for.
  const Endpoint endpoint = resolve_endpoint(options);
  auto state = std::make_unique<State>();
  state->memory = std::make_unique<BusMemory>(endpoint.bus);
  state->connection = std::make_unique<ControlConnection>(endpoint, protocol::Role::kObserver,
                                                          state->memory->grant_handler());
  open_directory(*state->memory);  // fails now, with a clear message, if there is no bus
  return StatsReader(std::move(state));
}

const std::string& StatsReader::bus_name() const {
  return state_->connection->endpoint().bus;
}

BusStats StatsReader::read(std::string_view pattern) {
  BusStats stats;
  state_->map_readable_arenas();
  const layout::DirectoryHeader* directory = open_directory(*state_->memory);
  stats.daemon_pid = directory->daemon_pid;
  stats.started_unix_ns = directory->started_unix_ns;
  for_each_channel(*state_->memory, [&](const DirectoryEntry& e) {
    if (!pattern.empty() && !glob_match(pattern, e.name)) return;
    const layout::ChannelDescriptor& d = *e.descriptor;
    ChannelStats c;
    c.channel = std::string(e.name);
    c.receivers = d.receivers.load(std::memory_order_relaxed);
    c.ring_bytes = d.capacity;
    c.max_message_bytes = d.max_payload;
    c.back_pressure = (d.flags & layout::kRingBackPressure) != 0;
    if (e.ring) {  // counters of a channel this user may read
      const layout::RingHeader* h = e.ring->header();
      c.published = e.ring->published_relaxed();
      c.payload_bytes = h->payload_bytes.load(std::memory_order_relaxed);
      c.last_publish_unix_ns = h->last_publish_unix_ns.load(std::memory_order_relaxed);
      c.repaired_frames = h->repaired_frames.load(std::memory_order_relaxed);
      const uint32_t slots = e.ring->slot_high_water();
      for (uint32_t i = 0; i < slots; ++i) {
        const layout::ReaderSlot* slot = e.ring->slot(i);
        if (slot->state.load(std::memory_order_acquire) == layout::kSlotFree) continue;
        ++c.subscribers;
        c.lost += slot->lost.load(std::memory_order_relaxed);
        c.delivered += slot->delivered.load(std::memory_order_relaxed);
      }
    }
    stats.channels.push_back(std::move(c));
  });
  return stats;
}

}  // namespace shmbus
