#include "registry.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
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

Registry::Registry(const Config& config, std::string bus, std::shared_ptr<spdlog::logger> log,
                   std::function<std::string()> describe_reclaim_holders)
    : config_(config),
      bus_(std::move(bus)),
      log_(std::move(log)),
      describe_reclaim_holders_(std::move(describe_reclaim_holders)) {
  remove_leftovers();
  try {
    create_directory_arena();
  } catch (...) {
    remove_arenas();  // a throwing constructor gets no destructor
    throw;
  }
}

Registry::~Registry() {
  remove_arenas();
}

void Registry::remove_arenas() {
  // Unlink every segment: clients that still map them keep working on their mappings until
  // they let go; the names are free for the next daemon.
  for (auto& arena : arenas_)
    if (arena) Arena::remove(arena->name());
  arenas_.clear();
}

void Registry::remove_leftovers() {
  // We hold the bus lock, so any segment of this bus is a leftover of a daemon that died.
  const std::string prefix = "shmbus." + bus_ + ".";
  uint32_t removed = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) != 0 || name == prefix + "lock") continue;
    const std::string id = name.substr(prefix.size());
    if (id.empty() || id.find_first_not_of("0123456789") != std::string::npos) continue;
    if (Arena::remove(name)) ++removed;
  }
  if (removed > 0)
    log_->warn(
        "removed {} shared-memory segment(s) a previous shmbusd of bus '{}' left behind; "
        "clients still attached to them must reconnect",
        removed, bus_);
}

void Registry::create_directory_arena() {
  const Config& cfg = config_;
  directory_offset_ = layout::kPageSize;
  doorbell_bytes_ = layout::align_up(layout::doorbell_bytes(cfg.max_subscriptions_per_client + 1),
                                     layout::kPageSize);
  const uint64_t dir_bytes = layout::directory_bytes(cfg.max_channels);
  const uint64_t arena0_bytes =
      std::max<uint64_t>(cfg.arena_bytes, layout::kPageSize + dir_bytes + 64 * doorbell_bytes_);
  arenas_.push_back(
      std::make_unique<Arena>(Arena::create(arena_shm_name(bus_, 0), arena0_bytes, 0)));
  Arena& arena0 = *arenas_.back();
  const Arena::Block block = arena0.allocate(dir_bytes);
  directory_offset_ = block.offset;
  if (directory_offset_ != layout::kDirectoryOffset)  // tools find it there without asking
    throw std::logic_error("bus directory is not the first block of arena 0");
  reserved_bytes_ += block.bytes;
  directory_ = arena0.at<DirectoryHeader>(block.offset);
  directory_entries_ = reinterpret_cast<std::atomic<uint64_t>*>(arena0.base() + block.offset +
                                                                sizeof(DirectoryHeader));
  directory_->version = layout::kLayoutVersion;
  directory_->capacity = cfg.max_channels;
  directory_->daemon_pid = getpid();
  directory_->started_unix_ns = unix_now_ns();
  directory_->magic.store(layout::kDirectoryMagic, std::memory_order_release);
  arena_table_.add(arena0);
  // Every doorbell of the bus has one size; publishers check links against it.
  arena_table_.set_doorbells(0, cfg.max_subscriptions_per_client + 1);
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

Registry::Placement Registry::allocate_ring_block(uint64_t bytes, std::string_view name) {
  const Config& cfg = config_;
  if (reserved_bytes_ + bytes > cfg.max_shared_memory)
    throw Error(Errc::kLimit, "cannot create channel " + printable(name) + ": its ring needs " +
                                  human_bytes(bytes) + " and the bus has reserved " +
                                  human_bytes(reserved_bytes_) +
                                  " of max_shared_memory = " + human_bytes(cfg.max_shared_memory) +
                                  "; raise max_shared_memory in [limits] of " + cfg.source +
                                  ", or give such channels smaller rings with a [[channel]] rule");
  if (bytes + layout::kPageSize > cfg.arena_bytes)
    throw Error(Errc::kLimit,
                "cannot create channel " + printable(name) + ": its ring of " + human_bytes(bytes) +
                    " does not fit in an arena of arena_bytes = " + human_bytes(cfg.arena_bytes) +
                    "; raise arena_bytes in [bus] of " + cfg.source);
  auto take = [&](uint32_t id) -> std::optional<Arena::Block> {
    if (arenas_[id]->bytes_free() < bytes) return std::nullopt;
    try {
      return arenas_[id]->allocate(bytes);
    } catch (const Arena::NoFreeBlock&) {
      return std::nullopt;  // fragmented: try the next arena
    } catch (const Arena::ReserveFailed& e) {
      // A full /dev/shm fails every arena alike; another error may be this arena's own.
      if (e.code().value() == ENOSPC)
        throw Error(Errc::kLimit, "cannot create channel " + printable(name) + ": " + e.what());
      return std::nullopt;
    }
  };
  for (uint32_t id = 1; id < arenas_.size(); ++id)
    if (auto block = take(id)) {
      reserved_bytes_ += block->bytes;
      return {id, *block};
    }
  if (arenas_.size() > 255)
    throw Error(Errc::kLimit,
                "all 255 ring arenas are full; raise arena_bytes in [bus] of " + cfg.source);
  const auto id = static_cast<uint32_t>(arenas_.size());
  try {
    arenas_.push_back(
        std::make_unique<Arena>(Arena::create(arena_shm_name(bus_, id), cfg.arena_bytes, id)));
  } catch (const std::exception& e) {
    throw Error(Errc::kLimit, "cannot create channel " + printable(name) + ": " + e.what());
  }
  arena_table_.add(*arenas_.back());
  log_->info("created arena {} ({}) for more channels", arenas_.back()->name(),
             human_bytes(cfg.arena_bytes));
  auto block = take(id);
  if (!block) throw Error(Errc::kLimit, "cannot create channel " + printable(name) + ": no room");
  reserved_bytes_ += block->bytes;
  return {id, *block};
}

Registry::Found Registry::find_or_create(std::string_view name, const ChannelSettings* requested) {
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
  const uint64_t bytes = RingRef::block_bytes(rc);

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
  Placement placed;
  try {
    placed = allocate_ring_block(bytes, name);
  } catch (...) {
    free_channel_ids_.push_back(id);
    throw;
  }
  auto ch = std::make_unique<ChannelState>();
  ch->id = id;
  ch->name = std::string(name);
  ch->arena_id = placed.arena_id;
  ch->block = placed.block;
  ch->settings = settings;
  std::byte* base = arenas_[ch->arena_id]->base() + ch->block.offset;
  // The name goes in before format() publishes the ring's magic, so whoever sees the ring
  // sees its name.
  auto* ring_name = reinterpret_cast<layout::RingName*>(base + layout::kRingNameOffset);
  ring_name->length = static_cast<uint32_t>(name.size());
  std::memcpy(ring_name->bytes, name.data(), name.size());
  try {
    ch->ring = RingRef::format(base, rc);
  } catch (const std::invalid_argument& e) {
    arenas_[ch->arena_id]->release(ch->block);
    reserved_bytes_ -= ch->block.bytes;
    free_channel_ids_.push_back(id);
    throw Error(Errc::kInvalidArgument,
                "cannot create channel " + printable(name) + ": " + e.what());
  }
  ch->last_active = Clock::now();
  directory_entries_[id].store(ShmRef::make(ch->arena_id, ch->block.offset, 0),
                               std::memory_order_release);
  if (directory_->high_water.load(std::memory_order_relaxed) < id + 1)
    directory_->high_water.store(id + 1, std::memory_order_release);
  directory_->generation.fetch_add(1, std::memory_order_release);
  channel_ids_.emplace(ch->name, id);
  channels_[id] = std::move(ch);
  ++live_channels_;
  ChannelState& result = *channels_[id];
  log_->debug("channel {} created (id {}, {}, rule '{}')", printable(name), id,
              describe_settings(settings), settings.rule);
  return {result, true};
}

void Registry::retire(uint32_t channel_id) {
  std::unique_ptr<ChannelState>& owned = channels_[channel_id];
  directory_entries_[channel_id].store(ShmRef::kNone, std::memory_order_release);
  directory_->generation.fetch_add(1, std::memory_order_release);
  channel_ids_.erase(owned->name);
  --live_channels_;
  reclaiming_.emplace(channel_id, std::move(owned));
}

void Registry::free_released_rings() {
  // A reader still reading would see its bytes change under it.
  for (auto it = reclaiming_.begin(); it != reclaiming_.end();) {
    if (reader_slots_in_use(it->second->ring) == 0) {
      free_channel(std::move(it->second));
      it = reclaiming_.erase(it);
    } else {
      ++it;
    }
  }
}

void Registry::free_channel(std::unique_ptr<ChannelState> ch) {
  arenas_[ch->arena_id]->release(ch->block);
  reserved_bytes_ -= ch->block.bytes;
  free_channel_ids_.push_back(ch->id);
}

Registry::Doorbell Registry::allocate_doorbell(uint32_t bits) {
  Arena::Block block;
  if (!idle_doorbells_.empty()) {
    block = idle_doorbells_.back();
    idle_doorbells_.pop_back();
    std::memset(arenas_[0]->base() + block.offset, 0, block.bytes);
  } else {
    if (reserved_bytes_ + doorbell_bytes_ > config_.max_shared_memory)
      throw Error(Errc::kLimit, "shared memory limit reached (max_shared_memory = " +
                                    human_bytes(config_.max_shared_memory) + " in [limits] of " +
                                    config_.source + "); raise it or reclaim channels");
    try {
      block = arenas_[0]->allocate(doorbell_bytes_);
    } catch (const std::system_error& e) {
      throw Error(Errc::kLimit, std::string("no room for a subscription's doorbell: ") + e.what());
    }
    reserved_bytes_ += block.bytes;
  }
  return {block, doorbell::format(arenas_[0]->base() + block.offset, bits)};
}

}  // namespace shmbus::daemon
