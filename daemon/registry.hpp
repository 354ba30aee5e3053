// The channel registry: channels by id and by name, the arenas their rings, reader tables
// and descriptors live in, the bus directory that tells clients and tools about each
// channel, and the doorbells.
//
// Arenas (layout.hpp): 0 is the control arena (directory and descriptors; only the daemon
// writes it), 1 holds the doorbells, and every other arena belongs to one access class and
// holds either rings or reader tables of that class, so the daemon can hand a client exactly
// the arenas of the classes it may use, read-write or read-only as its role needs.
//
// A channel id stays taken while a reclaimed or quarantined channel's ring waits for its
// readers (and, quarantined, its publishers) to let go (reclaim.cpp decides when a channel
// is idle; the registry frees what is let go), so a reader still looking at a ring never
// sees it reused under it.
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
#include "protocol.hpp"
#include "ring.hpp"
#include "slab_pool.hpp"

namespace shmbus::daemon {

// One channel and its ring. The registry owns it; the counts below are kept by the parts
// that change them (requests for publisher holds, subscriptions for the rest).
struct ChannelState {
  uint32_t id = 0;
  std::string name;
  uint32_t access_class = 0;  // Config::access_class_of(name)
  uint32_t ring_arena = 0;
  Arena::Block ring_block;
  SlabPool::Block readers;                          // the reader table
  SlabPool::Block descriptor_block;                 // in the control arena
  layout::ChannelDescriptor* descriptor = nullptr;  // there; written by the daemon only
  RingRef ring;
  ChannelSettings settings;
  uint32_t publisher_holds = 0;      // open publishing handles, over all clients
  std::set<uint64_t> attached;       // clients with a reader slot here
  uint32_t channel_subscribers = 0;  // subscriptions holding the name
  uint32_t receivers = 0;
  uint64_t last_published = 0;
  Clock::time_point last_active;  // reclaiming: when it was reclaimed
  bool quarantined = false;       // taken out of service as corrupt
  // Kept by Subscriptions: not yet matched against every pattern, so no publisher may learn
  // where its ring is (Requests holds OPEN_CHANNEL until it is).
  bool matching = false;
  // Kept by the registry: whose quota the channel counts against, and how much shared
  // memory it was charged (its ring, reader table and descriptor).
  uint32_t creator_uid = 0;
  uint64_t charged_bytes = 0;

  // Where the ring is and what shape it has, as the protocol tells clients.
  protocol::RingLocation location() const;
  // Makes receivers and channel_subscribers visible to publishers and tools.
  void publish_counts() const;
};

// "ring 64 KiB, max message ... bytes, back_pressure off", for messages.
std::string describe_settings(const ChannelSettings& s);

// Whose quota a new channel counts against ([limits] max_*_per_user).
struct Creator {
  uint32_t uid = 0;
  // False for a ring that replaces a quarantined one: its user did not ask for it, so it
  // is charged even past the user's limits.
  bool within_limits = true;
};

class Registry {
 public:
  // Creates the control and doorbell arenas. `describe_reclaim_holders` names who keeps
  // reclaimed rings (and so their ids) taken, for the error when ids run out.
  Registry(const Config& config, std::string bus, std::shared_ptr<spdlog::logger> log,
           std::function<std::string()> describe_reclaim_holders);
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  struct Found {
    ChannelState& channel;
    bool created;  // new: the caller matches it against the patterns before replying
  };
  // The live channel `name`, created (with `requested` settings, or the configured ones if
  // null, and charged to `creator`) if there is none. Throws Error (kLimit,
  // kInvalidArgument) when it cannot be.
  Found find_or_create(std::string_view name, const ChannelSettings* requested,
                       const Creator& creator);
  ChannelState* find(std::string_view name);
  ChannelState* find_live(uint32_t channel_id);
  // A live, reclaimed or quarantined channel by id, or nullptr if the id is free.
  ChannelState* find_any(uint32_t channel_id);
  // Live channels by id; null where an id is free, reclaimed or quarantined.
  std::span<const std::unique_ptr<ChannelState>> channels() const { return channels_; }
  uint32_t live_channels() const { return live_channels_; }

  // Takes live channel `channel_id` out of the directory and frees its name; its ring and
  // id wait among the reclaimed ones until free_released_rings() finds its readers gone.
  void retire(uint32_t channel_id);
  // The same for a ring found corrupt: its descriptor says so at once, so its publishers
  // open the channel again (a new ring) on their next publish; the old ring is freed once
  // its readers and publishers have let go.
  void quarantine(uint32_t channel_id);
  // Frees the reclaimed and quarantined rings that nobody uses any more; takes back reader
  // slots not given back kReturnDeadline after their channel left service.
  void free_released_rings(Clock::time_point now);
  static constexpr std::chrono::seconds kReturnDeadline{60};
  const std::unordered_map<uint32_t, std::unique_ptr<ChannelState>>& reclaiming() const {
    return reclaiming_;
  }

  struct Doorbell {
    Arena::Block block;
    layout::DoorbellHeader* header;
  };
  // A formatted doorbell in the doorbell arena. Throws Error(kLimit) when none fits.
  Doorbell allocate_doorbell();
  // Keeps a doorbell a client no longer uses for the next doorbell, never for anything else
  // (why: Subscriptions::release).
  void park_doorbell(const Arena::Block& block) { idle_doorbells_.push_back(block); }
  uint32_t doorbell_bits() const { return arena_table_.doorbells().bits; }

  // What each arena holds, for deciding who may map it and how.
  enum class ArenaKind { kControl, kDoorbells, kRings, kReaders };
  struct ArenaInfo {
    ArenaKind kind;
    uint32_t access_class;  // kRings and kReaders only
  };
  uint32_t arena_count() const { return static_cast<uint32_t>(arenas_.size()); }
  const ArenaInfo& arena_info(uint32_t arena_id) const { return arena_info_[arena_id]; }
  Arena& arena(uint32_t arena_id) { return *arenas_[arena_id]; }

  layout::DirectoryHeader& directory() { return *directory_; }
  const ArenaTable& arena_table() const { return arena_table_; }
  uint64_t reserved_bytes() const { return reserved_bytes_; }
  // What the channels a user's clients created hold: live channels, and shared memory
  // until their rings are freed.
  struct UserUsage {
    uint32_t channels = 0;
    uint64_t bytes = 0;
  };
  UserUsage usage_of(uint32_t uid) const;

 private:
  void create_control_arena();
  void create_doorbell_arena();
  // Pages for the rings or reader tables of `access_class`: from one of its arenas with
  // room, else a new arena. Counts them against max_shared_memory.
  std::pair<uint32_t, Arena::Block> take_pages(ArenaKind kind, uint32_t access_class,
                                               uint64_t bytes, std::string_view channel);
  void give_pages(uint32_t arena_id, const Arena::Block& block);
  SlabPool& reader_pool(uint32_t access_class);
  void write_descriptor(ChannelState& ch);
  void free_channel(std::unique_ptr<ChannelState> ch);
  // Throws Error(kLimit) if `creator` may not create channel `name` of `bytes` more.
  void check_user_limits(std::string_view name, const Creator& creator, uint64_t bytes) const;
  // Moves live channel `channel_id` out of the directory and the name index into
  // reclaiming_, its descriptor saying `state`.
  void take_out_of_service(uint32_t channel_id, uint32_t state);

  const Config& config_;  // the daemon's, outlives the registry
  const std::string bus_;
  const std::shared_ptr<spdlog::logger> log_;
  const std::function<std::string()> describe_reclaim_holders_;

  // Owned by the run() thread, like everything below. The arenas' bookkeeping is here, in
  // the daemon's heap; clients only map the arenas they are granted.
  std::vector<std::unique_ptr<Arena>> arenas_;  // index = arena id
  std::vector<ArenaInfo> arena_info_;           // index = arena id
  ArenaTable arena_table_;
  uint64_t reserved_bytes_ = 0;  // ring blocks, reader and descriptor pages, doorbells
  // In the control arena: written by the daemon alone, read by every client and tool.
  layout::DirectoryHeader* directory_ = nullptr;
  std::atomic<uint64_t>* directory_entries_ = nullptr;  // descriptor offsets, by channel id
  std::unique_ptr<SlabPool> descriptors_;
  std::string_view creating_;  // the channel find_or_create is making, for messages
  std::unordered_map<uint32_t, std::unique_ptr<SlabPool>> reader_pools_;  // by access class
  uint64_t doorbell_stride_ = 0;
  std::vector<Arena::Block> idle_doorbells_;  // never returned to the arena (see park_doorbell)

  std::vector<std::unique_ptr<ChannelState>> channels_;  // index = channel id
  std::unordered_map<std::string, uint32_t> channel_ids_;
  std::vector<uint32_t> free_channel_ids_;
  // Reclaimed and quarantined channels whose rings wait for their users to let go, by id.
  std::unordered_map<uint32_t, std::unique_ptr<ChannelState>> reclaiming_;
  uint32_t live_channels_ = 0;
  std::unordered_map<uint32_t, UserUsage> usage_;  // by uid; users holding nothing are erased
};

}  // namespace shmbus::daemon
