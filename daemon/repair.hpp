// Crash repair: a publisher that dies mid-frame leaves a claim its ring cannot get past.
// Once its process has exited, the frames it left are padded over (subscribers count them
// as lost) so the ring moves on; a claim it left without a header is found and padded on
// later ticks, and so are its frames that lay beyond such a claim.
//
// Thread safety: the run() thread only.
#pragma once

#include <spdlog/logger.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <vector>

#include "publisher_ids.hpp"
#include "registry.hpp"

namespace shmbus::daemon {

class CrashRepair {
 public:
  CrashRepair(std::shared_ptr<spdlog::logger> log, Registry& registry, PublisherIds& ids);

  // Pads over the frames dead publisher `publisher_id` left unfinished in `channels` (the
  // ones it held open); rings still held up are retried on each tick. The id goes back to
  // `ids` once no ring may hold a frame of it.
  void repair_publisher(uint16_t publisher_id, const std::vector<uint32_t>& channels);
  // On each tick.
  void retry_stalled_rings();

 private:
  // Gives back every id no stalled ring is still waiting to repair.
  void release_repaired_ids(std::set<uint16_t> candidates);

  const std::shared_ptr<spdlog::logger> log_;
  Registry& registry_;
  PublisherIds& ids_;

  // Rings held up, after a publisher died, by a claim without a header: the dead one may
  // have died between its claim and its header, which repair by publisher id cannot find,
  // and the frames beyond such a claim cannot be walked to until it is repaired. Retried on
  // each tick (see retry_stalled_rings).
  struct StalledRing {
    uint32_t channel_id = 0;
    std::optional<uint64_t> headerless_at;  // seen on the previous tick
    std::set<uint16_t> dead_publishers;     // whose frames the walk could not reach yet
  };
  std::vector<StalledRing> stalled_rings_;  // owned by the run() thread
};

}  // namespace shmbus::daemon
