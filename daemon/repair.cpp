#include "repair.hpp"

#include <algorithm>

#include "naming.hpp"
#include "ring.hpp"

namespace shmbus::daemon {

CrashRepair::CrashRepair(std::shared_ptr<spdlog::logger> log, Registry& registry)
    : log_(std::move(log)), registry_(registry) {}

void CrashRepair::repair_publisher(uint16_t publisher_id, const std::vector<uint32_t>& held) {
  uint32_t repaired = 0;
  for (uint32_t channel_id : held) {
    const ChannelState* ch = registry_.find_live(channel_id);
    if (ch == nullptr) continue;
    const RingRef ring = ch->ring;
    repaired += repair_dead_publisher(ring, publisher_id, &registry_.arena_table()).repaired;
    if (inspect_ring(ring).first_unfinished &&
        std::none_of(stalled_rings_.begin(), stalled_rings_.end(),
                     [&](const StalledRing& r) { return r.channel_id == channel_id; }))
      stalled_rings_.push_back(StalledRing{channel_id, std::nullopt});
  }
  if (repaired > 0)
    log_->warn(
        "padded over {} frame(s) a crashed publisher (id {}) left unfinished; subscribers "
        "count them as lost",
        repaired, publisher_id);
}

void CrashRepair::retry_stalled_rings() {
  // A ring a dead publisher held, still held up by an unfinished frame. If that frame has
  // no header on two ticks in a row (a second apart), it is taken to be the dead
  // publisher's claim: a live one spends nanoseconds between its claim and its header.
  // repair_stalled_frame refuses when the gap could hold a second (live) claim. A frame
  // with a header belongs to a live publisher (the dead one's were padded at its exit):
  // wait for it.
  std::erase_if(stalled_rings_, [&](StalledRing& r) {
    ChannelState* ch = registry_.find_live(r.channel_id);
    if (ch == nullptr) return true;
    const RingInspection inspection = inspect_ring(ch->ring);
    if (inspection.corrupt) {
      log_->warn("channel {}: not repairing its ring: {}", printable(ch->name), inspection.problem);
      return true;
    }
    const std::optional<uint64_t> unfinished = inspection.first_unfinished;
    if (!unfinished) return true;
    if (frame_has_header(ch->ring, *unfinished)) {
      r.headerless_at.reset();
      return false;
    }
    if (r.headerless_at != unfinished) {
      r.headerless_at = unfinished;
      return false;
    }
    if (repair_stalled_frame(ch->ring, *unfinished, &registry_.arena_table()) ==
        StalledRepair::kRepaired)
      log_->warn(
          "channel {}: padded over a claim a crashed publisher left without a header; "
          "subscribers count it as lost",
          printable(ch->name));
    r.headerless_at.reset();
    return !inspect_ring(ch->ring).first_unfinished;
  });
}

}  // namespace shmbus::daemon
