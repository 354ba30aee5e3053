#include "repair.hpp"

#include <algorithm>

#include "naming.hpp"
#include "ring.hpp"

namespace shmbus::daemon {

CrashRepair::CrashRepair(std::shared_ptr<spdlog::logger> log, Registry& registry, PublisherIds& ids)
    : log_(std::move(log)), registry_(registry), ids_(ids) {}

void CrashRepair::repair_publisher(uint16_t publisher_id, const std::vector<uint32_t>& held) {
  uint32_t repaired = 0;
  for (uint32_t channel_id : held) {
    const ChannelState* ch = registry_.find_live(channel_id);
    if (ch == nullptr) continue;  // out of service: nobody waits on its frames
    const RepairResult result =
        repair_dead_publisher(ch->ring, publisher_id, &registry_.arena_table());
    repaired += result.repaired;
    if (!result.complete && !result.corrupt) {
      auto it = std::find_if(stalled_rings_.begin(), stalled_rings_.end(),
                             [&](const StalledRing& r) { return r.channel_id == channel_id; });
      if (it == stalled_rings_.end())
        it = stalled_rings_.insert(stalled_rings_.end(), StalledRing{channel_id, {}, {}});
      it->dead_publishers.insert(publisher_id);
    } else if (inspect_ring(ch->ring).first_unfinished &&
               std::none_of(stalled_rings_.begin(), stalled_rings_.end(),
                            [&](const StalledRing& r) { return r.channel_id == channel_id; })) {
      stalled_rings_.push_back(StalledRing{channel_id, std::nullopt, {}});
    }
  }
  if (repaired > 0)
    log_->warn(
        "padded over {} frame(s) a crashed publisher (id {}) left unfinished; subscribers "
        "count them as lost",
        repaired, publisher_id);
  release_repaired_ids({publisher_id});
}

void CrashRepair::release_repaired_ids(std::set<uint16_t> candidates) {
  for (const StalledRing& r : stalled_rings_)
    for (uint16_t id : r.dead_publishers) candidates.erase(id);
  for (uint16_t id : candidates) ids_.release(id);
}

void CrashRepair::retry_stalled_rings() {
  // A ring a dead publisher held, still held up by an unfinished frame. If that frame has
  // no header on two ticks in a row (a second apart), it is taken to be a dead publisher's
  // claim: a live one spends nanoseconds between its claim and its header.
  // repair_stalled_frame refuses when the gap could hold a second (live) claim. Past it, the
  // frames of the dead publishers the last walk could not reach are padded. A frame with a
  // header of a publisher not known dead belongs to a live one: wait for it.
  std::set<uint16_t> settled;  // ids whose frames are all repaired now
  std::erase_if(stalled_rings_, [&](StalledRing& r) {
    ChannelState* ch = registry_.find_live(r.channel_id);
    auto done = [&] {
      settled.insert(r.dead_publishers.begin(), r.dead_publishers.end());
      return true;
    };
    if (ch == nullptr) return done();  // out of service: nobody waits on its frames
    for (auto it = r.dead_publishers.begin(); it != r.dead_publishers.end();) {
      const RepairResult result = repair_dead_publisher(ch->ring, *it, &registry_.arena_table());
      if (result.repaired > 0)
        log_->warn(
            "channel {}: padded over {} frame(s) of crashed publisher id {}; subscribers "
            "count them as lost",
            printable(ch->name), result.repaired, *it);
      if (result.complete || result.corrupt) {
        settled.insert(*it);
        it = r.dead_publishers.erase(it);
      } else {
        ++it;
      }
    }
    const RingInspection inspection = inspect_ring(ch->ring);
    if (inspection.corrupt) {
      log_->warn("channel {}: not repairing its ring: {}", printable(ch->name), inspection.problem);
      return done();  // the health check quarantines it
    }
    const std::optional<uint64_t> unfinished = inspection.first_unfinished;
    if (!unfinished) return done();
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
    return false;  // the next tick walks on past it
  });
  release_repaired_ids(std::move(settled));
}

}  // namespace shmbus::daemon
