// The two fences the ring needs, in one place. ThreadSanitizer does not model standalone
// fences (GCC refuses them under -fsanitize=thread), so TSan builds use read-modify-write
// operations that give at least the same ordering and that TSan understands.
#pragma once

#include <atomic>
#include <cstdint>

namespace shmbus {

// Seqlock re-check: orders every read issued before it ahead of the returned load of
// `word` (Boehm, "Can seqlocks get along with programming language memory models?").
inline uint64_t reload_after_reads(const std::atomic<uint64_t>& word) {
#if defined(__SANITIZE_THREAD__)
  // TSan builds run on x86-64, where loads are not reordered with older loads: a compiler
  // barrier is enough. (An RMW here would be a write into ring data TSan would flag.)
  std::atomic_signal_fence(std::memory_order_acquire);
  return word.load(std::memory_order_relaxed);
#else
  std::atomic_thread_fence(std::memory_order_acquire);
  return word.load(std::memory_order_relaxed);
#endif
}

// Store -> load ordering (Dekker): the stores before it are visible before the loads after.
inline void full_fence() {
#if defined(__SANITIZE_THREAD__)
  static std::atomic<uint64_t> fence_word{0};
  fence_word.fetch_add(1, std::memory_order_seq_cst);
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

}  // namespace shmbus
