// SlabPool: small blocks (64-byte multiples) carved out of arena pages, for what is too
// small to take a page of its own: channel descriptors in the control arena, reader tables
// in the reader arenas. 100,000 channels with four subscriber slots each need 100,000
// reader tables of 384 bytes: 37 MiB in pages of their own, 9 MiB packed.
//
// Blocks of half a page or more take whole pages (Arena::allocate) and give them back when
// freed. Smaller ones come from pages split into blocks of one size; a freed block is zeroed
// (what a formatted descriptor or reader table expects) and kept for the next block of its
// size. Those pages are never given back: the pool holds at most what its peak needed.
//
// Thread safety: the run() thread only, like the arenas it draws on.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <vector>

#include "arena.hpp"

namespace shmbus::daemon {

class SlabPool {
 public:
  struct Block {
    uint32_t arena_id = 0;
    uint64_t offset = 0;
    uint64_t bytes = 0;  // what was asked for, rounded to 64 (or to pages when large)
  };
  // Where pages come from: `take` returns (arena id, page-aligned block) of at least the
  // bytes asked for, or throws; `give` takes a block `take` returned back; `base` maps an
  // arena id to this process's mapping.
  struct Source {
    std::function<std::pair<uint32_t, Arena::Block>(uint64_t bytes)> take;
    std::function<void(uint32_t arena_id, const Arena::Block&)> give;
    std::function<std::byte*(uint32_t arena_id)> base;
  };

  explicit SlabPool(Source source) : source_(std::move(source)) {}

  // A zeroed block of at least `bytes`, 64-byte aligned. Throws what Source::take throws.
  Block allocate(uint64_t bytes);
  // REQUIRES: `block` came from allocate() and is not used by anyone any more.
  void release(const Block& block);

  // Bytes of arena pages the pool holds (in use or kept for reuse).
  uint64_t bytes_held() const { return bytes_held_; }

 private:
  Source source_;
  std::map<uint64_t, std::vector<Block>> free_;  // by block size
  uint64_t bytes_held_ = 0;
};

}  // namespace shmbus::daemon
