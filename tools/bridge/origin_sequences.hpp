// Loss and repeat accounting per origin: what the bridge imported from each origin of a
// channel or stream (OriginSequences, state_file.hpp), how a newly taken message moves it,
// and how many messages that shows lost in transit. Pure: the caller adds the returned
// change to its lost_in_transit counter.
//
// Pub/sub never repeats, so a gap in an origin's sequence is loss; a lower number
// published later is a restart of the origin's numbering, and one published earlier a late
// message (a cluster failover can reorder), found again if it fell in the last gap. Durable entries
// may be read twice (a resend after an unacknowledged XADD) or late (a resend landing after later
// entries): a repeat is recognised by durable_repeat(), and a late entry fills the gap it was
// counted in.
#pragma once

#include <cstdint>

#include "state_file.hpp"

namespace shmbus::bridge {

// How far below the newest sequence a late durable entry is still recognised as new (and a
// late pub/sub message outside the last gap as late, not as a restart).
inline constexpr uint64_t kResendWindow = 4096;
// A pub/sub jump past this is taken for a restart (or a forged number), not for loss.
inline constexpr uint64_t kMaxPubSubGap = uint64_t{1} << 32;

// True if a durable entry was imported already: at or below the newest taken from its
// origin (`last`), and not one of the gaps a late resend may fill.
bool durable_repeat(const SequenceState& last, uint64_t sequence, uint64_t publish_unix_ns);

// What taking one message changes in the messages lost in transit.
struct LossChange {
  uint64_t lost = 0;   // the gap before it, now counted lost
  uint64_t found = 0;  // 1 when a late durable entry fills a gap this run counted
  bool operator==(const LossChange&) const = default;
};

// Records a message taken from `origin` (`last`: its origin_state in `states`, may be null).
// The gap before it is remembered, for durable entries, so a late resend can fill it. A
// durable caller has ruled out repeats (durable_repeat) before. Unsigned throughout: a
// forged sequence number makes any gap up to 2^64 - 2 without overflow.
LossChange record_sequence(OriginSequences& states, SequenceState* last, uint16_t origin,
                           uint64_t sequence, uint64_t publish_unix_ns, bool durable);

}  // namespace shmbus::bridge
