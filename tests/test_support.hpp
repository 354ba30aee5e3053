// Helpers shared by the ring tests: a private arena per test, rings and doorbells in it,
// and payloads that carry their own checksum.
#pragma once

#include <sched.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "arena.hpp"
#include "doorbell.hpp"
#include "ring.hpp"

namespace shmbus::test {

// Exit code of a child that could not set up its private /dev/shm (no CAP_SYS_ADMIN).
inline constexpr int kNoPrivateDevShm = 77;

// Runs `fn` in a forked child that sees a tmpfs of `size` (e.g. "2m") as /dev/shm, in a
// mount namespace of its own, so a test can fill /dev/shm without touching the host's.
// Returns the child's exit code: fn's return value, kNoPrivateDevShm if the mount was not
// allowed, 98 if fn threw, 128 + signal if it died.
template <typename Fn>
int run_with_small_dev_shm(const char* size, Fn&& fn) {
  const pid_t child = fork();
  if (child < 0) return -1;
  if (child == 0) {
    if (unshare(CLONE_NEWNS) != 0) _exit(kNoPrivateDevShm);
    if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) _exit(kNoPrivateDevShm);
    const std::string options = std::string("size=") + size;
    if (mount("tmpfs", "/dev/shm", "tmpfs", 0, options.c_str()) != 0) _exit(kNoPrivateDevShm);
    int code = 98;
    try {
      code = fn();
    } catch (...) {
    }
    _exit(code);
  }
  int status = 0;
  if (waitpid(child, &status, 0) != child) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// A name no live process uses: it carries our pid. A segment already there under it was
// left by a killed run whose process had the same pid, and is removed.
inline std::string unique_arena_name(const char* tag) {
  static std::atomic<uint32_t> counter{0};
  std::string name = std::string("shmbus-test.") + tag + "." + std::to_string(getpid()) + "." +
                     std::to_string(counter.fetch_add(1));
  Arena::remove(name);
  return name;
}

// An arena that exists for one test and is unlinked afterwards.
class TestArena {
 public:
  explicit TestArena(uint64_t bytes = 64ULL << 20, uint32_t id = 1, const char* tag = "arena")
      : name_(unique_arena_name(tag)), arena_(Arena::create(name_, bytes, id)) {
    table_.add(arena_);
  }
  ~TestArena() { Arena::remove(name_); }

  RingRef make_ring(const RingConfig& config) {
    const auto block = arena_.allocate(RingRef::block_bytes(config));
    return RingRef::format(arena_.base() + block.offset, config);
  }
  // A doorbell with `bits` bits; returns its header and sets `ref_of_bit0` to the ShmRef
  // of bit 0 (add the bit index for others). As on a bus, every doorbell of one arena has
  // the same size (publishers check links against it: table().doorbells()).
  layout::DoorbellHeader* make_doorbell(uint32_t bits, uint64_t& ref_of_bit0) {
    if (table_.doorbells().bits == 0) table_.set_doorbells(arena_.id(), bits);
    if (table_.doorbells().bits != bits)
      throw std::logic_error("a test arena holds doorbells of one size");
    const auto block = arena_.allocate(layout::doorbell_bytes(bits));
    ref_of_bit0 = layout::ShmRef::make(arena_.id(), block.offset, 0);
    return doorbell::format(arena_.base() + block.offset, bits);
  }
  const DoorbellGeometry& doorbells() const { return table_.doorbells(); }

  Arena& arena() { return arena_; }
  const ArenaTable& table() const { return table_; }
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  Arena arena_;
  ArenaTable table_;
};

inline std::span<const std::byte> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}
inline std::string as_string(const std::byte* p, size_t n) {
  return std::string(reinterpret_cast<const char*>(p), n);
}

// FNV-1a, enough to catch a torn or mixed-up payload.
inline uint64_t checksum(const std::byte* p, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<uint8_t>(p[i])) * 1099511628211ULL;
  return h;
}

// Stress payload: [publisher u32][per-publisher sequence u64][checksum u64][filler ...].
struct StressHeader {
  uint32_t publisher;
  uint32_t length;
  uint64_t sequence;
  uint64_t checksum;
};
static_assert(sizeof(StressHeader) == 24);

inline void fill_stress_payload(std::byte* out, uint32_t length, uint32_t publisher,
                                uint64_t sequence) {
  StressHeader h{publisher, length, sequence, 0};
  for (uint32_t i = sizeof(StressHeader); i < length; ++i)
    out[i] = static_cast<std::byte>((sequence * 131 + i * 7 + publisher) & 0xff);
  std::memcpy(out, &h, sizeof h);
  h.checksum = checksum(out + sizeof(StressHeader), length - sizeof(StressHeader)) ^
               (sequence * 0x9e3779b97f4a7c15ULL) ^ publisher ^ (uint64_t{length} << 40);
  std::memcpy(out, &h, sizeof h);
}

// True if the payload is exactly what fill_stress_payload wrote.
inline bool stress_payload_intact(const std::byte* p, uint32_t length, StressHeader& h) {
  if (length < sizeof(StressHeader)) return false;
  std::memcpy(&h, p, sizeof h);
  if (h.length != length) return false;
  const uint64_t want = checksum(p + sizeof(StressHeader), length - sizeof(StressHeader)) ^
                        (h.sequence * 0x9e3779b97f4a7c15ULL) ^ h.publisher ^
                        (uint64_t{length} << 40);
  return want == h.checksum;
}

}  // namespace shmbus::test
