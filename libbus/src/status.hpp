// Outcomes of hot-path operations. Errors are values here: a full ring or a too-large message
// is a normal event for a publisher, not an exception (Aeron's Publication::offer does the
// same).
#pragma once

#include <cstdint>
#include <string_view>

namespace shmbus {

enum class Status : uint8_t {
  kOk = 0,
  kWouldBlock,  // no room now: a gating reader is a ring behind, or an unfinished frame from
                // the previous lap is in the way; retry, wait with a timeout, or drop
  kTimedOut,    // waited until the deadline
  kTooLarge,    // message exceeds the ring's max_payload
  kEmpty,       // reader: nothing new yet
  kCorrupt,     // the ring's shared state breaks its invariants: a process wrote garbage
                // into it; the daemon quarantines it and makes a new one
};

constexpr std::string_view to_string(Status status) {
  switch (status) {
    case Status::kOk: return "ok";
    case Status::kWouldBlock: return "would block";
    case Status::kTimedOut: return "timed out";
    case Status::kTooLarge: return "too large";
    case Status::kEmpty: return "empty";
    case Status::kCorrupt: return "corrupt";
  }
  return "unknown";
}

}  // namespace shmbus
