// Subscriptions: which client reads which ring. The pattern index, each client's reader
// slots (attachments) and the doorbell bits they ring, and the receiver counts publishers
// read from channel descriptors. A pattern attaches only the channels its subscriber may
// read ([[access]] rules).
//
// A client has at most one slot per ring, whether it holds the channel by name, through
// any number of patterns, or both; the slot goes back when nothing needs it any more.
// Patterns are resolved when a channel is created or a pattern subscribed, never per
// message.
//
// Thread safety: the run() thread only.
#pragma once

#include <spdlog/logger.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "access.hpp"
#include "client_state.hpp"
#include "config.hpp"
#include "connections.hpp"
#include "protocol.hpp"
#include "registry.hpp"
#include "shmbus/error.hpp"
#include "turn.hpp"

namespace shmbus::daemon {

class Subscriptions {
 public:
  using PatternIndex = std::map<std::string, std::set<uint64_t>>;  // pattern -> clients

  Subscriptions(const Config& config, std::shared_ptr<spdlog::logger> log, Registry& registry,
                Connections& connections, Access& access, Turn& turn);

  // `c` holds `ch` by name (it did not yet): a slot at the latest message, or for the other
  // starts at the oldest frame, so a back-pressure ring keeps what the client is about to
  // read. Returns the slot as the reply describes it. Throws Error when no slot or bit is
  // left, ProtocolError if `c` asked for no doorbell.
  protocol::Attachment subscribe_channel(Client& c, ChannelState& ch, protocol::StartKind start);
  // The slot of a channel `c` already holds by name, described again for a reply.
  protocol::Attachment describe_held(Client& c, const ChannelState& ch);
  // PSUBSCRIBE, in slices. add_pattern: `c` holds `pattern` from now on (false if it
  // already did), so channels created from now on match it. attach_existing then attaches
  // `c` for it to the live channels it matches and may read, from id `next_channel` on,
  // each at its latest message (as in Redis, where a new pattern sees what is published from
  // now on), appending the new slots to `attached`. It stops when the turn is spent or
  // `attached` holds `room_bytes` of reply (after at least one channel), and returns true
  // once every channel was looked at. A channel that could not be attached leaves its error
  // in `error` (the last one wins).
  bool add_pattern(Client& c, const std::string& pattern);
  bool attach_existing(Client& c, const std::string& pattern, uint32_t& next_channel,
                       std::vector<protocol::Attachment>& attached, size_t room_bytes,
                       std::optional<Error>& error);
  // Reply bytes an attachment takes, for the caller's frame budget.
  static size_t reply_bytes(const protocol::Attachment& a) { return 64 + a.channel.size(); }
  // `c` lets go of a channel it holds by name, or of a pattern (nothing if it holds none);
  // they return the ids of the channels whose slots it now gives back.
  std::optional<uint32_t> unsubscribe_channel(Client& c, const std::string& name);
  // Lets go of `patterns` at once: one walk over the client's slots, whatever their number.
  std::vector<uint32_t> unsubscribe_patterns(Client& c, const std::vector<std::string>& patterns);

  // Attaches the pattern subscribers of a channel just created, before any publisher learns
  // where its ring is: as far as the turn goes, then in later turns (match_pending) while
  // the channel is marked `matching` (its publishers wait: Requests). True if done now.
  bool match_new_channel(ChannelState& ch);
  // Goes on matching the channels created in earlier turns, until the turn is spent (at
  // least one pattern).
  void match_pending();
  bool has_pending_matches() const { return !pending_matches_.empty(); }
  // `c` holds `ch`'s name (c.channels) but no slot in this ring (a ring that replaced a
  // quarantined one): attaches it from the ring's start and tells it with an event.
  void reattach_by_name(Client& c, ChannelState& ch);
  // Takes back every slot in `ch`, a channel leaving service (reclaimed or quarantined);
  // their clients are told, and its matching, if not done, stops.
  void detach_all(ChannelState& ch);
  // Releases all `c` subscribed: its process is gone or said goodbye.
  void release(Client& c);
  // On each tick: takes back the slots clients were told to give back more than
  // slot_return_timeout_ms ago and still hold, naming each such client in the log.
  void take_back_overdue_slots(Clock::time_point now);

  const PatternIndex& pattern_index() const { return pattern_index_; }

 private:
  struct Attached {
    Attachment& attachment;
    uint64_t start_sequence;  // the sequence that goes with the slot's start position
    bool added;               // a new slot, not one `c` had already
  };
  // Registers (or finds) the client's slot in `ch`; `start` is the slot's position.
  Attached attach(Client& c, ChannelState& ch, uint64_t start);
  // attach() on behalf of `pattern`, counted once however often the pattern meets the
  // channel (a psubscribe walk and a new channel's matching may both reach it).
  std::optional<Attached> attach_for_pattern(Client& c, ChannelState& ch, uint64_t start,
                                             const std::string& pattern);
  // A channel being matched against the patterns: where it stands.
  struct PendingMatch {
    uint32_t channel_id = 0;
    std::optional<std::string> last_pattern;  // the last pattern done; none: not started
  };
  // Matches `m`'s channel against patterns until the turn is spent (at least one pattern);
  // true once done.
  bool match_some(PendingMatch& m);
  // The pattern subscribers of `pattern` that may read `ch`, attached from its start.
  void attach_pattern_subscribers(ChannelState& ch, const std::string& pattern,
                                  const std::set<uint64_t>& subscribers);
  uint32_t allocate_bit(Client& c, const ChannelState& ch);
  // Drops the slot if nothing needs it any more; true if it was dropped (the client gives
  // the slot back).
  bool detach_if_unneeded(Client& c, ChannelState& ch);
  void give_back(Client& c, ChannelState& ch, std::unordered_map<uint32_t, Attachment>::iterator a);
  void return_slot(Client& c, ChannelState& ch, uint32_t slot);
  // Whether `c` still holds the returned slot `r` (it has not freed it yet).
  bool still_held(const Client& c, const Client::ReturnedSlot& r) const;
  void publish_pattern_count();

  const Config& config_;  // the daemon's, outlives the subscriptions
  const std::shared_ptr<spdlog::logger> log_;
  Registry& registry_;
  Connections& connections_;
  Access& access_;
  Turn& turn_;

  // Owned by the run() thread.
  PatternIndex pattern_index_;
  std::deque<PendingMatch> pending_matches_;  // in creation order
};

}  // namespace shmbus::daemon
