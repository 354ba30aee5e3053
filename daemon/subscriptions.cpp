#include "subscriptions.hpp"

#include <algorithm>
#include <iterator>

#include "glob.hpp"
#include "naming.hpp"
#include "ring.hpp"

namespace shmbus::daemon {

using namespace protocol;
using layout::ShmRef;

namespace {

constexpr uint64_t kAtLatest = ~uint64_t{0};  // attach(): register the slot at the newest message

protocol::Attachment describe(const ChannelState& ch, const Attachment& a, uint64_t start_position,
                              uint64_t start_sequence) {
  return protocol::Attachment{ch.location(), ch.name,        a.slot,
                              a.bit,         start_position, start_sequence};
}

uint64_t slot_position(const ChannelState& ch, const Attachment& a) {
  return ch.ring.slot(a.slot)->position.load(std::memory_order_relaxed);
}

void set_receivers(ChannelState& ch, int32_t delta) {
  ch.receivers = static_cast<uint32_t>(static_cast<int64_t>(ch.receivers) + delta);
  ch.publish_counts();
}

}  // namespace

Subscriptions::Subscriptions(const Config& config, std::shared_ptr<spdlog::logger> log,
                             Registry& registry, Connections& connections, Access& access,
                             Turn& turn)
    : config_(config),
      log_(std::move(log)),
      registry_(registry),
      connections_(connections),
      access_(access),
      turn_(turn) {}

protocol::Attachment Subscriptions::subscribe_channel(Client& c, ChannelState& ch,
                                                      StartKind start) {
  // Earliest / after-sequence starts read history: the slot sits at the oldest frame
  // so a back-pressure ring keeps what the client is about to read.
  const uint64_t slot_start = start == StartKind::kLatest ? kAtLatest : ch.ring.retire_frontier();
  const Attached attached = attach(c, ch, slot_start);
  Attachment& a = attached.attachment;
  a.by_name = true;
  c.channels.insert(ch.name);
  ++ch.channel_subscribers;
  set_receivers(ch, +1);
  // Added through a pattern before: the client reads it already.
  const uint64_t start_position = !attached.added           ? kKeepReading
                                  : slot_start == kAtLatest ? slot_position(ch, a)
                                                            : slot_start;
  return describe(ch, a, start_position, attached.start_sequence);
}

protocol::Attachment Subscriptions::describe_held(Client& c, const ChannelState& ch) {
  return describe(ch, c.attached[ch.id], kKeepReading, 0);
}

bool Subscriptions::add_pattern(Client& c, const std::string& pattern) {
  if (!c.patterns.insert(pattern).second) return false;
  pattern_index_[pattern].insert(c.id);
  publish_pattern_count();
  return true;
}

bool Subscriptions::attach_existing(Client& c, const std::string& pattern, uint32_t& next_channel,
                                    std::vector<protocol::Attachment>& attached, size_t room_bytes,
                                    std::optional<Error>& error) {
  const auto channels = registry_.channels();
  size_t bytes = 0;
  // Work done since the turn was last asked about: a failed match is charged its steps, an
  // attach counts as spending (it reads the clock).
  size_t unasked_work = 0;
  bool attached_one = false;
  for (bool first = true; next_channel < channels.size(); first = false) {
    if (!first && bytes >= room_bytes) return false;
    if (!first && (attached_one ? turn_.spent() : turn_.spent_after(unasked_work))) return false;
    unasked_work = 0;
    attached_one = false;
    ChannelState* ch = channels[next_channel++].get();
    unasked_work = 1;
    if (ch == nullptr) continue;
    unasked_work = glob_match_work(pattern, ch->name);
    // A pattern receives the channels its subscriber may read, and no others.
    if (!glob_match(pattern, ch->name) || !access_.may_subscribe(c, ch->access_class)) continue;
    attached_one = true;
    try {
      const std::optional<Attached> a = attach_for_pattern(c, *ch, kAtLatest, pattern);
      if (a && a->added) {
        attached.push_back(
            describe(*ch, a->attachment, slot_position(*ch, a->attachment), a->start_sequence));
        bytes += reply_bytes(attached.back());
      }
    } catch (const Error& e) {
      error = e;
    }
  }
  return true;
}

std::optional<Subscriptions::Attached> Subscriptions::attach_for_pattern(
    Client& c, ChannelState& ch, uint64_t start, const std::string& pattern) {
  if (auto it = c.attached.find(ch.id); it != c.attached.end()) {
    std::vector<std::string>& counted = it->second.patterns;
    if (std::find(counted.begin(), counted.end(), pattern) != counted.end()) return std::nullopt;
  }
  const Attached attached = attach(c, ch, start);
  attached.attachment.patterns.push_back(pattern);
  set_receivers(ch, +1);
  return attached;
}

std::optional<uint32_t> Subscriptions::unsubscribe_channel(Client& c, const std::string& name) {
  if (c.channels.erase(name) == 0) return std::nullopt;
  ChannelState* ch = registry_.find(name);
  if (ch == nullptr) return std::nullopt;
  c.attached[ch->id].by_name = false;
  --ch->channel_subscribers;
  set_receivers(*ch, -1);
  ch->last_active = Clock::now();
  if (detach_if_unneeded(c, *ch)) return ch->id;
  return std::nullopt;
}

std::vector<uint32_t> Subscriptions::unsubscribe_patterns(
    Client& c, const std::vector<std::string>& patterns) {
  std::vector<uint32_t> detached;
  std::set<std::string> dropped;
  for (const std::string& pattern : patterns) {
    if (c.patterns.erase(pattern) == 0) continue;
    dropped.insert(pattern);
    auto it = pattern_index_.find(pattern);
    if (it != pattern_index_.end()) {
      it->second.erase(c.id);
      if (it->second.empty()) pattern_index_.erase(it);
    }
  }
  if (dropped.empty()) return detached;
  publish_pattern_count();
  std::vector<uint32_t> ids;
  for (auto& [channel_id, a] : c.attached) ids.push_back(channel_id);
  for (uint32_t channel_id : ids) {
    ChannelState& ch = *registry_.find_live(channel_id);
    // Only where these patterns were counted (an attach may have failed for one).
    const size_t counted =
        std::erase_if(c.attached[channel_id].patterns,
                      [&](const std::string& pattern) { return dropped.count(pattern) != 0; });
    if (counted == 0) continue;
    set_receivers(ch, -static_cast<int32_t>(counted));
    if (detach_if_unneeded(c, ch)) detached.push_back(channel_id);
  }
  return detached;
}

bool Subscriptions::match_new_channel(ChannelState& ch) {
  // Patterns are resolved here, once per channel, never per message. The slots are
  // registered at position 0 before any publisher learns where the ring is, so a pattern
  // subscriber cannot miss the channel's first message.
  PendingMatch m{ch.id, std::nullopt};
  ch.matching = true;
  if (match_some(m)) return true;
  pending_matches_.push_back(std::move(m));
  return false;
}

void Subscriptions::match_pending() {
  while (!pending_matches_.empty()) {
    if (!match_some(pending_matches_.front())) return;  // the turn is spent
    pending_matches_.pop_front();
    if (turn_.spent()) return;
  }
}

bool Subscriptions::match_some(PendingMatch& m) {
  ChannelState* ch = registry_.find_live(m.channel_id);
  if (ch == nullptr || !ch->matching) return true;  // left service meanwhile
  // By key, not by iterator: patterns come and go between turns. One subscribed after this
  // channel's matching passed its place attaches the channel in its own walk.
  auto it = m.last_pattern ? pattern_index_.upper_bound(*m.last_pattern) : pattern_index_.begin();
  while (it != pattern_index_.end()) {
    const std::string& pattern = it->first;
    const bool matched = glob_match(pattern, ch->name);
    if (matched) attach_pattern_subscribers(*ch, pattern, it->second);
    // The key is copied only when the walk stops: copying each one cost as much as a match.
    const bool spent =
        matched ? turn_.spent() : turn_.spent_after(glob_match_work(pattern, ch->name));
    if (++it != pattern_index_.end() && spent) {
      m.last_pattern = std::prev(it)->first;
      return false;
    }
  }
  ch->matching = false;
  return true;
}

void Subscriptions::attach_pattern_subscribers(ChannelState& ch, const std::string& pattern,
                                               const std::set<uint64_t>& subscribers) {
  for (uint64_t client_id : subscribers) {
    Client* subscriber = connections_.find(client_id);
    if (subscriber == nullptr || subscriber->doomed) continue;
    Client& c = *subscriber;
    if (!access_.may_subscribe(c, ch.access_class)) continue;
    try {
      const std::optional<Attached> attached = attach_for_pattern(c, ch, 0, pattern);
      if (attached && attached->added) {
        Writer w(Type::kAttach, 0);
        describe(ch, attached->attachment, 0, attached->start_sequence).write(w);
        c.event_queued = true;
        connections_.send(c, w);
      }
    } catch (const Error& e) {
      log_->warn("pattern subscriber {} (pid {}, '{}') cannot receive new channel {}: {}", c.id,
                 c.cred.pid, c.name, printable(ch.name), e.what());
    }
  }
}

void Subscriptions::reattach_by_name(Client& c, ChannelState& ch) {
  try {
    const Attached attached = attach(c, ch, 0);
    Attachment& a = attached.attachment;
    if (!a.by_name) {
      a.by_name = true;
      ++ch.channel_subscribers;
      set_receivers(ch, +1);
    }
    if (attached.added) {
      Writer w(Type::kAttach, 0);
      describe(ch, a, 0, attached.start_sequence).write(w);
      c.event_queued = true;
      connections_.send(c, w);
    }
  } catch (const Error& e) {
    log_->warn("subscriber {} (pid {}, '{}') cannot move to the new ring of channel {}: {}", c.id,
               c.cred.pid, c.name, printable(ch.name), e.what());
  }
}

void Subscriptions::detach_all(ChannelState& ch) {
  if (ch.matching) {
    std::erase_if(pending_matches_, [&](const PendingMatch& m) { return m.channel_id == ch.id; });
    ch.matching = false;
  }
  for (uint64_t client_id : std::vector<uint64_t>(ch.attached.begin(), ch.attached.end())) {
    Client* holder = connections_.find(client_id);
    if (holder == nullptr) continue;
    Client& c = *holder;
    auto a = c.attached.find(ch.id);
    if (a == c.attached.end()) continue;
    give_back(c, ch, a);
    Writer w(Type::kDetach, 0);
    w.u32(ch.id);
    c.event_queued = true;
    connections_.send(c, w);
  }
  ch.attached.clear();
}

void Subscriptions::release(Client& c) {
  for (const auto& pattern : c.patterns) {
    auto it = pattern_index_.find(pattern);
    if (it == pattern_index_.end()) continue;
    it->second.erase(c.id);
    if (it->second.empty()) pattern_index_.erase(it);
  }
  publish_pattern_count();
  // Live or being reclaimed: a reclaimed ring is freed only once these slots are.
  for (auto& [channel_id, a] : c.attached) {
    ChannelState* ch = registry_.find_any(channel_id);
    if (ch == nullptr) continue;
    release_reader_slot(ch->ring, a.slot, c.id);
    if (!ch->attached.erase(c.id)) continue;  // already reclaimed: counts are gone with it
    if (a.by_name) --ch->channel_subscribers;
    set_receivers(*ch, -static_cast<int32_t>(a.receivers()));
    ch->last_active = Clock::now();
  }
  for (const Client::ReturnedSlot& r : c.returned_slots)
    if (ChannelState* ch = registry_.find_any(r.channel_id))
      release_reader_slot(ch->ring, r.slot, c.id);
  c.attached.clear();
  c.returned_slots.clear();
  c.channels.clear();
  c.patterns.clear();
  if (c.doorbell_block) {
    // A publisher may still hold this doorbell's address from a link it read just before we
    // cleared it, and set a bit in it later. Doorbell blocks are therefore only ever reused
    // as doorbells, where a stray bit costs one spurious wake-up, never as ring memory.
    registry_.park_doorbell(*c.doorbell_block);
    c.doorbell_block.reset();
    c.doorbell = nullptr;
  }
}

Subscriptions::Attached Subscriptions::attach(Client& c, ChannelState& ch, uint64_t start) {
  if (auto it = c.attached.find(ch.id); it != c.attached.end()) return {it->second, 0, false};
  if (c.doorbell == nullptr)
    throw ProtocolError("subscribe on a connection that asked for no doorbell in HELLO");
  const uint32_t bit = allocate_bit(c, ch);
  SlotClaim claim;
  claim.owner = c.id;
  claim.pid = c.cred.pid;
  claim.gating = ch.ring.back_pressure();
  claim.doorbell_ref = ShmRef::make(layout::kDoorbellArena, c.doorbell_block->offset, bit);
  // A fresh ring starts at 0 with sequence 0; otherwise the caller chose the position and
  // the claim word gives the sequence that goes with the latest position.
  const layout::ClaimWord now = ch.ring.load_claim();
  claim.position = start == kAtLatest ? now.position : start;
  const uint64_t start_sequence = start == kAtLatest ? now.sequence : 0;
  const int32_t slot = claim_reader_slot(ch.ring, claim);
  if (slot < 0) {
    c.free_bits.push_back(bit);
    throw Error(Errc::kLimit, "channel " + printable(ch.name) + " already has " +
                                  std::to_string(ch.settings.max_subscribers) +
                                  " subscribers (max_subscribers of rule '" + ch.settings.rule +
                                  "' in " + config_.source +
                                  "); raise max_subscribers in [defaults] or a [[channel]] "
                                  "rule for it");
  }
  if (ch.publisher_holds > 0 || now.sequence > 0) connections_.barrier_before_next_send();
  // The client maps the ring before the reply or event that tells it where it is.
  access_.grant_ring(c, ch);
  ch.attached.insert(c.id);
  Attachment& a = c.attached[ch.id];
  a.slot = static_cast<uint32_t>(slot);
  a.bit = bit;
  return {a, start_sequence, true};
}

uint32_t Subscriptions::allocate_bit(Client& c, const ChannelState& ch) {
  if (!c.free_bits.empty()) {
    const uint32_t bit = c.free_bits.back();
    c.free_bits.pop_back();
    return bit;
  }
  if (c.next_bit >= c.doorbell_bits)
    throw Error(Errc::kLimit, "cannot receive channel " + printable(ch.name) +
                                  ": this subscription already reads " +
                                  std::to_string(c.doorbell_bits - 1) +
                                  " channels (max_subscriptions_per_client in [limits] of " +
                                  config_.source + "); raise it");
  return c.next_bit++;
}

bool Subscriptions::detach_if_unneeded(Client& c, ChannelState& ch) {
  auto it = c.attached.find(ch.id);
  if (it == c.attached.end() || it->second.needed()) return false;
  give_back(c, ch, it);
  ch.attached.erase(c.id);
  return true;
}

void Subscriptions::give_back(Client& c, ChannelState& ch,
                              std::unordered_map<uint32_t, Attachment>::iterator a) {
  return_slot(c, ch, a->second.slot);
  c.free_bits.push_back(a->second.bit);
  c.attached.erase(a);
}

void Subscriptions::return_slot(Client& c, ChannelState& ch, uint32_t slot) {
  // Forget slots the client has freed already, so a long-lived subscription that churns
  // does not grow this list without bound.
  if (c.returned_slots.size() >= 256) {
    std::erase_if(c.returned_slots,
                  [&](const Client::ReturnedSlot& r) { return !still_held(c, r); });
  }
  c.returned_slots.push_back({ch.id, slot, Clock::now()});
}

bool Subscriptions::still_held(const Client& c, const Client::ReturnedSlot& r) const {
  const ChannelState* owner = registry_.find_any(r.channel_id);
  if (owner == nullptr) return false;  // freed: only a ring without slots in use is
  const layout::ReaderSlot* s = owner->ring.slot(r.slot);
  return s->state.load(std::memory_order_acquire) != layout::kSlotFree &&
         s->owner.load(std::memory_order_relaxed) == c.id;
}

void Subscriptions::take_back_overdue_slots(Clock::time_point now) {
  const auto deadline = config_.slot_return_timeout;
  connections_.for_each_client([&](Client& c) {
    if (c.returned_slots.empty() || now - c.returned_slots.front().since < deadline) return;
    std::string channels;
    uint32_t taken = 0;
    std::erase_if(c.returned_slots, [&](const Client::ReturnedSlot& r) {
      if (now - r.since < deadline) return false;
      ChannelState* ch = registry_.find_any(r.channel_id);
      if (ch == nullptr || !release_reader_slot(ch->ring, r.slot, c.id)) return true;
      ++taken;
      if (taken <= 3) channels += (taken > 1 ? ", " : "") + printable(ch->name);
      return true;
    });
    if (taken == 0) return;
    log_->warn(
        "{} did not give back {} reader slot(s) it was told to ({}{}) within "
        "slot_return_timeout_ms = {} ([limits] of {}); took them back for other subscribers",
        connections_.describe_client(c.id), taken, channels, taken > 3 ? ", ..." : "",
        deadline.count(), config_.source);
  });
}

void Subscriptions::publish_pattern_count() {
  registry_.directory().patterns.store(static_cast<uint32_t>(pattern_index_.size()),
                                       std::memory_order_relaxed);
}

}  // namespace shmbus::daemon
