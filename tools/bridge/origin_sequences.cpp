#include "origin_sequences.hpp"

#include <algorithm>
#include <utility>

namespace shmbus::bridge {

bool durable_repeat(const SequenceState& last, uint64_t sequence, uint64_t publish_unix_ns) {
  return std::pair(publish_unix_ns, sequence) <= std::pair(last.publish_unix_ns, last.sequence) &&
         last.missing.count(sequence) == 0;
}

LossChange record_sequence(OriginSequences& states, SequenceState* last, uint16_t origin,
                           uint64_t sequence, uint64_t publish_unix_ns, bool durable) {
  if (last == nullptr) {
    states.push_back({origin, {sequence, publish_unix_ns, {}}});
    return {};
  }
  if (std::pair(publish_unix_ns, sequence) <= std::pair(last->publish_unix_ns, last->sequence)) {
    if (durable) {
      // Not a repeat, so a late resend: counted as lost in transit when its gap opened
      // (by this run, unless restored from the state file).
      last->missing.erase(sequence);
      return {0, sequence > last->restored_upto ? 1u : 0u};
    }
    // Pub/sub: a message counted lost when its gap opened, arriving after all. It took a
    // slower path: in a cluster failover, what the old primary held is delivered after
    // what the new one took since (tests/bridge_cluster_test.cc).
    if (last->missing.erase(sequence)) return {0, 1};
    // Pub/sub never repeats; any other older stamp means the origin's channel restarted.
    last->sequence = sequence;
    last->publish_unix_ns = publish_unix_ns;
    last->missing.clear();
    return {};
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
    // The gap's last kResendWindow numbers may still come: durable resends, pub/sub
    // messages late through a failover.
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
