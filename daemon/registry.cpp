#include "registry.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <system_error>

#include "doorbell.hpp"
#include "naming.hpp"
#include "shmbus/error.hpp"

namespace shmbus::daemon {

using layout::DirectoryHeader;
using layout::ShmRef;

std::string describe_settings(const ChannelSettings& s) {
  return "ring " + human_bytes(s.ring_bytes) + ", max message " +
         std::to_string(s.max_message_bytes == 0 ? RingRef::largest_payload(s.ring_bytes)
                                                 : s.max_message_bytes) +
         " bytes, back_pressure " + (s.back_pressure ? "on" : "off");
}

protocol::RingLocation ChannelState::location() const {
  protocol::RingLocation l;
  l.channel_id = id;
  l.descriptor = descriptor_block.offset;
  l.ring_arena = ring_arena;
  l.ring_offset = ring_block.offset;
  l.ring_bytes = ring_block.bytes;
  l.readers_arena = readers.arena_id;
  l.readers_offset = readers.offset;
  l.readers_bytes = readers.bytes;
  l.capacity = ring.capacity();
  l.max_payload = ring.max_payload();
  l.flags = ring.back_pressure() ? layout::kRingBackPressure : 0;
  l.reader_capacity = ring.reader_capacity();
  return l;
}

void ChannelState::publish_counts() const {
  // Relaxed: a count read by a publisher is a snapshot either way (Redis counts at PUBLISH).
  descriptor->receivers.store(receivers, std::memory_order_relaxed);
  descriptor->channel_subscribers.store(channel_subscribers, std::memory_order_relaxed);
}

Registry::Registry(const Config& config, std::string bus, std::shared_ptr<spdlog::logger> log,
                   std::function<std::string()> describe_reclaim_holders)
    : config_(config),
      bus_(std::move(bus)),
      log_(std::move(log)),
      describe_reclaim_holders_(std::move(describe_reclaim_holders)) {
  create_control_arena();
  create_doorbell_arena();
}

namespace {

std::string arena_label(const std::string& bus, uint32_t arena_id) {
  return "shmbus." + bus + "." + std::to_string(arena_id);
}

}  // namespace

void Registry::create_control_arena() {
  const Config& cfg = config_;
  // Room for the directory and a descriptor with the longest name for every channel the
  // bus may hold: the segment is sparse, so this is address space, not memory.
  const uint64_t dir_bytes = layout::directory_bytes(cfg.max_channels);
  const uint64_t bytes =
      layout::kPageSize + dir_bytes +
      uint64_t{cfg.max_channels} * layout::descriptor_bytes(layout::kMaxChannelName);
  arenas_.push_back(std::make_unique<Arena>(
      Arena::create(arena_label(bus_, layout::kControlArena), bytes, layout::kControlArena)));
  arena_info_.push_back({ArenaKind::kControl, 0});
  Arena& control = *arenas_.back();
  const Arena::Block block = control.allocate(dir_bytes);
  if (block.offset != layout::kDirectoryOffset)  // tools find it there without asking
    throw std::logic_error("bus directory is not the first block of the control arena");
  reserved_bytes_ += block.bytes;
  directory_ = control.at<DirectoryHeader>(block.offset);
  directory_entries_ = reinterpret_cast<std::atomic<uint64_t>*>(control.base() + block.offset +
                                                                sizeof(DirectoryHeader));
  directory_->version = layout::kLayoutVersion;
  directory_->capacity = cfg.max_channels;
  directory_->daemon_pid = getpid();
  directory_->doorbell_bits = cfg.max_subscriptions_per_client + 1;
  directory_->started_unix_ns = unix_now_ns();
  directory_->magic.store(layout::kDirectoryMagic, std::memory_order_release);
  arena_table_.add(control);
  descriptors_ = std::make_unique<SlabPool>(SlabPool::Source{
      [this](uint64_t want) {
        Arena& arena = *arenas_[layout::kControlArena];
        try {
          const Arena::Block pages = arena.allocate(want);
          reserved_bytes_ += pages.bytes;
          return std::pair{layout::kControlArena, pages};
        } catch (const std::system_error& e) {
          throw Error(Errc::kLimit, std::string("no room for a channel descriptor: ") + e.what());
        }
      },
      [this](uint32_t id, const Arena::Block& pages) {
        arenas_[id]->release(pages);
        reserved_bytes_ -= pages.bytes;
      },
      [this](uint32_t id) { return arenas_[id]->base(); }});
}

void Registry::create_doorbell_arena() {
  const uint32_t bits = config_.max_subscriptions_per_client + 1;
  doorbell_stride_ = layout::doorbell_stride(bits);
  // Doorbells outlive their connections until the client's process exits (a departing
  // client's), so allow twice max_clients; sparse, like every arena.
  const uint64_t bytes = layout::kPageSize + 2 * uint64_t{config_.max_clients} * doorbell_stride_;
  arenas_.push_back(std::make_unique<Arena>(
      Arena::create(arena_label(bus_, layout::kDoorbellArena), bytes, layout::kDoorbellArena)));
  arena_info_.push_back({ArenaKind::kDoorbells, 0});
  arena_table_.add(*arenas_.back());
  // Every doorbell of the bus has one size and sits at one stride; publishers check links
  // against both.
  arena_table_.set_doorbells(layout::kDoorbellArena, bits);
}

ChannelState* Registry::find(std::string_view name) {
  auto it = channel_ids_.find(std::string(name));
  return it == channel_ids_.end() ? nullptr : channels_[it->second].get();
}

ChannelState* Registry::find_live(uint32_t channel_id) {
  return channel_id < channels_.size() ? channels_[channel_id].get() : nullptr;
}

ChannelState* Registry::find_any(uint32_t channel_id) {
  if (ChannelState* live = find_live(channel_id)) return live;
  auto it = reclaiming_.find(channel_id);
  return it == reclaiming_.end() ? nullptr : it->second.get();
}

std::pair<uint32_t, Arena::Block> Registry::take_pages(ArenaKind kind, uint32_t access_class,
                                                       uint64_t bytes, std::string_view channel) {
  const Config& cfg = config_;
  const char* what = kind == ArenaKind::kRings ? "ring" : "reader table";
  if (reserved_bytes_ + bytes > cfg.max_shared_memory)
    throw Error(Errc::kLimit, "cannot create channel " + printable(channel) + ": its " + what +
                                  " needs " + human_bytes(bytes) + " and the bus has reserved " +
                                  human_bytes(reserved_bytes_) +
                                  " of max_shared_memory = " + human_bytes(cfg.max_shared_memory) +
                                  "; raise max_shared_memory in [limits] of " + cfg.source +
                                  ", or give such channels smaller rings with a [[channel]] rule");
  if (bytes + layout::kPageSize > cfg.arena_bytes)
    throw Error(Errc::kLimit,
                "cannot create channel " + printable(channel) + ": its " + what + " of " +
                    human_bytes(bytes) + " does not fit in an arena of arena_bytes = " +
                    human_bytes(cfg.arena_bytes) + "; raise arena_bytes in [bus] of " + cfg.source);
  auto take = [&](uint32_t id) -> std::optional<Arena::Block> {
    if (arenas_[id]->bytes_free() < bytes) return std::nullopt;
    try {
      return arenas_[id]->allocate(bytes);
    } catch (const Arena::NoFreeBlock&) {
      return std::nullopt;  // fragmented: try the next arena
    } catch (const Arena::ReserveFailed& e) {
      // The system would not back the pages: every arena fails alike.
      throw Error(Errc::kLimit, "cannot create channel " + printable(channel) + ": " + e.what());
    }
  };
  for (uint32_t id = layout::kFirstClassArena; id < arenas_.size(); ++id) {
    if (arena_info_[id].kind != kind || arena_info_[id].access_class != access_class) continue;
    if (auto block = take(id)) {
      reserved_bytes_ += block->bytes;
      return {id, *block};
    }
  }
  if (arenas_.size() > 255)
    throw Error(Errc::kLimit,
                "all 254 ring and reader arenas are full; raise arena_bytes in "
                "[bus] of " +
                    cfg.source);
  const auto id = static_cast<uint32_t>(arenas_.size());
  try {
    arenas_.push_back(
        std::make_unique<Arena>(Arena::create(arena_label(bus_, id), cfg.arena_bytes, id)));
  } catch (const std::exception& e) {
    throw Error(Errc::kLimit, "cannot create channel " + printable(channel) + ": " + e.what());
  }
  arena_info_.push_back({kind, access_class});
  arena_table_.add(*arenas_.back());
  log_->info("created arena {} ({}) for more {}s of access class {}", arenas_.back()->name(),
             human_bytes(cfg.arena_bytes), what, access_class);
  auto block = take(id);
  if (!block)
    throw Error(Errc::kLimit, "cannot create channel " + printable(channel) + ": no room");
  reserved_bytes_ += block->bytes;
  return {id, *block};
}

void Registry::give_pages(uint32_t arena_id, const Arena::Block& block) {
  arenas_[arena_id]->release(block);
  reserved_bytes_ -= block.bytes;
}

SlabPool& Registry::reader_pool(uint32_t access_class) {
  std::unique_ptr<SlabPool>& pool = reader_pools_[access_class];
  if (!pool) {
    pool = std::make_unique<SlabPool>(
        SlabPool::Source{[this, access_class](uint64_t bytes) {
                           return take_pages(ArenaKind::kReaders, access_class, bytes, creating_);
                         },
                         [this](uint32_t id, const Arena::Block& pages) { give_pages(id, pages); },
                         [this](uint32_t id) { return arenas_[id]->base(); }});
  }
  return *pool;
}

Registry::Found Registry::find_or_create(std::string_view name, const ChannelSettings* requested,
                                         const Creator& creator) {
  if (ChannelState* existing = find(name)) return {*existing, false};
  validate_channel_name(name);
  const Config& cfg = config_;
  if (live_channels_ >= cfg.max_channels)
    throw Error(Errc::kLimit, "cannot create channel " + printable(name) + ": the bus has " +
                                  std::to_string(live_channels_) +
                                  " channels, max_channels = " + std::to_string(cfg.max_channels) +
                                  " in [limits] of " + cfg.source +
                                  "; raise it, or lower idle_ttl_seconds so idle ones go sooner");
  const ChannelSettings settings = requested ? *requested : cfg.settings_for(name);
  RingConfig rc;
  rc.capacity = settings.ring_bytes;
  rc.max_payload = settings.max_message_bytes;
  rc.back_pressure = settings.back_pressure;
  rc.reader_capacity = settings.max_subscribers;
  try {
    (void)RingRef::geometry_of(rc);
  } catch (const std::invalid_argument& e) {
    throw Error(Errc::kInvalidArgument,
                "cannot create channel " + printable(name) + ": " + e.what());
  }

  if (creator.within_limits)
    check_user_limits(name, creator,
                      RingRef::block_bytes(rc) + RingRef::readers_bytes(rc) +
                          layout::descriptor_bytes(static_cast<uint32_t>(name.size())));

  uint32_t id;
  if (!free_channel_ids_.empty()) {
    id = free_channel_ids_.back();
    free_channel_ids_.pop_back();
  } else {
    id = static_cast<uint32_t>(channels_.size());
    if (id >= cfg.max_channels)
      throw Error(Errc::kLimit, "cannot create channel " + printable(name) + ": " +
                                    std::to_string(reclaiming_.size()) +
                                    " reclaimed channels still wait for subscribers to let go (" +
                                    describe_reclaim_holders_() +
                                    "), and max_channels = " + std::to_string(cfg.max_channels) +
                                    " in [limits] of " + cfg.source + " is reached");
    channels_.emplace_back();
  }
  rc.channel_id = id;
  auto ch = std::make_unique<ChannelState>();
  ch->id = id;
  ch->name = std::string(name);
  ch->access_class = cfg.access_class_of(name);
  ch->settings = settings;
  // Each allocation below is undone if a later one fails, and the id goes back.
  bool have_ring = false, have_readers = false;
  try {
    creating_ = name;  // for the messages of reader_pool's take_pages
    const auto [ring_arena, ring_block] =
        take_pages(ArenaKind::kRings, ch->access_class, RingRef::block_bytes(rc), name);
    ch->ring_arena = ring_arena;
    ch->ring_block = ring_block;
    have_ring = true;
    ch->readers = reader_pool(ch->access_class).allocate(RingRef::readers_bytes(rc));
    have_readers = true;
    ch->descriptor_block =
        descriptors_->allocate(layout::descriptor_bytes(static_cast<uint32_t>(name.size())));
  } catch (...) {
    if (have_readers) reader_pool(ch->access_class).release(ch->readers);
    if (have_ring) give_pages(ch->ring_arena, ch->ring_block);
    free_channel_ids_.push_back(id);
    throw;
  }
  ch->creator_uid = creator.uid;
  ch->charged_bytes = ch->ring_block.bytes + ch->readers.bytes + ch->descriptor_block.bytes;
  UserUsage& usage = usage_[creator.uid];
  ++usage.channels;
  usage.bytes += ch->charged_bytes;
  ch->ring = RingRef::format(arenas_[ch->ring_arena]->base() + ch->ring_block.offset,
                             arenas_[ch->readers.arena_id]->base() + ch->readers.offset, rc);
  write_descriptor(*ch);
  ch->last_active = Clock::now();
  // Release: a client that reads the entry (acquire) sees the descriptor complete.
  directory_entries_[id].store(ch->descriptor_block.offset, std::memory_order_release);
  if (directory_->high_water.load(std::memory_order_relaxed) < id + 1)
    directory_->high_water.store(id + 1, std::memory_order_release);
  directory_->generation.fetch_add(1, std::memory_order_release);
  channel_ids_.emplace(ch->name, id);
  channels_[id] = std::move(ch);
  ++live_channels_;
  ChannelState& result = *channels_[id];
  log_->debug("channel {} created (id {}, {}, rule '{}', access class {})", printable(name), id,
              describe_settings(settings), settings.rule, result.access_class);
  return {result, true};
}

void Registry::write_descriptor(ChannelState& ch) {
  auto* d =
      arenas_[layout::kControlArena]->at<layout::ChannelDescriptor>(ch.descriptor_block.offset);
  d->channel_id = ch.id;
  d->ring_ref = ShmRef::make(ch.ring_arena, ch.ring_block.offset, 0);
  d->readers_ref = ShmRef::make(ch.readers.arena_id, ch.readers.offset, 0);
  d->capacity = ch.ring.capacity();
  d->max_payload = ch.ring.max_payload();
  d->flags = ch.ring.back_pressure() ? layout::kRingBackPressure : 0;
  d->reader_capacity = ch.ring.reader_capacity();
  d->access_class = ch.access_class;
  d->name_length = static_cast<uint32_t>(ch.name.size());
  std::memcpy(reinterpret_cast<std::byte*>(d) + sizeof(layout::ChannelDescriptor), ch.name.data(),
              ch.name.size());
  d->state.store(layout::kChannelLive, std::memory_order_relaxed);
  d->receivers.store(0, std::memory_order_relaxed);
  d->channel_subscribers.store(0, std::memory_order_relaxed);
  // Release, last: whoever sees the magic sees every field above.
  d->magic.store(layout::kDescriptorMagic, std::memory_order_release);
  ch.descriptor = d;
}

void Registry::take_out_of_service(uint32_t channel_id, uint32_t state) {
  std::unique_ptr<ChannelState>& owned = channels_[channel_id];
  directory_entries_[channel_id].store(0, std::memory_order_release);
  directory_->generation.fetch_add(1, std::memory_order_release);
  // Release: a publisher that sees the state (acquire or not, it reopens) and asks again
  // finds the name free for a new ring.
  owned->descriptor->state.store(state, std::memory_order_release);
  channel_ids_.erase(owned->name);
  --live_channels_;
  --usage_[owned->creator_uid].channels;  // its memory counts until free_channel
  reclaiming_.emplace(channel_id, std::move(owned));
}

void Registry::retire(uint32_t channel_id) {
  take_out_of_service(channel_id, layout::kChannelReclaimed);
}

void Registry::quarantine(uint32_t channel_id) {
  channels_[channel_id]->quarantined = true;
  channels_[channel_id]->last_active = Clock::now();
  take_out_of_service(channel_id, layout::kChannelQuarantined);
}

void Registry::free_released_rings(Clock::time_point now) {
  // A reader still reading would see its bytes change under it, and a publisher of a
  // quarantined ring still writing would write into whatever reused them: a ring is freed
  // once its publishers have closed it and its readers have given their slots back. A
  // reader that has not given its slot back kReturnDeadline after it was told to (it does
  // when it next reads) loses it: the slot table is in memory any subscriber of the class
  // may write, and a slot held for ever must not keep the ring - and its id - for ever.
  for (auto it = reclaiming_.begin(); it != reclaiming_.end();) {
    ChannelState& ch = *it->second;
    if (ch.publisher_holds == 0 && reader_slots_in_use(ch.ring) != 0 &&
        now - ch.last_active > kReturnDeadline) {
      const uint32_t taken = release_all_reader_slots(ch.ring);
      log_->warn(
          "channel {}: took back {} reader slot(s) not given back {} s after the channel "
          "was {}",
          printable(ch.name), taken, kReturnDeadline.count(),
          ch.quarantined ? "quarantined" : "reclaimed");
    }
    if (ch.publisher_holds == 0 && reader_slots_in_use(ch.ring) == 0) {
      free_channel(std::move(it->second));
      it = reclaiming_.erase(it);
    } else {
      ++it;
    }
  }
}

void Registry::check_user_limits(std::string_view name, const Creator& creator,
                                 uint64_t bytes) const {
  const Config& cfg = config_;
  const UserUsage usage = usage_of(creator.uid);
  const std::string user = "user " + std::to_string(creator.uid);
  if (cfg.max_channels_per_user != 0 && usage.channels >= cfg.max_channels_per_user)
    throw Error(Errc::kLimit,
                "cannot create channel " + printable(name) + ": " + user + " has created " +
                    std::to_string(usage.channels) +
                    " channels that still exist, max_channels_per_user = " +
                    std::to_string(cfg.max_channels_per_user) + " in [limits] of " + cfg.source +
                    "; raise it, or let idle channels be reclaimed (idle_ttl_seconds)");
  if (cfg.max_shared_memory_per_user != 0 && usage.bytes + bytes > cfg.max_shared_memory_per_user)
    throw Error(Errc::kLimit,
                "cannot create channel " + printable(name) + ": it needs " + human_bytes(bytes) +
                    " and the channels " + user + " created hold " + human_bytes(usage.bytes) +
                    " of max_shared_memory_per_user = " +
                    human_bytes(cfg.max_shared_memory_per_user) + " in [limits] of " + cfg.source +
                    "; raise it, or give such channels smaller rings with a [[channel]] rule");
}

Registry::UserUsage Registry::usage_of(uint32_t uid) const {
  auto it = usage_.find(uid);
  return it == usage_.end() ? UserUsage{} : it->second;
}

void Registry::free_channel(std::unique_ptr<ChannelState> ch) {
  auto usage = usage_.find(ch->creator_uid);
  if (usage != usage_.end()) {
    usage->second.bytes -= ch->charged_bytes;
    if (usage->second.channels == 0 && usage->second.bytes == 0) usage_.erase(usage);
  }
  give_pages(ch->ring_arena, ch->ring_block);
  reader_pool(ch->access_class).release(ch->readers);
  ch->descriptor->magic.store(0, std::memory_order_release);
  descriptors_->release(ch->descriptor_block);
  free_channel_ids_.push_back(ch->id);
}

Registry::Doorbell Registry::allocate_doorbell() {
  Arena& arena = *arenas_[layout::kDoorbellArena];
  Arena::Block block;
  if (!idle_doorbells_.empty()) {
    block = idle_doorbells_.back();
    idle_doorbells_.pop_back();
    std::memset(arena.base() + block.offset, 0, block.bytes);
  } else {
    if (reserved_bytes_ + doorbell_stride_ > config_.max_shared_memory)
      throw Error(Errc::kLimit, "shared memory limit reached (max_shared_memory = " +
                                    human_bytes(config_.max_shared_memory) + " in [limits] of " +
                                    config_.source + "); raise it or reclaim channels");
    try {
      block = arena.allocate(doorbell_stride_);
    } catch (const Arena::NoFreeBlock&) {
      throw Error(Errc::kLimit, "no room for another subscription's doorbell: " +
                                    std::to_string(arena.bytes_allocated() / doorbell_stride_) +
                                    " subscriptions exist or wait for their processes to exit "
                                    "(twice max_clients = " +
                                    std::to_string(config_.max_clients) + " in [limits] of " +
                                    config_.source + "); raise max_clients");
    } catch (const std::system_error& e) {
      throw Error(Errc::kLimit,
                  std::string("no memory for a subscription's doorbell: ") + e.what());
    }
    reserved_bytes_ += block.bytes;
  }
  return {block, doorbell::format(arena.base() + block.offset, doorbell_bits())};
}

}  // namespace shmbus::daemon
