// The channel registry: channels by id and by name, the arenas their rings live in, the bus
// directory that tells clients and tools where each ring is, and the doorbell blocks in
// arena 0.
//
// A channel id stays taken while a reclaimed channel's ring waits for its readers to let
// go (reclaim.cpp decides when a channel is idle; the registry frees what is let go), so a
// reader still looking at a ring never sees it reused under it.
//
// Thread safety: the run() thread only.
#pragma once

#include <spdlog/logger.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "arena.hpp"
#include "clock.hpp"
#include "config.hpp"
#include "layout.hpp"
#include "ring.hpp"

namespace shmbus::daemon {

// One channel and its ring. The registry owns it; the counts below are kept by the parts
// that change them (requests for publisher holds, subscriptions for the rest).
struct ChannelState {
  uint32_t id = 0;
  std::string name;
  uint32_t arena_id = 0;
  Arena::Block block;
  RingRef ring;
  ChannelSettings settings;
  uint32_t publisher_holds = 0;      // open publishing handles, over all clients
  std::set<uint64_t> attached;       // clients with a reader slot here
  uint32_t channel_subscribers = 0;  // subscriptions holding the name
  uint32_t receivers = 0;
  uint64_t last_published = 0;
  Clock::time_point last_active;  // reclaiming: when it was reclaimed
};

// "ring 64 KiB, max message ... bytes, back_pressure off", for messages.
std::string describe_settings(const ChannelSettings& s);

class Registry {
 public:
  // Removes the shared memory a previous daemon of `bus` left, then creates arena 0 with
  // the bus directory. REQUIRES: the caller holds the bus lock, which makes any segment of
  // the bus a leftover. `describe_reclaim_holders` names who keeps reclaimed rings (and so
  // their ids) taken, for the error when ids run out.
  Registry(const Config& config, std::string bus, std::shared_ptr<spdlog::logger> log,
           std::function<std::string()> describe_reclaim_holders);
  ~Registry();  // unlinks every arena: clients that map one keep it until they let go
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  struct Found {
    ChannelState& channel;
    bool created;  // new: the caller matches it against the patterns before replying
  };
  // The live channel `name`, created (with `requested` settings, or the configured ones if
  // null) if there is none. Throws Error (kLimit, kInvalidArgument) when it cannot be.
  Found find_or_create(std::string_view name, const ChannelSettings* requested);
  ChannelState* find(std::string_view name);
  ChannelState* find_live(uint32_t channel_id);
  // A live or reclaimed channel by id, or nullptr if the id is free.
  ChannelState* find_any(uint32_t channel_id);
  // Live channels by id; null where an id is free or reclaimed.
  std::span<const std::unique_ptr<ChannelState>> channels() const { return channels_; }
  uint32_t live_channels() const { return live_channels_; }

  // Takes live channel `channel_id` out of the directory and frees its name; its ring and
  // id wait among the reclaimed ones until free_released_rings() finds its readers gone.
  void retire(uint32_t channel_id);
  // Frees the reclaimed rings whose readers have all let go.
  void free_released_rings();
  const std::unordered_map<uint32_t, std::unique_ptr<ChannelState>>& reclaiming() const {
    return reclaiming_;
  }

  struct Doorbell {
    Arena::Block block;
    layout::DoorbellHeader* header;
  };
  // A formatted doorbell of `bits` bits in arena 0. Throws Error(kLimit) when none fits.
  Doorbell allocate_doorbell(uint32_t bits);
  // Keeps a doorbell a client no longer uses for the next doorbell, never for a ring (why:
  // Subscriptions::release).
  void park_doorbell(const Arena::Block& block) { idle_doorbells_.push_back(block); }

  layout::DirectoryHeader& directory() { return *directory_; }
  uint64_t directory_offset() const { return directory_offset_; }
  const ArenaTable& arena_table() const { return arena_table_; }
  uint64_t reserved_bytes() const { return reserved_bytes_; }

 private:
  struct Placement {
    uint32_t arena_id;
    Arena::Block block;
  };
  void remove_leftovers();
  void remove_arenas();
  void create_directory_arena();
  Placement allocate_ring_block(uint64_t bytes, std::string_view name);
  void free_channel(std::unique_ptr<ChannelState> ch);

  const Config& config_;  // the daemon's, outlives the registry
  const std::string bus_;
  const std::shared_ptr<spdlog::logger> log_;
  const std::function<std::string()> describe_reclaim_holders_;

  // Owned by the run() thread, like everything below. The arenas' bookkeeping is here, in
  // the daemon's heap; clients only map the arenas.
  std::vector<std::unique_ptr<Arena>> arenas_;  // index = arena id; 0 holds directory+doorbells
  ArenaTable arena_table_;
  uint64_t reserved_bytes_ = 0;  // ring and doorbell blocks allocated
  // In arena 0: written by the daemon alone, read by every client and tool of the bus.
  layout::DirectoryHeader* directory_ = nullptr;
  std::atomic<uint64_t>* directory_entries_ = nullptr;
  uint64_t directory_offset_ = 0;
  uint64_t doorbell_bytes_ = 0;
  std::vector<Arena::Block> idle_doorbells_;  // never returned to the arena (see park_doorbell)

  std::vector<std::unique_ptr<ChannelState>> channels_;  // index = channel id
  std::unordered_map<std::string, uint32_t> channel_ids_;
  std::vector<uint32_t> free_channel_ids_;
  // Reclaimed channels whose rings wait for their reader slots to be freed, by id.
  std::unordered_map<uint32_t, std::unique_ptr<ChannelState>> reclaiming_;
  uint32_t live_channels_ = 0;
};

}  // namespace shmbus::daemon
