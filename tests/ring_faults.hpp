// Faults injected into a ring the way a crashed process would leave them.
#pragma once

#include <cstdint>

#include "layout.hpp"
#include "ring.hpp"

namespace shmbus::test {

// Moves the claim word as a publisher that died right after its claim CAS would have left
// it: `bytes` claimed, one sequence number taken, no header written. Returns the position.
inline uint64_t fake_headerless_claim(RingRef ring, uint64_t bytes) {
  __extension__ typedef unsigned __int128 u128;
  const layout::ClaimWord before = ring.load_claim();
  auto* claim = reinterpret_cast<u128*>(&ring.header()->claim);
  __atomic_store_n(claim, (static_cast<u128>(before.sequence + 1) << 64) | (before.position + bytes),
                   __ATOMIC_SEQ_CST);
  return before.position;
}

}  // namespace shmbus::test
