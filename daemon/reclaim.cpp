#include "reclaim.hpp"

#include <algorithm>
#include <chrono>

#include "naming.hpp"
#include "ring.hpp"
#include "shmbus/error.hpp"

namespace shmbus::daemon {

namespace {

// How long a subscription may leave a detach unread before the daemon names it in its log.
constexpr auto kReclaimHoldWarning = std::chrono::seconds(10);
// Rings checked per tick for corruption that shows in constant time (two header lines
// each): 100,000 channels are all looked at within 25 s, for ~1 ms of the event loop a tick.
constexpr uint32_t kHealthChecksPerTick = 4096;
// A reported ring is walked (up to a few laps of frames) at most this often.
constexpr auto kWalkEvery = std::chrono::seconds(1);

}  // namespace

Reclaimer::Reclaimer(const Config& config, std::shared_ptr<spdlog::logger> log, Registry& registry,
                     Connections& connections, Subscriptions& subscriptions)
    : config_(config),
      log_(std::move(log)),
      registry_(registry),
      connections_(connections),
      subscriptions_(subscriptions) {}

void Reclaimer::on_tick(Clock::time_point now) {
  const auto ttl = config_.idle_ttl;
  for (const auto& owned : registry_.channels()) {
    if (!owned) continue;
    ChannelState& ch = *owned;
    const uint64_t published = ch.ring.published_relaxed();
    if (published != ch.last_published || ch.publisher_holds > 0 || ch.channel_subscribers > 0) {
      ch.last_published = published;
      ch.last_active = now;
      continue;
    }
    if (ttl.count() == 0 || now - ch.last_active < ttl) continue;
    // Idle: nobody publishes or holds it by name. Pattern subscribers let go of it (they
    // receive it again, from its first message, if it is ever created anew).
    subscriptions_.detach_all(ch);
    registry_.retire(ch.id);
    log_->debug("channel {} idle for {} s: reclaiming", printable(ch.name), ttl.count());
    ch.last_active = now;
  }
  check_health();
  subscriptions_.take_back_overdue_slots(now);
  registry_.free_released_rings(now);
  warn_about_holders(now);
  std::erase_if(last_walk_, [&](const auto& entry) { return now - entry.second > kWalkEvery; });
}

void Reclaimer::check_health() {
  // By index, asking the registry each time: a quarantine creates the channel's new ring,
  // which may grow the registry's table under a view taken before the loop.
  for (uint32_t checked = 0; checked < kHealthChecksPerTick; ++checked) {
    const size_t count = registry_.channels().size();
    if (checked >= count) return;
    if (health_cursor_ >= count) health_cursor_ = 0;
    ChannelState* ch = registry_.channels()[health_cursor_++].get();
    if (ch == nullptr) continue;
    if (!ch->ring.header_matches_geometry())
      quarantine(*ch, "its configuration line was overwritten");
    else if (!ch->ring.claim_plausible())
      quarantine(*ch, "its claim position and retire frontier contradict each other");
  }
}

void Reclaimer::check_reported(ChannelState& ch, const std::string& reporter) {
  const auto now = Clock::now();
  auto [it, fresh] = last_walk_.emplace(ch.id, now);
  if (!fresh && now - it->second < kWalkEvery) return;
  it->second = now;
  const RingInspection inspection = inspect_ring(ch.ring);
  if (inspection.corrupt) quarantine(ch, inspection.problem + " (reported by " + reporter + ")");
}

void Reclaimer::quarantine(ChannelState& ch, const std::string& why) {
  const std::string name = ch.name;
  const uint32_t creator_uid = ch.creator_uid;
  std::vector<uint64_t> by_name;  // subscribers that hold the channel itself
  bool by_pattern = false;        // a subscriber reads it through a pattern
  for (uint64_t client_id : ch.attached) {
    const Client* c = connections_.find(client_id);
    if (c == nullptr) continue;
    if (c->channels.count(name)) by_name.push_back(client_id);
    if (auto a = c->attached.find(ch.id); a != c->attached.end() && !a->second.patterns.empty())
      by_pattern = true;
  }
  log_->warn(
      "channel {}: quarantined its ring: {}; {} subscriber(s) and {} publisher handle(s) "
      "move to a new ring, the rest of the bus is unaffected",
      printable(name), why, ch.attached.size(), ch.publisher_holds);
  subscriptions_.detach_all(ch);
  registry_.quarantine(ch.id);
  // The channel goes on, in a new ring, for those who hold it by name or by a pattern
  // (known from their slots: no glob match over every pattern here); publishers find it when
  // they open the channel again.
  if (by_name.empty() && !by_pattern) return;
  try {
    // Charged to the user who created the channel, who did not ask for a second ring.
    const Registry::Found fresh =
        registry_.find_or_create(name, nullptr, Creator{creator_uid, false});
    if (fresh.created) subscriptions_.match_new_channel(fresh.channel);
    for (uint64_t client_id : by_name)
      if (Client* c = connections_.find(client_id))
        subscriptions_.reattach_by_name(*c, fresh.channel);
  } catch (const Error& e) {
    log_->warn("channel {}: no new ring for its subscribers: {}", printable(name), e.what());
  }
}

std::unordered_map<uint64_t, uint32_t> Reclaimer::holders(
    Clock::time_point reclaimed_before) const {
  std::unordered_map<uint64_t, uint32_t> held;  // client id -> reclaimed rings it holds
  for (const auto& [id, ch] : registry_.reclaiming()) {
    if (ch->last_active > reclaimed_before) continue;
    const uint32_t slots = ch->ring.slot_high_water();
    for (uint32_t i = 0; i < slots; ++i) {
      const layout::ReaderSlot* s = ch->ring.slot(i);
      if (s->state.load(std::memory_order_acquire) != layout::kSlotFree)
        ++held[s->owner.load(std::memory_order_relaxed)];
    }
  }
  return held;
}

std::string Reclaimer::describe_holders(Clock::time_point reclaimed_before) const {
  std::string text;
  for (const auto& [owner, count] : holders(reclaimed_before)) {
    if (!text.empty()) text += "; ";
    text += connections_.describe_client(owner) + " holds " + std::to_string(count);
  }
  return text;
}

void Reclaimer::warn_about_holders(Clock::time_point now) {
  // A subscription frees its slot in a reclaimed ring when it next reads (a detach event
  // tells it to). One that never reads holds the ring - its memory and its channel id -
  // until its process exits: the ring cannot be reused under a reader that may still look.
  // Name such clients once, so an operator can find the stuck process.
  const auto held = holders(now - kReclaimHoldWarning);
  for (const auto& [id, client] : connections_.clients()) {
    Client& c = *client;
    auto it = held.find(id);
    if (it == held.end()) {
      c.warned_holding = false;
      continue;
    }
    if (c.warned_holding) continue;
    c.warned_holding = true;
    log_->warn(
        "{} has not read its subscription for {} s and holds {} reclaimed channel(s): "
        "their memory and ids are freed when it reads or exits",
        connections_.describe_client(id), kReclaimHoldWarning.count(), it->second);
  }
}

}  // namespace shmbus::daemon
