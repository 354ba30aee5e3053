#include "ring.hpp"

#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>

#include "fences.hpp"
#include "futex.hpp"
#include "publish_clock.hpp"

#if defined(__SANITIZE_THREAD__)
extern "C" void AnnotateIgnoreReadsBegin(const char* file, int line);
extern "C" void AnnotateIgnoreReadsEnd(const char* file, int line);
#define SHMBUS_TSAN 1
#endif

namespace shmbus {

using namespace layout;

namespace {

// ---- The 16-byte claim word -------------------------------------------------------------
// x86-64 has cmpxchg16b; with -mcx16 GCC inlines the __sync builtin. Under ThreadSanitizer
// the __atomic builtins (libatomic) are used because TSan instruments those.

__extension__ typedef unsigned __int128 u128;

inline u128 pack(ClaimWord w) {
  return (u128{w.sequence} << 64) | w.position;
}
inline ClaimWord unpack(u128 v) {
  return ClaimWord{static_cast<uint64_t>(v), static_cast<uint64_t>(v >> 64)};
}
inline u128* claim_bits(RingHeader* h) {
  return reinterpret_cast<u128*>(&h->claim);
}

#if defined(__x86_64__) && defined(__GCC_HAVE_SYNC_COMPARE_AND_SWAP_16) && !defined(SHMBUS_TSAN)
inline ClaimWord claim_snapshot(RingHeader* h) {
  // A CAS that writes back what it finds is the only atomic 16-byte read on x86-64.
  return unpack(__sync_val_compare_and_swap(claim_bits(h), u128{0}, u128{0}));
}
// Two 8-byte loads; may be torn, which is harmless: the CAS below validates it.
inline ClaimWord claim_guess(RingHeader* h) {
  const auto* words = reinterpret_cast<const uint64_t*>(claim_bits(h));
  return ClaimWord{__atomic_load_n(&words[0], __ATOMIC_RELAXED),
                   __atomic_load_n(&words[1], __ATOMIC_RELAXED)};
}
// On failure `expected` is updated to the current value. Full barrier either way.
inline bool claim_cas(RingHeader* h, ClaimWord& expected, ClaimWord desired) {
  const u128 want = pack(expected);
  const u128 seen = __sync_val_compare_and_swap(claim_bits(h), want, pack(desired));
  if (seen == want) return true;
  expected = unpack(seen);
  return false;
}
#else
inline ClaimWord claim_snapshot(RingHeader* h) {
  return unpack(__atomic_load_n(claim_bits(h), __ATOMIC_ACQUIRE));
}
inline ClaimWord claim_guess(RingHeader* h) {
  return claim_snapshot(h);
}
inline bool claim_cas(RingHeader* h, ClaimWord& expected, ClaimWord desired) {
  u128 want = pack(expected);
  if (__atomic_compare_exchange_n(claim_bits(h), &want, pack(desired), false, __ATOMIC_ACQ_REL,
                                  __ATOMIC_ACQUIRE))
    return true;
  expected = unpack(want);
  return false;
}
#endif

// Marks, for ThreadSanitizer, a scope whose accesses to frames are seqlock reads: a lossy
// reader, or a publisher helping to retire, may read a frame that a publisher of the next
// lap is overwriting, and discards what it read when the re-check fails. Those races are by
// design, so the scope's memory accesses are not recorded; the acquire and release of its
// atomics still are, so everything after it is checked with the ordering it established.
// (Suppressions would not do: they match a report by both stacks, and TSan loses the
// reader's stack when that thread has run long since its read - CI saw it.)
// Compiles to nothing without TSan.
class SeqlockReadScope {
 public:
  explicit SeqlockReadScope([[maybe_unused]] bool may_race = true) {
#if defined(SHMBUS_TSAN)
    active_ = may_race;
    if (active_) AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
#endif
  }
  ~SeqlockReadScope() {
#if defined(SHMBUS_TSAN)
    if (active_) AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
#endif
  }
  SeqlockReadScope(const SeqlockReadScope&) = delete;
  SeqlockReadScope& operator=(const SeqlockReadScope&) = delete;

 private:
#if defined(SHMBUS_TSAN)
  bool active_ = false;
#endif
};

// `may_be_overwritten`: the frame may be reused under the reader (Reader::lappable_; see
// SeqlockReadScope).
inline void copy_out_of_ring(std::byte* dst, const std::byte* src, size_t bytes,
                             bool may_be_overwritten) {
  if (bytes == 0) return;  // dst may be null for an empty buffer
  const SeqlockReadScope validated_afterwards(may_be_overwritten);
  std::memcpy(dst, src, bytes);
}

// Writes every header field but the state (relaxed: the state store or CAS that follows
// publishes them).
inline void write_header_fields(FrameHeader* f, uint64_t sequence, uint32_t payload_length,
                                uint16_t publisher_id) {
  f->sequence.store(sequence, std::memory_order_relaxed);
  f->publish_unix_ns.store(0, std::memory_order_relaxed);
  f->payload_length.store(payload_length, std::memory_order_relaxed);
  f->publisher_id.store(publisher_id, std::memory_order_relaxed);
  f->origin.store(0, std::memory_order_relaxed);
}

// Size of the frame whose header says `payload_length` (the same rule for data and padding:
// padding stores its size minus the header, a multiple of 32).
inline uint64_t frame_size(uint32_t payload_length) {
  return frame_bytes(payload_length);
}

// Waiting with a budget: spin, then yield, then sleep in growing steps up to 1 ms.
class Backoff {
 public:
  explicit Backoff(WaitBudget budget) : budget_(budget) {}
  // Returns false when the budget is spent.
  bool pause() {
    if (budget_.count() == 0) return false;
    if (rounds_ == 0 && budget_.count() > 0) deadline_ = std::chrono::steady_clock::now() + budget_;
    ++rounds_;
    if (rounds_ < 64) {
      cpu_relax();
    } else if (rounds_ < 128) {
      std::this_thread::yield();
    } else {
      sleep_ns_ = sleep_ns_ == 0 ? 1000 : std::min<uint64_t>(sleep_ns_ * 2, 1'000'000);
      const timespec ts{0, static_cast<long>(sleep_ns_)};
      nanosleep(&ts, nullptr);
    }
    return budget_.count() < 0 || (rounds_ % 16 != 0) ||
           std::chrono::steady_clock::now() < deadline_;
  }
  bool timed() const { return budget_.count() > 0; }

 private:
  WaitBudget budget_;
  std::chrono::steady_clock::time_point deadline_{};
  uint64_t rounds_ = 0;
  uint64_t sleep_ns_ = 0;
};

bool process_is_dead(int32_t pid) {
  return pid > 0 && kill(pid, 0) != 0 && errno == ESRCH;
}

}  // namespace

// ---- RingRef ------------------------------------------------------------------------------

uint32_t RingRef::largest_payload(uint64_t capacity) {
  // A claim may need padding up to the end (< one frame) plus the frame: both must fit in
  // one lap, so a frame may take at most half the ring.
  const uint64_t limit = capacity / 2 - kFrameHeaderBytes;
  return static_cast<uint32_t>(std::min<uint64_t>(limit, 0x7fffffffULL));
}

RingGeometry RingRef::geometry_of(const RingConfig& config) {
  if (!is_power_of_two(config.capacity) || config.capacity < 4096)
    throw std::invalid_argument(
        "ring capacity must be a power of two of at least 4096 bytes, got " +
        std::to_string(config.capacity));
  if (config.capacity > (uint64_t{1} << 40))
    throw std::invalid_argument("ring capacity above 1 TiB is not supported");
  const uint32_t largest = largest_payload(config.capacity);
  if (config.max_payload > largest)
    throw std::invalid_argument("max payload " + std::to_string(config.max_payload) +
                                " exceeds what a ring of " + std::to_string(config.capacity) +
                                " bytes can carry (" + std::to_string(largest) +
                                "); use a ring of at least twice the message size");
  if (config.reader_capacity == 0 || config.reader_capacity > 65536)
    throw std::invalid_argument("reader capacity must be 1..65536");
  return RingGeometry{config.capacity, config.max_payload == 0 ? largest : config.max_payload,
                      config.back_pressure, config.reader_capacity, config.channel_id};
}

RingRef RingRef::format(std::byte* block, std::byte* readers, const RingConfig& config) {
  const RingGeometry g = geometry_of(config);
  auto* h = reinterpret_cast<RingHeader*>(block);
  h->version = kLayoutVersion;
  h->capacity = g.capacity;
  h->block_bytes = ring_block_bytes(g.capacity);
  h->max_payload = g.max_payload;
  h->flags = g.back_pressure ? kRingBackPressure : 0;
  h->reader_capacity = g.reader_capacity;
  h->channel_id = g.channel_id;
  // Zeroed memory already reads as claim {0, 0}, frontier 0 and all slots free.
  h->magic.store(kRingMagic, std::memory_order_release);
  return open(block, ring_block_bytes(g.capacity), readers, reader_table_bytes(g.reader_capacity),
              g);
}

RingRef RingRef::open(std::byte* block, uint64_t block_available, std::byte* readers,
                      uint64_t readers_available, const RingGeometry& expected) {
  if (!is_power_of_two(expected.capacity) || expected.capacity < 4096 ||
      expected.capacity > (uint64_t{1} << 40) || expected.reader_capacity == 0 ||
      expected.reader_capacity > 65536 || expected.max_payload > largest_payload(expected.capacity))
    throw std::runtime_error("ring geometry is impossible");
  if (block_available < ring_block_bytes(expected.capacity) ||
      readers_available < reader_table_bytes(expected.reader_capacity))
    throw std::runtime_error("ring block or reader table smaller than its geometry");
  auto* h = reinterpret_cast<RingHeader*>(block);
  if (h->magic.load(std::memory_order_acquire) != kRingMagic)
    throw std::runtime_error("not a shmbus ring (bad magic)");
  if (h->version != kLayoutVersion)
    throw std::runtime_error("ring layout version " + std::to_string(h->version) +
                             " differs from this library's " + std::to_string(kLayoutVersion));
  RingRef ring;
  ring.header_ = h;
  ring.data_ = block + kRingDataOffset;
  ring.mask_ = expected.capacity - 1;
  ring.readers_ = reinterpret_cast<ReaderTableHeader*>(readers);
  ring.notify_ = reinterpret_cast<std::atomic<uint64_t>*>(readers + notify_array_offset());
  ring.slots_ = reinterpret_cast<ReaderSlot*>(readers + slots_offset(expected.reader_capacity));
  ring.reader_capacity_ = expected.reader_capacity;
  ring.max_payload_ = expected.max_payload;
  ring.back_pressure_ = expected.back_pressure;
  ring.channel_id_ = expected.channel_id;
  if (!ring.header_matches_geometry())
    throw std::runtime_error("ring header does not match the geometry shmbusd gave");
  return ring;
}

bool RingRef::header_matches_geometry() const {
  const RingHeader* h = header_;
  return h->magic.load(std::memory_order_relaxed) == kRingMagic && h->capacity == capacity() &&
         h->block_bytes == ring_block_bytes(capacity()) && h->max_payload == max_payload_ &&
         h->reader_capacity == reader_capacity_ &&
         h->flags == (back_pressure_ ? kRingBackPressure : 0) && h->channel_id == channel_id_;
}

uint64_t RingRef::claim_position_relaxed() const {
  return __atomic_load_n(&header_->claim.position, __ATOMIC_RELAXED);
}

bool RingRef::claim_plausible() const {
  // Frontier, claim, frontier again: whatever honest publishers do meanwhile, I1 then holds
  // between these three reads (the frontier read first is <= the claim read after it, and
  // the claim is <= the frontier read after it plus one lap).
  const uint64_t frontier_before = retire_frontier();
  const uint64_t claim = claim_position_relaxed();
  const uint64_t frontier_after = retire_frontier();
  return claim >= frontier_before && claim <= frontier_after + capacity() &&
         frontier_after >= frontier_before && claim % kFrameAlignment == 0 &&
         frontier_before % kFrameAlignment == 0;
}

ClaimWord RingRef::load_claim() const {
  return claim_snapshot(header_);
}

ClaimWord RingRef::read_claim() const {
  const auto* words = reinterpret_cast<const uint64_t*>(&header_->claim);
  ClaimWord claim{};
  for (int tries = 0; tries < 64; ++tries) {
    // Acquire on the position: the sequence load cannot move before it.
    const uint64_t position = __atomic_load_n(&words[0], __ATOMIC_ACQUIRE);
    claim.sequence = __atomic_load_n(&words[1], __ATOMIC_ACQUIRE);
    claim.position = __atomic_load_n(&words[0], __ATOMIC_RELAXED);
    if (claim.position == position) return claim;
  }
  return claim;
}

// ---- Publisher ----------------------------------------------------------------------------

Publisher::Publisher(RingRef ring, uint16_t publisher_id, const ArenaTable* arenas)
    : ring_(ring), publisher_id_(publisher_id), arenas_(arenas) {
  // A reader that links a doorbell issues a process-wide barrier instead of every publish
  // paying a full fence; the barrier reaches only registered processes.
  register_process_for_barriers();
}

Status Publisher::claim(uint32_t payload_bytes, RingLoan& loan, WaitBudget wait) {
  if (payload_bytes > ring_.max_payload()) return Status::kTooLarge;
  RingHeader* h = ring_.header();
  const uint64_t capacity = ring_.capacity();
  const uint64_t size = frame_size(payload_bytes);
  Backoff backoff(wait);
  ClaimWord seen = claim_guess(h);
  uint64_t padding = 0;
  for (;;) {
    // A claim position that is not a frame boundary exists only if someone wrote it.
    if (seen.position % kFrameAlignment != 0) return Status::kCorrupt;
    const uint64_t offset = seen.position & ring_.mask();
    // I4: a frame that would cross the end takes the rest of the lap as padding too.
    padding = offset + size > capacity ? capacity - offset : 0;
    const uint64_t end = seen.position + padding + size;
    if (end > capacity) {
      if (const Status room = make_room(end - capacity); room != Status::kOk) {
        // Held up: by a gating reader or an unfinished frame (wait for them), or because
        // the claim and the frontier contradict each other (waiting would never end).
        if (room == Status::kCorrupt || !ring_.claim_plausible()) return Status::kCorrupt;
        if (!backoff.pause()) return backoff.timed() ? Status::kTimedOut : Status::kWouldBlock;
        seen = claim_guess(h);
        continue;
      }
    }
    // Room for [position, end) is ours to take; the CAS makes it ours. make_room's checks
    // stay true after a failed CAS only if nothing moved, so a failure re-runs them.
    if (claim_cas(h, seen, ClaimWord{end, seen.sequence + 1})) break;
  }

  uint64_t position = seen.position;
  if (padding != 0) {
    FrameHeader* pad = ring_.frame_at(position);
    write_header_fields(pad, seen.sequence, static_cast<uint32_t>(padding - kFrameHeaderBytes),
                        publisher_id_);
    // Release: a reader that sees the committed state sees the length above.
    pad->state.store(position | kFrameCommitted | kFramePadding, std::memory_order_release);
    position += padding;
  }
  FrameHeader* f = ring_.frame_at(position);
  // Not write_header_fields: commit() stores the time and origin, once, on the hot path.
  f->sequence.store(seen.sequence, std::memory_order_relaxed);
  f->payload_length.store(payload_bytes, std::memory_order_relaxed);
  f->publisher_id.store(publisher_id_, std::memory_order_relaxed);
  // Release: I5 - the length (hence the frame's extent) is visible to repair and to the
  // retire sweep before anyone can see this frame as claimed.
  f->state.store(position | kFrameWriting, std::memory_order_release);

  loan.payload = reinterpret_cast<std::byte*>(f) + kFrameHeaderBytes;
  loan.capacity = payload_bytes;
  loan.position = position;
  loan.sequence = seen.sequence;
  loan.active = true;
  return Status::kOk;
}

void Publisher::commit(RingLoan& loan, uint32_t payload_bytes, const PublishMeta& meta) {
  if (!loan.active) throw std::logic_error("commit of a loan that is not active");
  if (payload_bytes > loan.capacity)
    throw std::logic_error("commit of " + std::to_string(payload_bytes) + " bytes on a loan of " +
                           std::to_string(loan.capacity));
  FrameHeader* f = ring_.frame_at(loan.position);
  const uint64_t claimed = frame_size(loan.capacity);
  const uint64_t used = frame_size(payload_bytes);
  if (used < claimed) {
    // The unused tail of the claim becomes padding, committed before the message so a
    // reader that moves past the message finds it complete.
    FrameHeader* pad = ring_.frame_at(loan.position + used);
    write_header_fields(pad, loan.sequence + 1,
                        static_cast<uint32_t>(claimed - used - kFrameHeaderBytes), publisher_id_);
    pad->state.store((loan.position + used) | kFrameCommitted | kFramePadding,
                     std::memory_order_release);
  }
  // A shorter commit shortens the length; the frame's extent stays what it was claimed as
  // (the padding above covers the rest, or the frame size did not change), so I5's promise
  // to repair and the retire sweep holds.
  if (payload_bytes != loan.capacity)
    f->payload_length.store(payload_bytes, std::memory_order_relaxed);
  RingHeader* h = ring_.header();
  // Stamped after the claim: the ring's latest stamp then belongs to a commit made before
  // ours, so stamps follow ring order wherever publishers do not overlap (publish_clock.hpp).
  // It sits on the counters line this publisher's previous commit wrote.
  const uint64_t stamp =
      meta.stamp_at_commit
          ? next_publish_stamp(h->last_publish_unix_ns.load(std::memory_order_relaxed))
          : meta.publish_unix_ns;
  f->publish_unix_ns.store(stamp, std::memory_order_relaxed);
  f->origin.store(meta.origin, std::memory_order_relaxed);
  // SYNC POINT (commit): release - a reader that loads this state with acquire sees the
  // header fields and every payload byte written before it.
  f->state.store(loan.position | kFrameCommitted, std::memory_order_release);
  loan.active = false;
  notify_readers(meta.origin);
  // Counters for tools (and the latest stamp for the next publisher's), after the readers
  // were told: relaxed, nobody orders on them.
  h->payload_bytes.fetch_add(payload_bytes, std::memory_order_relaxed);
  h->last_publish_unix_ns.store(stamp, std::memory_order_relaxed);
  // Warm what the next claim touches - the next frame's header and the frame it will
  // retire - while the caller does something else. With large messages these sit on other
  // pages: the prefetch takes the page walk and cache miss off the next publish's path.
  // Small frames leave the next header on a hot line: nothing to gain there.
  if (claimed >= kPageSize) {
    __builtin_prefetch(ring_.frame_at(loan.position + claimed), 1, 3);
    __builtin_prefetch(
        ring_.frame_at(ring_.header()->retire_frontier.load(std::memory_order_relaxed)), 1, 3);
  }
}

void Publisher::abandon(RingLoan& loan) {
  if (!loan.active) return;
  FrameHeader* f = ring_.frame_at(loan.position);
  // Size stays as claimed (I5); the aborted flag tells readers the sequence number is void.
  f->state.store(loan.position | kFrameCommitted | kFramePadding | kFrameAborted,
                 std::memory_order_release);
  loan.active = false;
  notify_readers();
}

Status Publisher::publish(std::span<const std::byte> payload, const PublishMeta& meta,
                          WaitBudget wait) {
  if (payload.size() > ring_.max_payload()) return Status::kTooLarge;
  RingLoan loan;
  const Status status = claim(static_cast<uint32_t>(payload.size()), loan, wait);
  if (status != Status::kOk) return status;
  // An empty span may have a null data(); memcpy must never see null, even for 0 bytes.
  if (!payload.empty()) std::memcpy(loan.payload, payload.data(), payload.size());
  commit(loan, static_cast<uint32_t>(payload.size()), meta);
  return Status::kOk;
}

void Publisher::notify_readers(uint16_t origin) {
  // No doorbell linked: nobody can be asleep on this ring, no fence, no syscall. A reader
  // linking one concurrently runs a process-wide barrier before it checks the ring, so
  // either it sees our commit or we see its link (asymmetric Dekker, see futex.hpp).
  if (ring_.notify_high_water() == 0) return;
  // SYNC POINT: orders the commit store before the doorbell loads (store->load needs a full
  // fence); pairs with the seq_cst operations of Waiter.
  full_fence();
  ring_linked_doorbells(ring_, arenas_, origin);
}

void ring_linked_doorbells(RingRef ring, const ArenaTable* arenas, uint16_t origin) {
  if (arenas == nullptr) return;
  // An imported message is of no use to a local-only waiter (a bridge's exporter, which
  // would wake only to skip it); a back-pressure ring still wakes it, since publishers wait
  // for it to read past the message.
  const bool skip_local_only = origin != 0 && !ring.back_pressure();
  const uint32_t links = ring.notify_high_water();
  std::atomic<uint64_t>* notify = ring.notify();
  for (uint32_t i = 0; i < links; ++i) {
    const uint64_t ref = notify[i].load(std::memory_order_acquire);
    if (ref == ShmRef::kNone) continue;
    // Links are written into shared memory: follow one only once it checks out as one of
    // the bus's doorbells (a bad one is skipped; its subscriber's periodic look finds the
    // message, see Waiter::park_until).
    auto* d = arenas->resolve_doorbell(ref);
    if (d == nullptr) continue;
    if (skip_local_only && d->local_only.load(std::memory_order_relaxed) != 0) continue;
    doorbell::ring_doorbell(d, ShmRef::bit(ref), arenas->doorbells());
  }
}

Status Publisher::make_room(uint64_t need) {
  RingHeader* h = ring_.header();
  if (ring_.back_pressure()) {
    const uint64_t generation = ring_.readers()->generation.load(std::memory_order_acquire);
    if (generation != cached_reader_generation_ || cached_min_reader_ < need) {
      cached_min_reader_ = min_gating_position(false);
      cached_reader_generation_ = generation;
    }
    if (cached_min_reader_ < need) {
      h->back_pressure_waits.fetch_add(1, std::memory_order_relaxed);
      // A gating reader whose process died must not stall publishers until the daemon frees
      // its slot (at once when its connection closes; never if no daemon watches): look
      // past it. Only here, when held up - it costs a system call per gating reader.
      cached_min_reader_ = min_gating_position(true);
      if (cached_min_reader_ < need) return Status::kWouldBlock;
    }
  }
  if (h->retire_frontier.load(std::memory_order_acquire) >= need) return Status::kOk;
  // Retire a little past what this claim needs, so the frontier CAS is paid once per batch
  // instead of once per frame; lossy readers lose at most this much history early. Never
  // past a gating reader: its frames must stay until it has read them.
  uint64_t want = need + std::min<uint64_t>(ring_.capacity() / 32, 4096);
  if (ring_.back_pressure()) want = std::min(want, cached_min_reader_);
  return retire_until(need, want);
}

Status Publisher::retire_until(uint64_t need, uint64_t want) {
  // Reads frames at the frontier that another publisher may already have retired and begun
  // to overwrite; the CAS that follows then fails and the value read is discarded.
  const SeqlockReadScope helping;
  RingHeader* h = ring_.header();
  for (;;) {
    const uint64_t frontier = h->retire_frontier.load(std::memory_order_acquire);
    if (frontier >= need) return Status::kOk;
    // Walk consecutive frames from the frontier, retiring each committed one. Headers at or
    // above the frontier are intact until the frontier passes them (I2); if another
    // publisher moves it meanwhile, what we read may be stale, and the single CAS on the
    // frontier below fails, so nothing stale is ever published.
    uint64_t p = frontier;
    while (p < want) {
      FrameHeader* f = ring_.frame_at(p);
      uint64_t state = f->state.load(std::memory_order_acquire);
      if (!is_retired_at(state, p)) {
        if (frame_tag(state) != p) break;       // not claimed yet, or claimed without a header
        if (!(state & kFrameCommitted)) break;  // unfinished: never overwrite, never retire
      }
      const uint64_t size = frame_size(f->payload_length.load(std::memory_order_relaxed));
      if (!ring_.frame_fits(p, size, (state & kFramePadding) != 0)) {
        // No publisher writes such a size. Read from a frame being overwritten by a lap
        // that passed us (the frontier moved: start over), or forged.
        if (reload_after_reads(h->retire_frontier) != frontier) break;
        return Status::kCorrupt;
      }
      if (!is_retired_at(state, p)) {
        // SYNC POINT (retire): after this CAS no reader accepts the frame (they re-check
        // the state after reading), so its bytes may be reused once the frontier passes.
        // Success also proves `size` was read intact: the frontier only passes retired
        // frames, so nobody overwrote this one before our CAS.
        if (!f->state.compare_exchange_strong(state, retired_state(state),
                                              std::memory_order_acq_rel) &&
            !is_retired_at(state, p))
          break;  // changed under us to something other than "retired by someone else"
        if (is_retired_at(state, p) &&
            reload_after_reads(h->retire_frontier) > p)  // retired by another, then passed
          break;
      } else if (reload_after_reads(h->retire_frontier) > p) {
        // Retired by another publisher; its size is intact only while the frontier has not
        // passed it.
        break;
      }
      p += size;
    }
    if (p == frontier) {
      if (h->retire_frontier.load(std::memory_order_acquire) != frontier) continue;
      return Status::kWouldBlock;  // the frame at the frontier is unfinished
    }
    // Every frame walked lies below the claim position, which only grows: a walk past it
    // went over frames nobody claimed, so the frontier must not follow it (I1).
    if (p > ring_.claim_position_relaxed()) {
      if (reload_after_reads(h->retire_frontier) != frontier) continue;
      return Status::kCorrupt;
    }
    uint64_t expected = frontier;
    h->retire_frontier.compare_exchange_strong(expected, p, std::memory_order_acq_rel);
  }
}

uint64_t Publisher::min_gating_position(bool skip_dead) const {
  const uint32_t slots = ring_.slot_high_water();
  uint64_t minimum = ~uint64_t{0};
  for (uint32_t i = 0; i < slots; ++i) {
    const ReaderSlot* s = ring_.slot(i);
    if (s->state.load(std::memory_order_acquire) != kSlotGating) continue;
    if (skip_dead && process_is_dead(s->pid.load(std::memory_order_relaxed))) continue;
    // Acquire: pairs with the reader's release store of its position after it finished
    // with the bytes below it.
    minimum = std::min(minimum, s->position.load(std::memory_order_acquire));
  }
  return minimum;
}

// ---- Reader -------------------------------------------------------------------------------

Reader::Reader(RingRef ring, Start start, uint64_t after_sequence) : ring_(ring) {
  switch (start) {
    case Start::kLatest: {
      const ClaimWord claim = ring_.read_claim();  // the ring may be mapped read-only
      position_ = claim.position;
      next_sequence_ = claim.sequence;
      sequence_known_ = true;
      break;
    }
    case Start::kEarliest:
      // The oldest frame still in the ring; whatever came before it is history, not loss.
      position_ = ring_.retire_frontier();
      sequence_known_ = false;
      break;
    case Start::kAfterSequence: seek_sequence(after_sequence + 1); break;
  }
}

Reader::~Reader() {
  unregister();
}

void Reader::seek_sequence(uint64_t first_wanted) {
  // Walks frames from the frontier, which publishers may retire and overwrite meanwhile
  // (this reader gates nobody yet); every value read is re-checked.
  const SeqlockReadScope frames_may_move;
  const ClaimWord claim = ring_.read_claim();
  auto start_at_head = [&] {
    position_ = claim.position;
    next_sequence_ = std::min(first_wanted, claim.sequence);
    sequence_known_ = true;
  };
  if (first_wanted >= claim.sequence || !ring_.claim_plausible()) {
    // Nothing that new yet (or the ring was recreated with lower numbers, or its claim and
    // frontier contradict each other): start at the head.
    start_at_head();
    return;
  }
  // Bounded: a pass visits at most a lap of frames, and a pass restarts only when a lap
  // passed it; a ring whose frames keep contradicting themselves gets the head instead.
  const uint64_t max_steps = ring_.capacity() / kFrameAlignment + 1;
  for (int pass = 0; pass < 64; ++pass) {
    uint64_t p = ring_.retire_frontier();
    bool restart = false;
    for (uint64_t step = 0; p < claim.position; ++step) {
      FrameHeader* f = ring_.frame_at(p);
      const uint64_t state = f->state.load(std::memory_order_acquire);
      if (frame_tag(state) != p) {  // retired, or claimed without a header yet
        restart = ring_.retire_frontier() > p || is_retired_at(state, p);
        break;  // unfinished claim without header: the wanted message is here or later
      }
      const uint64_t sequence = f->sequence.load(std::memory_order_relaxed);
      const uint32_t length = f->payload_length.load(std::memory_order_relaxed);
      if (reload_after_reads(f->state) != state) {
        restart = true;
        break;
      }
      // Data frames carry their own number; padding carries the next one's.
      const bool is_data = !(state & kFramePadding);
      if (sequence >= first_wanted || (is_data && sequence + 1 > first_wanted)) break;
      if (step >= max_steps || !ring_.frame_fits(p, frame_size(length), !is_data)) {
        ++corrupt_;
        start_at_head();
        return;
      }
      p += frame_size(length);
    }
    if (restart) continue;
    position_ = p;
    next_sequence_ = first_wanted;
    sequence_known_ = true;
    skip_below_ = first_wanted;
    return;
  }
  start_at_head();
}

void Reader::register_slot(bool gating, uint64_t doorbell_ref, DoorbellHeader* doorbell,
                           const DoorbellGeometry& geometry) {
  if (slot_ >= 0) throw std::logic_error("reader already registered");
  if (doorbell_ref != ShmRef::kNone &&
      (doorbell == nullptr || ShmRef::bit(doorbell_ref) >= geometry.bits))
    throw std::invalid_argument("a doorbell link needs the mapped doorbell and its geometry");
  const int32_t slot = claim_reader_slot(
      ring_, SlotClaim{position_, 0, static_cast<int32_t>(getpid()), gating, doorbell_ref});
  if (slot < 0)
    throw std::runtime_error("ring has no free reader slot (" +
                             std::to_string(ring_.reader_capacity()) +
                             " readers); raise reader_capacity for this channel");
  slot_ = slot;
  slot_owner_ = 0;  // claimed above with owner token 0
  lappable_ = !(gating && ring_.back_pressure());
  if (doorbell_ref != ShmRef::kNone) {
    doorbell_ = doorbell;
    doorbell_geometry_ = geometry;
    doorbell_bit_ = ShmRef::bit(doorbell_ref);
    // Publishers read notify_high_water without a fence after their commit; this barrier
    // makes any commit they issued before it visible to our next has_data(), and any
    // commit after it is followed by a load that sees our link.
    process_wide_barrier();
  }
  // A gating reader holds publishers back only from now on: if the ring moved on while
  // registering, start from what is still there.
  if (gating) jump_if_lapped();
}

void Reader::adopt_slot(uint32_t slot, DoorbellHeader* doorbell, const DoorbellGeometry& geometry,
                        uint32_t doorbell_bit, bool from_slot, uint64_t sequence) {
  if (slot_ >= 0) throw std::logic_error("reader already registered");
  if (slot >= ring_.reader_capacity()) throw std::out_of_range("reader slot out of range");
  if (doorbell != nullptr && doorbell_bit >= geometry.bits)
    throw std::out_of_range("doorbell bit out of range");
  slot_ = static_cast<int32_t>(slot);
  doorbell_ = doorbell;
  doorbell_geometry_ = geometry;
  doorbell_bit_ = doorbell_bit;
  ReaderSlot* s = ring_.slot(slot);
  slot_owner_ = s->owner.load(std::memory_order_relaxed);
  lappable_ = !(s->state.load(std::memory_order_relaxed) == kSlotGating && ring_.back_pressure());
  if (from_slot) {
    position_ = s->position.load(std::memory_order_acquire);
    // The slot is in shared memory: a position no publisher has reached (or not a frame
    // boundary) was not written by the daemon. Start at the head instead.
    if (position_ % kFrameAlignment != 0 || position_ > ring_.claim_position_relaxed()) {
      ++corrupt_;
      position_ = ring_.claim_position_relaxed();
    }
    next_sequence_ = sequence;
    sequence_known_ = true;
    skip_below_ = 0;
  } else {
    // The slot was registered at or before our start (the daemon registers at the retire
    // frontier for these starts), so moving it forward never un-gates frames we need.
    s->position.store(position_, std::memory_order_release);
  }
  jump_if_lapped();
}

void Reader::unregister() {
  if (slot_ < 0) return;
  ReaderSlot* s = ring_.slot(static_cast<uint32_t>(slot_));
  // Only while the slot is still ours: had the daemon freed it (it thought us dead) and
  // given it to another reader, clearing it would silently unsubscribe that reader.
  if (s->state.load(std::memory_order_acquire) != kSlotFree &&
      s->owner.load(std::memory_order_relaxed) == slot_owner_) {
    ring_.notify()[slot_].store(ShmRef::kNone, std::memory_order_release);
    s->state.store(kSlotFree, std::memory_order_release);
    ring_.readers()->generation.fetch_add(1, std::memory_order_acq_rel);
  }
  slot_ = -1;
  doorbell_ = nullptr;
}

bool Reader::jump_if_lapped() {
  const uint64_t frontier = ring_.retire_frontier();
  if (frontier <= position_ || frontier == corrupt_frontier_) return false;
  jump_after_lap();
  return true;
}

void Reader::jump_after_lap() {
  // Count lap events, not retries: re-jumping before anything was delivered is the same lap.
  if (delivered_ != delivered_at_last_lap_ || lapped_ == 0) ++lapped_;
  delivered_at_last_lap_ = delivered_;
  empty_polls_ = 0;
  // The oldest frame not yet retired; the loss is counted from the next message's number.
  // Never backwards: that would deliver again what was delivered. A frontier past the claim
  // position is not one a publisher wrote: jumping there would leave us waiting for a
  // position the ring may never reach.
  const uint64_t frontier = ring_.retire_frontier();
  if (frontier > position_ && frontier != corrupt_frontier_) {
    if (frontier % kFrameAlignment != 0 || frontier > ring_.claim_position_relaxed()) {
      corrupt_frontier_ = frontier;  // not followed, and not looked at again until it moves
      ++corrupt_;
      return;
    }
    position_ = frontier;
  }
  store_slot_position();
}

void Reader::skip_corruption(uint64_t state) {
  ++corrupt_;
  // Skip to the head if the claim and the frontier still make sense, and it lies ahead;
  // the next message's sequence gap then counts what was skipped as lost. Otherwise stay,
  // and treat the frame here as empty until its state changes (a publisher writes a new
  // frame over it) - not spinning on it, and never handing it out.
  const uint64_t head = ring_.claim_position_relaxed();
  if (head > position_ && ring_.claim_plausible() && head % kFrameAlignment == 0) {
    position_ = head;
    corrupt_state_ = kNoCorruptState;
    store_slot_position();
    return;
  }
  // Nothing claimed past here (a frame forged ahead of the claim), or the claim itself is
  // not believable: wait for a publisher's claim or the daemon's quarantine to move it.
  corrupt_state_ = state;
  corrupt_claim_ = head;
}

bool Reader::still_corrupt(uint64_t state) const {
  return state == corrupt_state_ && ring_.claim_position_relaxed() == corrupt_claim_;
}

void Reader::store_slot_position() {
  if (slot_ < 0) return;
  // Only while the slot is still ours: a reader slow to give it back may have lost it (the
  // daemon takes such slots back), and it may be another reader's by now.
  ReaderSlot* s = ring_.slot(static_cast<uint32_t>(slot_));
  if (s->owner.load(std::memory_order_relaxed) == slot_owner_)
    s->position.store(position_, std::memory_order_release);
}

Status Reader::try_read(MessageView& view) {
  // A reader that can be lapped may find the header at its position a lap newer than it
  // thinks; every value is re-checked against the state before it is used. A gating reader
  // of a back-pressure ring is never overwritten under, so there every access (and the
  // payload copy) stays checked.
  const SeqlockReadScope may_be_lapped(lappable_);
  // Frames stepped over per call (padding, retired, skipped) are bounded by a lap, so a
  // ring someone keeps filling with padding cannot keep this call from returning.
  for (uint64_t steps_left = ring_.capacity() / kFrameAlignment + 2; steps_left > 0; --steps_left) {
    FrameHeader* f = ring_.frame_at(position_);
    // SYNC POINT (read): acquire pairs with the publisher's release commit.
    const uint64_t state = f->state.load(std::memory_order_acquire);
    if (still_corrupt(state)) return Status::kEmpty;  // found corrupt; nothing moved since
    if (is_retired_at(state, position_)) {
      if (jump_if_lapped()) continue;
      // Retired, but the publisher that retired it has not moved the frontier yet (or died
      // in between): its message is gone; step over it rather than spin. The size is intact
      // while the frontier has not passed it.
      const uint32_t retired_length = f->payload_length.load(std::memory_order_relaxed);
      if (reload_after_reads(ring_.header()->retire_frontier) > position_) continue;
      if (!ring_.frame_fits(position_, frame_size(retired_length), (state & kFramePadding) != 0)) {
        skip_corruption(state);
        continue;
      }
      position_ += frame_size(retired_length);
      continue;
    }
    if (frame_tag(state) != position_) {
      // Not written yet - or we were lapped and this is newer data. A higher tag proves the
      // lap; otherwise ask the frontier now and then, not on every idle poll, because
      // publishers write its line on every message.
      if ((frame_tag(state) > position_ || ++empty_polls_ % 16 == 0) && jump_if_lapped()) continue;
      return Status::kEmpty;
    }
    if (!(state & kFrameCommitted)) return Status::kEmpty;  // being written
    empty_polls_ = 0;
    const uint32_t length = f->payload_length.load(std::memory_order_relaxed);
    const uint64_t sequence = f->sequence.load(std::memory_order_relaxed);
    const bool padding = (state & kFramePadding) != 0;
    // A data frame never crosses the end (I4) and padding is at most a lap; a length that
    // says otherwise was read from a header being overwritten (the state changed: a lap)
    // or was forged (the state still says this frame: skip it, never hand it out). (The
    // data check is the one every message pays: kept to the two compares it always was.)
    const bool fits =
        padding ? frame_size(length) <= ring_.capacity()
                : length <= ring_.max_payload() &&
                      (position_ & ring_.mask()) + kFrameHeaderBytes + length <= ring_.capacity();
    if (!fits) [[unlikely]] {
      if (reload_after_reads(f->state) != state)
        jump_after_lap();
      else
        skip_corruption(state);
      continue;
    }
    if (padding) {
      if (reload_after_reads(f->state) != state) {
        jump_after_lap();
        continue;
      }
      if ((state & kFrameAborted) && (!sequence_known_ || sequence >= next_sequence_)) {
        // A message that was claimed but never completed (abandoned, or its publisher died):
        // lost, exactly as a lapped reader that skipped its number would count it. Every
        // sequence number is thus either delivered or reported lost, for every reader.
        unreported_lost_ += (sequence_known_ ? sequence - next_sequence_ : 0) + 1;
        next_sequence_ = sequence + 1;
        sequence_known_ = true;
      }
      position_ += frame_size(length);
      store_slot_position();
      continue;
    }
    if (sequence < skip_below_) {
      // Resuming after a sequence: the walk stopped at a frame whose header was not written
      // yet, which turned out to hold a message the caller already has. Step over it.
      if (reload_after_reads(f->state) != state) continue;
      position_ += frame_size(length);
      continue;
    }
    view.sequence = sequence;
    view.position = position_;
    view.publish_unix_ns = f->publish_unix_ns.load(std::memory_order_relaxed);
    view.length = length;
    view.publisher_id = f->publisher_id.load(std::memory_order_relaxed);
    view.origin = f->origin.load(std::memory_order_relaxed);
    view.payload = reinterpret_cast<const std::byte*>(f) + kFrameHeaderBytes;
    view.observed_state = state;
    uint64_t gap = 0;
    if (sequence_known_ && sequence > next_sequence_) gap = sequence - next_sequence_;
    view.lost_before = unreported_lost_ + gap;
    return Status::kOk;
  }
  return Status::kEmpty;  // stepped over a lap of frames: let the caller breathe
}

bool Reader::intact(const MessageView& view) const {
  // SYNC POINT (validate): the acquire fence orders every read of the view before this
  // re-read of the state; a publisher retires the frame (changing the state) before it
  // writes a byte of it, so an unchanged state proves the bytes were intact.
  const SeqlockReadScope may_be_lapped(lappable_);
  return reload_after_reads(ring_.frame_at(view.position)->state) == view.observed_state;
}

bool Reader::consume(const MessageView& view) {
  if (!intact(view)) {
    jump_after_lap();
    return false;
  }
  advance_past(view);
  return true;
}

void Reader::accept(const MessageView& view) {
  const bool still_in_place = intact(view);
  advance_past(view);
  // Overwritten after the caller's check: the frames after it may be gone too. The jump
  // never goes backwards, and next_sequence_ now counts what follows this message.
  if (!still_in_place) jump_after_lap();
}

void Reader::advance_past(const MessageView& view) {
  lost_ += view.lost_before;
  unreported_lost_ = 0;
  next_sequence_ = view.sequence + 1;
  sequence_known_ = true;
  position_ = view.position + frame_size(view.length);
  // After a large frame, warm the next header (its page may be a megabyte away) before
  // we spin on it.
  if (view.length >= kPageSize) __builtin_prefetch(ring_.frame_at(position_), 0, 3);
  ++delivered_;
  if (slot_ >= 0) publish_slot_stats();
}

void Reader::publish_slot_stats() {
  ReaderSlot* s = ring_.slot(static_cast<uint32_t>(slot_));
  s->lost.store(lost_, std::memory_order_relaxed);
  s->delivered.store(delivered_, std::memory_order_relaxed);
  // Release: publishers that acquire this position may overwrite everything below it.
  s->position.store(position_, std::memory_order_release);
}

void Reader::copy_payload(const MessageView& view, std::vector<std::byte>& buffer) const {
  buffer.resize(view.length);
  copy_out_of_ring(buffer.data(), view.payload, view.length, lappable_);
}

Status Reader::try_read_copy(std::vector<std::byte>& buffer, MessageInfo& info) {
  for (;;) {
    MessageView view;
    const Status status = try_read(view);
    if (status != Status::kOk) return status;
    copy_payload(view, buffer);
    if (consume(view)) {
      info = view;
      return Status::kOk;
    }
  }
}

bool Reader::has_data() const {
  const SeqlockReadScope may_be_lapped(lappable_);
  const FrameHeader* f = ring_.frame_at(position_);
  // seq_cst: the re-check after announcing a sleeper (Waiter::park_until).
  const uint64_t state = f->state.load(std::memory_order_seq_cst);
  if (still_corrupt(state)) return false;  // found corrupt; nothing moved since
  if (frame_tag(state) == position_ || is_retired_at(state, position_))
    return (state & (kFrameCommitted | kFrameRetired)) != 0;
  const uint64_t frontier = ring_.header()->retire_frontier.load(std::memory_order_seq_cst);
  return frontier > position_ && frontier != corrupt_frontier_;
}

Status Reader::wait(std::chrono::nanoseconds timeout, std::chrono::nanoseconds spin) {
  WaitPlan plan;
  if (spin_until_ready([this] { return has_data(); }, timeout, spin, plan)) return Status::kOk;
  if (doorbell_ == nullptr) {
    // No doorbell linked: poll with short sleeps.
    Backoff backoff(plan.forever ? kWaitForever : plan.deadline - std::chrono::steady_clock::now());
    while (!has_data())
      if (!backoff.pause()) return Status::kTimedOut;
    return Status::kOk;
  }
  Waiter waiter(doorbell_, doorbell_geometry_);
  // Clear our bit so the next publisher sets it and checks for a parked waiter (doorbell.hpp).
  waiter.disarm_bit(doorbell_bit_);
  return waiter.park_until([this] { return has_data(); }, plan.deadline, plan.forever);
}

// ---- Owner-side maintenance ---------------------------------------------------------------

namespace {

// Moves the frontier over frames that are retired but not yet passed - left so by a
// publisher that stopped or died between its retire CAS and its frontier CAS.
// How many frames one maintenance walk may visit: a lap of the smallest frames and a few
// restarts. Walks run in the daemon's event loop; a ring whose frames never end (written so
// by a hostile process) must not keep the loop from answering everyone else.
uint64_t walk_budget(RingRef ring) {
  return 4 * (ring.capacity() / kFrameAlignment + 2);
}

// Moves the frontier over frames that are retired but not yet passed - left so by a
// publisher that stopped or died between its retire CAS and its frontier CAS. False if a
// retired frame's size cannot be right (the ring is corrupt).
bool advance_frontier_over_retired(RingRef ring) {
  const SeqlockReadScope frames_may_move;  // the size read is checked by the frontier CAS
  RingHeader* h = ring.header();
  for (uint64_t steps = walk_budget(ring); steps > 0; --steps) {
    uint64_t frontier = h->retire_frontier.load(std::memory_order_acquire);
    FrameHeader* f = ring.frame_at(frontier);
    const uint64_t state = f->state.load(std::memory_order_acquire);
    if (!is_retired_at(state, frontier)) return true;
    const uint64_t size = frame_size(f->payload_length.load(std::memory_order_relaxed));
    if (!ring.frame_fits(frontier, size, (state & kFramePadding) != 0) ||
        frontier + size > ring.claim_position_relaxed()) {
      if (h->retire_frontier.load(std::memory_order_acquire) != frontier) continue;
      return false;
    }
    // The size is intact while the frontier is still here; the CAS checks exactly that.
    h->retire_frontier.compare_exchange_strong(frontier, frontier + size,
                                               std::memory_order_acq_rel);
  }
  return true;  // out of budget: someone else keeps moving it, which is progress
}

// Where a walk over the frames stopped.
struct WalkEnd {
  uint64_t position = 0;
  bool corrupt = false;  // a frame no publisher writes, or out of budget
};

// Walks committed and in-progress frames from the retire frontier towards the claim
// position; calls on_frame(position, frame, state, sequence) for each frame with a header,
// stopping when it returns false. Stops at the claim position, a frame claimed without a
// header, where on_frame said stop, or a frame that cannot be right (corrupt). Bounded by
// walk_budget().
template <typename OnFrame>
WalkEnd walk_frames(RingRef ring, OnFrame&& on_frame) {
  // Frames ahead of the frontier may be retired and overwritten while we walk; each header
  // is re-checked against its state. (on_frame's own accesses are atomics on that header.)
  const SeqlockReadScope frames_may_move;
  if (!advance_frontier_over_retired(ring) || !ring.claim_plausible())
    return {ring.retire_frontier(), true};
  uint64_t budget = walk_budget(ring);
  for (;;) {
    const uint64_t tail = ring.load_claim().position;
    uint64_t p = ring.retire_frontier();
    bool restart = false;
    while (p < tail) {
      if (budget-- == 0) return {p, true};
      FrameHeader* f = ring.frame_at(p);
      const uint64_t state = f->state.load(std::memory_order_acquire);
      if (frame_tag(state) != p) {
        if (ring.retire_frontier() > p || is_retired_at(state, p)) {
          if (!advance_frontier_over_retired(ring)) return {p, true};
          restart = true;
          break;
        }
        return {p, false};  // claimed, no header yet
      }
      const uint32_t length = f->payload_length.load(std::memory_order_relaxed);
      const uint64_t sequence = f->sequence.load(std::memory_order_relaxed);
      if (reload_after_reads(f->state) != state) {
        restart = true;
        break;
      }
      const uint64_t size = frame_size(length);
      if (!ring.frame_fits(p, size, (state & kFramePadding) != 0) || p + size > tail) {
        if (ring.retire_frontier() > p) {  // overwritten under us by a lap: start over
          restart = true;
          break;
        }
        return {p, true};
      }
      if (!on_frame(p, f, state, sequence)) return {p, false};
      p += size;
    }
    if (!restart) return {p, false};
    if (budget == 0) return {p, true};
  }
}

// The sequence number the claim starting after a frame will take: data frames and aborted
// padding carry their own number, plain padding the number of the next message.
uint64_t next_claim_sequence(uint64_t state, uint64_t sequence) {
  const bool plain_padding = (state & kFramePadding) && !(state & kFrameAborted);
  return plain_padding ? sequence : sequence + 1;
}

bool pad_claimed_frame(RingRef ring, FrameHeader* f, uint64_t state) {
  const uint64_t position = frame_tag(state);
  // The size stays as claimed (I5); only the state changes, by CAS so that a commit that
  // did happen is never overwritten.
  uint64_t expected = state;
  if (!f->state.compare_exchange_strong(expected,
                                        position | kFrameCommitted | kFramePadding | kFrameAborted,
                                        std::memory_order_acq_rel))
    return false;
  ring.header()->repaired_frames.fetch_add(1, std::memory_order_relaxed);
  return true;
}

// Readers parked on doorbells learn that the frame holding them up is gone.
void announce_repair(RingRef ring, const ArenaTable* arenas) {
  full_fence();
  ring_linked_doorbells(ring, arenas);
}

}  // namespace

RepairResult repair_dead_publisher(RingRef ring, uint16_t publisher_id, const ArenaTable* arenas) {
  RepairResult result;
  const WalkEnd end = walk_frames(ring, [&](uint64_t, FrameHeader* f, uint64_t state, uint64_t) {
    if (!(state & kFrameCommitted) &&
        f->publisher_id.load(std::memory_order_relaxed) == publisher_id &&
        pad_claimed_frame(ring, f, state))
      ++result.repaired;
    return true;
  });
  result.corrupt = end.corrupt;
  result.complete = !end.corrupt && end.position >= ring.claim_position_relaxed();
  if (result.repaired) announce_repair(ring, arenas);
  return result;
}

RingInspection inspect_ring(RingRef ring) {
  RingInspection inspection;
  if (!ring.header_matches_geometry()) {
    inspection.problem = "its configuration line was overwritten";
  } else if (!ring.claim_plausible()) {
    inspection.problem = "its claim position and retire frontier contradict each other";
  } else {
    const uint64_t tail = ring.claim_position_relaxed();
    const WalkEnd end = walk_frames(ring, [](uint64_t, FrameHeader*, uint64_t state, uint64_t) {
      return (state & kFrameCommitted) != 0;
    });
    if (end.corrupt) {
      inspection.problem = "a frame at stream position " + std::to_string(end.position) +
                           " has a size no publisher writes";
    } else if (end.position < tail) {
      inspection.first_unfinished = end.position;
    }
  }
  inspection.corrupt = !inspection.problem.empty();
  return inspection;
}

bool frame_has_header(RingRef ring, uint64_t position) {
  return frame_tag(ring.frame_at(position)->state.load(std::memory_order_acquire)) == position;
}

StalledRepair repair_stalled_frame(RingRef ring, uint64_t position, const ArenaTable* arenas) {
  // Walk up to `position`, learning the sequence number the claim there must carry.
  std::optional<uint64_t> expected_sequence;
  const WalkEnd reached =
      walk_frames(ring, [&](uint64_t p, FrameHeader*, uint64_t state, uint64_t sequence) {
        if (p == position) return false;
        expected_sequence = next_claim_sequence(state, sequence);
        return true;
      });
  if (reached.corrupt) return StalledRepair::kCorrupt;
  if (reached.position != position) return StalledRepair::kNotNow;  // not held up there
  FrameHeader* f = ring.frame_at(position);
  const uint64_t state = f->state.load(std::memory_order_acquire);
  if (is_retired_at(state, position)) return StalledRepair::kNotNow;
  if (frame_tag(state) == position) {
    if ((state & kFrameCommitted) || !pad_claimed_frame(ring, f, state))
      return StalledRepair::kNotNow;
    announce_repair(ring, arenas);
    return StalledRepair::kRepaired;
  }
  // The publisher died between its claim and its header. Claims are contiguous (I3), so its
  // frame ends where the next claim starts: scan 32-byte steps for a header tagged with its
  // own position, or up to the claim position if there is none. A claim spans at most a
  // lap, so the scan does too.
  const ClaimWord claim = ring.load_claim();
  if (position < ring.retire_frontier() || position >= claim.position)
    return StalledRepair::kNotNow;
  if (claim.position - position > ring.capacity()) return StalledRepair::kCorrupt;
  uint64_t end = claim.position;
  uint64_t next_sequence = claim.sequence;
  for (uint64_t q = position + kFrameAlignment; q < claim.position; q += kFrameAlignment) {
    const FrameHeader* next = ring.frame_at(q);
    const uint64_t next_state = next->state.load(std::memory_order_acquire);
    if (frame_tag(next_state) == q) {
      end = q;
      next_sequence = next->sequence.load(std::memory_order_relaxed);  // its claim's number
      break;
    }
  }
  // The gap must hold exactly one claim: another headerless claim in it may belong to a
  // live publisher about to write, and padding over it would hide its message and let the
  // next lap overwrite its frame. Try again later then. (At the frontier nothing before it
  // tells the number; the gap is taken to be one claim.)
  if (expected_sequence && next_sequence != *expected_sequence + 1) return StalledRepair::kNotNow;
  const uint64_t dead_sequence = expected_sequence ? *expected_sequence : next_sequence - 1;
  write_header_fields(f, dead_sequence, static_cast<uint32_t>(end - position - kFrameHeaderBytes),
                      0);
  uint64_t expected = state;
  if (!f->state.compare_exchange_strong(expected,
                                        position | kFrameCommitted | kFramePadding | kFrameAborted,
                                        std::memory_order_acq_rel))
    return StalledRepair::kNotNow;
  ring.header()->repaired_frames.fetch_add(1, std::memory_order_relaxed);
  announce_repair(ring, arenas);
  return StalledRepair::kRepaired;
}

uint32_t release_reader_slots_of(RingRef ring, int32_t pid) {
  uint32_t released = 0;
  const uint32_t slots = ring.slot_high_water();
  for (uint32_t i = 0; i < slots; ++i) {
    ReaderSlot* s = ring.slot(i);
    if (s->state.load(std::memory_order_acquire) == kSlotFree ||
        s->pid.load(std::memory_order_relaxed) != pid)
      continue;
    ring.notify()[i].store(ShmRef::kNone, std::memory_order_release);
    s->state.store(kSlotFree, std::memory_order_release);
    ++released;
  }
  if (released) ring.readers()->generation.fetch_add(1, std::memory_order_acq_rel);
  return released;
}

int32_t claim_reader_slot(RingRef ring, const SlotClaim& claim) {
  ReaderTableHeader* table = ring.readers();
  const uint32_t capacity = ring.reader_capacity();
  for (uint32_t i = 0; i < capacity; ++i) {
    ReaderSlot* s = ring.slot(i);
    if (s->state.load(std::memory_order_relaxed) != kSlotFree) continue;
    // Position first, then the state with release: a publisher that sees the slot gating
    // sees where it stands.
    s->position.store(claim.position, std::memory_order_relaxed);
    s->pid.store(claim.pid, std::memory_order_relaxed);
    s->owner.store(claim.owner, std::memory_order_relaxed);
    s->lost.store(0, std::memory_order_relaxed);
    s->delivered.store(0, std::memory_order_relaxed);
    uint32_t expected = kSlotFree;
    if (!s->state.compare_exchange_strong(expected, claim.gating ? kSlotGating : kSlotActive,
                                          std::memory_order_acq_rel))
      continue;
    uint32_t high = table->slot_high_water.load(std::memory_order_relaxed);
    while (high < i + 1 &&
           !table->slot_high_water.compare_exchange_weak(high, i + 1, std::memory_order_acq_rel)) {
    }
    // Always written, so no link of a previous owner of this slot survives.
    ring.notify()[i].store(claim.doorbell_ref, std::memory_order_release);
    if (claim.doorbell_ref != ShmRef::kNone) {
      uint32_t links = table->notify_high_water.load(std::memory_order_relaxed);
      while (links < i + 1 && !table->notify_high_water.compare_exchange_weak(
                                  links, i + 1, std::memory_order_acq_rel)) {
      }
    }
    table->generation.fetch_add(1, std::memory_order_acq_rel);
    return static_cast<int32_t>(i);
  }
  return -1;
}

uint32_t release_all_reader_slots(RingRef ring) {
  uint32_t released = 0;
  for (uint32_t i = 0; i < ring.reader_capacity(); ++i) {
    ReaderSlot* s = ring.slot(i);
    ring.notify()[i].store(ShmRef::kNone, std::memory_order_release);
    if (s->state.exchange(kSlotFree, std::memory_order_acq_rel) != kSlotFree) ++released;
  }
  ring.readers()->generation.fetch_add(1, std::memory_order_acq_rel);
  return released;
}

bool release_reader_slot(RingRef ring, uint32_t slot, uint64_t owner) {
  if (slot >= ring.reader_capacity()) return false;
  ReaderSlot* s = ring.slot(slot);
  if (s->state.load(std::memory_order_acquire) == kSlotFree ||
      s->owner.load(std::memory_order_relaxed) != owner)
    return false;
  ring.notify()[slot].store(ShmRef::kNone, std::memory_order_release);
  s->state.store(kSlotFree, std::memory_order_release);
  ring.readers()->generation.fetch_add(1, std::memory_order_acq_rel);
  return true;
}

uint32_t reader_slots_in_use(RingRef ring) {
  uint32_t in_use = 0;
  const uint32_t slots = ring.slot_high_water();
  for (uint32_t i = 0; i < slots; ++i)
    if (ring.slot(i)->state.load(std::memory_order_acquire) != kSlotFree) ++in_use;
  return in_use;
}

}  // namespace shmbus
