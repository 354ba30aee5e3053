#include "origin_sequences.hpp"

#include <algorithm>
#include <utility>

namespace shmbus::bridge {

bool durable_repeat(const SequenceState& last, uint64_t sequence, uint64_t publish_unix_ns) {
  return std::pair(publish_unix_ns, sequence) <= std::pair(last.publish_unix_ns, last.sequence) &&
         last.missing.count(sequence) == 0;
}

namespace {

// Pub/sub never repeats, but on a Redis Cluster it can reorder: in a failover, what the
// old primary held is delivered after what the new one took since. So it goes by number,
// and the stamp only tells a restart (a lower number published later) from a late
// message (a lower number published earlier), which is imported and, if it fell in the
// last gap counted, uncounted. The gap is kept as one interval: O(1) whatever its size,
// so a forged jump costs nothing to track. A late message outside it was never counted
// (or fell in an older gap, still counted: the figure errs towards loss, never hides one).
LossChange record_pubsub(SequenceState& last, uint64_t sequence, uint64_t publish_unix_ns) {
  // A jump no real stream makes between two messages (4 billion lost) is a forged or
  // corrupt number, or an origin whose numbering started over elsewhere: followed as a
  // restart, not counted, so one forged envelope cannot add 2^64 to the losses.
  const bool implausible = sequence > last.sequence && sequence - last.sequence > kMaxPubSubGap;
  if (sequence > last.sequence && !implausible) {
    const uint64_t lost = sequence - last.sequence - 1;
    if (lost > 0) {
      last.gap_first = last.sequence + 1;
      last.gap_last = sequence - 1;
    }
    last.sequence = sequence;
    last.publish_unix_ns = publish_unix_ns;
    return {lost, 0};
  }
  // A lower (or equal) number published later, or far below anything a failover delays:
  // the origin restarted its numbering (or a forged number is left behind).
  const bool far_below = sequence < last.sequence && last.sequence - sequence > kResendWindow;
  if (implausible || publish_unix_ns > last.publish_unix_ns ||
      (far_below && !(last.gap_first <= sequence && sequence <= last.gap_last))) {
    last.sequence = sequence;
    last.publish_unix_ns = publish_unix_ns;
    last.gap_first = 1;
    last.gap_last = 0;
    return {};
  }
  if (last.gap_first <= sequence && sequence <= last.gap_last) {
    // Late, and counted lost: no longer. The interval shrinks from whichever end it was
    // taken at (a failover delivers the old primary's messages in order, so from the
    // front); one taken from the middle leaves the rest counted, as one from the ends would.
    if (sequence == last.gap_first)
      ++last.gap_first;
    else if (sequence == last.gap_last)
      --last.gap_last;
    else
      last.gap_first = sequence + 1;
    return {0, 1};
  }
  return {};
}

}  // namespace

LossChange record_sequence(OriginSequences& states, SequenceState* last, uint16_t origin,
                           uint64_t sequence, uint64_t publish_unix_ns, bool durable) {
  if (last == nullptr) {
    states.push_back({origin, {sequence, publish_unix_ns, {}}});
    return {};
  }
  if (!durable) return record_pubsub(*last, sequence, publish_unix_ns);
  if (std::pair(publish_unix_ns, sequence) <= std::pair(last->publish_unix_ns, last->sequence)) {
    // Not a repeat (durable_repeat), so a late resend: counted as lost in transit when its
    // gap opened (by this run, unless restored from the state file).
    last->missing.erase(sequence);
    return {0, sequence > last->restored_upto ? 1u : 0u};
  }
  if (sequence <= last->sequence) {
    // A newer stamp with a lower number: the origin's channel restarted its numbering.
    // The old gaps can never be filled now; kept, they would let a repeat of a new
    // number through.
    last->missing.clear();
    last->restored_upto = 0;
  }
  uint64_t lost = 0;
  if (sequence > last->sequence + 1) {
    lost = sequence - last->sequence - 1;
    const uint64_t from =
        std::max(last->sequence + 1, sequence - std::min(sequence, kResendWindow));
    for (uint64_t s = from; s < sequence; ++s) last->missing.insert(s);
  }
  last->sequence = sequence;
  last->publish_unix_ns = publish_unix_ns;
  // Forget gaps too far behind to be resends.
  while (!last->missing.empty() && *last->missing.begin() + kResendWindow < sequence)
    last->missing.erase(last->missing.begin());
  return {lost, 0};
}

}  // namespace shmbus::bridge
