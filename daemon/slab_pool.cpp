#include "slab_pool.hpp"

#include <cstring>

namespace shmbus::daemon {

namespace {
constexpr uint64_t kSmallLimit = layout::kPageSize / 2;
}  // namespace

SlabPool::Block SlabPool::allocate(uint64_t bytes) {
  const uint64_t size = layout::align_up(bytes == 0 ? 1 : bytes, layout::kCacheLine);
  if (size >= kSmallLimit) {
    const auto [arena_id, block] = source_.take(size);
    bytes_held_ += block.bytes;
    return Block{arena_id, block.offset, block.bytes};
  }
  std::vector<Block>& free = free_[size];
  if (free.empty()) {
    // A fresh page, split into blocks of this size; the tail that is left over stays unused.
    const auto [arena_id, page] = source_.take(layout::kPageSize);
    bytes_held_ += page.bytes;
    for (uint64_t at = page.bytes / size * size; at >= size; at -= size)
      free.push_back(Block{arena_id, page.offset + at - size, size});
  }
  const Block block = free.back();
  free.pop_back();
  return block;
}

void SlabPool::release(const Block& block) {
  if (block.bytes >= kSmallLimit) {
    source_.give(block.arena_id, Arena::Block{block.offset, block.bytes});
    bytes_held_ -= block.bytes;
    return;
  }
  std::memset(source_.base(block.arena_id) + block.offset, 0, block.bytes);
  free_[block.bytes].push_back(block);
}

}  // namespace shmbus::daemon
