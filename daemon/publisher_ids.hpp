// Publisher ids: the 16-bit number each connection stamps on the frames it claims, so the
// daemon can pad over the frames of a publisher that died mid-message. An id is given at
// HELLO and taken back when its connection is finished - after a crash, only once every
// frame that carries it has been repaired (CrashRepair), or a new holder's frames could be
// mistaken for the dead one's, or the dead one's for the new holder's and waited on.
//
// Thread safety: the run() thread only.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace shmbus::daemon {

class PublisherIds {
 public:
  // A free id (1..65535), or nullopt when all are in use.
  std::optional<uint16_t> acquire() {
    if (!free_.empty()) {
      const uint16_t id = free_.back();
      free_.pop_back();
      return id;
    }
    if (next_ > 0xffff) return std::nullopt;
    return static_cast<uint16_t>(next_++);
  }
  void release(uint16_t id) {
    if (id != 0) free_.push_back(id);
  }

 private:
  std::vector<uint16_t> free_;  // owned by the run() thread, like next_
  uint32_t next_ = 1;
};

}  // namespace shmbus::daemon
