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

namespace shmbus::daemon {

class Subscriptions {
 public:
  using PatternIndex = std::map<std::string, std::set<uint64_t>>;  // pattern -> clients

  Subscriptions(const Config& config, std::shared_ptr<spdlog::logger> log, Registry& registry,
                Connections& connections, Access& access);

  // `c` holds `ch` by name (it did not yet): a slot at the latest message, or for the other
  // starts at the oldest frame, so a back-pressure ring keeps what the client is about to
  // read. Returns the slot as the reply describes it. Throws Error when no slot or bit is
  // left, ProtocolError if `c` asked for no doorbell.
  protocol::Attachment subscribe_channel(Client& c, ChannelState& ch, protocol::StartKind start);
  // The slot of a channel `c` already holds by name, described again for a reply.
  protocol::Attachment describe_held(Client& c, const ChannelState& ch);
  struct PatternSubscribed {
    std::vector<protocol::Attachment> attachments;  // new slots, in matching channels
    std::optional<Error> error;  // the last channel that could not be attached, if any
  };
  // `c` subscribes `pattern` (nothing if it already has): existing channels that match
  // start from their latest message.
  PatternSubscribed subscribe_pattern(Client& c, const std::string& pattern);
  // `c` lets go of a channel it holds by name, or of a pattern (nothing if it holds none);
  // they return the ids of the channels whose slots it now gives back.
  std::optional<uint32_t> unsubscribe_channel(Client& c, const std::string& name);
  std::vector<uint32_t> unsubscribe_pattern(Client& c, const std::string& pattern);

  // Attaches the pattern subscribers of a channel just created, before anyone publishes.
  void match_new_channel(ChannelState& ch);
  // `c` holds `ch`'s name (c.channels) but no slot in this ring (a ring that replaced a
  // quarantined one): attaches it from the ring's start and tells it with an event.
  void reattach_by_name(Client& c, ChannelState& ch);
  // Takes back every slot in `ch`, a channel being reclaimed; their clients are told.
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

  PatternIndex pattern_index_;  // owned by the run() thread
};

}  // namespace shmbus::daemon
