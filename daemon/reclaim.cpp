#include "reclaim.hpp"

#include <chrono>

#include "naming.hpp"
#include "ring.hpp"

namespace shmbus::daemon {

namespace {

// How long a subscription may leave a detach unread before the daemon names it in its log.
constexpr auto kReclaimHoldWarning = std::chrono::seconds(10);

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
  registry_.free_released_rings();
  warn_about_holders(now);
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
