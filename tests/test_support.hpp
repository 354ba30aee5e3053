// Helpers shared by the ring tests: a private arena per test, rings and doorbells in it,
// and payloads that carry their own checksum.
#pragma once

#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "arena.hpp"
#include "doorbell.hpp"
#include "ring.hpp"

namespace shmbus::test {

// True if `write` faults (SIGSEGV) when run in a child process: what a write through a
// read-only mapping does. The child catches the fault itself, so a sanitizer's own handler
// (which would abort instead) does not hide it.
template <typename Write>
bool write_faults(Write&& write) {
  const pid_t child = fork();
  if (child == 0) {
    struct sigaction on_fault {};
    on_fault.sa_handler = [](int) { _exit(42); };
    sigaction(SIGSEGV, &on_fault, nullptr);
    sigaction(SIGBUS, &on_fault, nullptr);
    write();
    _exit(0);
  }
  int status = 0;
  waitpid(child, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 42;
}

// An arena (an unnamed segment) that exists for one test: rings, reader tables and
// doorbells are carved out of it as the daemon would. Forked children inherit its
// descriptor and may map it again (attach_copy) at another address.
class TestArena {
 public:
  explicit TestArena(uint64_t bytes = 64ULL << 20, uint32_t id = 1, const char* tag = "arena")
      : arena_(Arena::create(std::string("shmbus-test.") + tag, bytes, id)) {
    table_.add(arena_);
  }

  // A ring and its reader table, both in this arena.
  RingRef make_ring(const RingConfig& config) {
    const auto block = arena_.allocate(RingRef::block_bytes(config));
    const auto readers = arena_.allocate(RingRef::readers_bytes(config));
    return RingRef::format(arena_.base() + block.offset, arena_.base() + readers.offset, config);
  }
  // A doorbell with `bits` bits; returns its header and sets `ref_of_bit0` to the ShmRef
  // of bit 0 (add the bit index for others). As on a bus, doorbells have an arena of their
  // own (kDoorbellArenaId), where every one has the same size and sits at the same stride
  // (publishers check links against that: table().doorbells()).
  layout::DoorbellHeader* make_doorbell(uint32_t bits, uint64_t& ref_of_bit0) {
    if (!doorbell_arena_) {
      doorbell_arena_.emplace(
          Arena::create("shmbus-test.doorbells", 64ULL << 20, kDoorbellArenaId));
      table_.add(*doorbell_arena_);
      table_.set_doorbells(kDoorbellArenaId, bits);
    }
    if (table_.doorbells().bits != bits)
      throw std::logic_error("a test arena holds doorbells of one size");
    const auto block = doorbell_arena_->allocate(layout::doorbell_stride(bits));
    ref_of_bit0 = layout::ShmRef::make(kDoorbellArenaId, block.offset, 0);
    return doorbell::format(doorbell_arena_->base() + block.offset, bits);
  }
  const DoorbellGeometry& doorbells() const { return table_.doorbells(); }
  static constexpr uint32_t kDoorbellArenaId = 200;
  // The doorbell arena mapped again, as another process would have it.
  Arena attach_doorbells_copy() {
    return Arena::attach(dup(doorbell_arena_->read_write_fd()), Arena::Access::kReadWrite,
                         doorbell_arena_->name());
  }

  // Another mapping of the same segment, as another process would have it.
  Arena attach_copy(Arena::Access access = Arena::Access::kReadWrite) {
    const int fd = access == Arena::Access::kReadWrite ? dup(arena_.read_write_fd())
                                                       : dup(arena_.read_only_fd());
    return Arena::attach(fd, access, arena_.name());
  }

  Arena& arena() { return arena_; }
  const ArenaTable& table() const { return table_; }
  const std::string& name() const { return arena_.name(); }

 private:
  Arena arena_;
  std::optional<Arena> doorbell_arena_;
  ArenaTable table_;
};

inline std::span<const std::byte> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}
inline std::string as_string(const std::byte* p, size_t n) {
  return std::string(reinterpret_cast<const char*>(p), n);
}

// A ring small enough to wrap within a test: 8 reader slots.
inline RingConfig small_ring(uint64_t capacity = 4096, bool back_pressure = false) {
  RingConfig config;
  config.capacity = capacity;
  config.back_pressure = back_pressure;
  config.reader_capacity = 8;
  return config;
}

// The reader's next message as a string, or "<status>" when there is none to give.
inline std::string read_one(Reader& reader, MessageInfo* info_out = nullptr) {
  std::vector<std::byte> buffer;
  MessageInfo info;
  const Status status = reader.try_read_copy(buffer, info);
  if (status != Status::kOk) return "<" + std::string(to_string(status)) + ">";
  if (info_out) *info_out = info;
  return as_string(buffer.data(), buffer.size());
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
