// The channel ring: many publishers, broadcast readers, all in shared memory.
//
// Publishing (Publisher) is Aeron's claim/commit with two changes for a lossy broadcast
// ring shared by several processes:
//  1. The claim is one 16-byte CAS on (position, sequence), so message sequence order is
//     stream order and a lapped reader counts exactly what it lost.
//  2. Before bytes of the previous lap are overwritten, their frames are *retired*: each
//     frame's state is CASed from committed to retired and the retire frontier advances past
//     it. A frame that is not committed cannot be retired, so a publisher never overwrites
//     another publisher's unfinished frame; it waits (or gets kWouldBlock) instead.
// Reading (Reader) spins on the frame's own state word (no shared tail counter on the hot
// path), reads, then re-reads the state: a frame retired meanwhile is reported as lost,
// never handed out as intact (Agrona's validate-after-read).
//
// Invariants (positions are byte offsets in the endless stream; offset = position & mask):
//  I1  retire_frontier <= claim.position <= retire_frontier + capacity.
//  I2  Every frame wholly below retire_frontier is marked kFrameRetired or overwritten;
//      bytes at position p may be written only when p < retire_frontier + capacity.
//  I3  [retire_frontier, claim.position) is a contiguous sequence of claimed frames; a
//      frame's state tag equals its position once its publisher has written its header.
//  I4  Data frames never cross the end of the data area; only padding does.
//  I5  A frame's payload_length (hence its size) is final before its state says writing
//      or committed, and is never changed afterwards.
//
// Thread safety: a RingRef is a plain view, copyable, usable from any thread. A Publisher or
// a Reader is used by one thread at a time; any number of them may act on one ring from any
// threads and processes at once.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "arena.hpp"
#include "doorbell.hpp"
#include "layout.hpp"
#include "status.hpp"

namespace shmbus {

// Process-local map from arena id to where this process mapped that arena, so ShmRef values
// stored in shared memory (doorbell links) resolve in every process. A link is written by
// other processes, so it is followed only after resolve_doorbell() has checked it against
// the arena's mapped size and the bus's doorbell geometry, both kept here in process memory.
// Entries are atomic so a thread may map a new arena while publishers in other threads
// resolve links (relaxed loads cost nothing on x86; the mapping itself is published by the
// release store).
class ArenaTable {
 public:
  void add(const Arena& arena) { add(arena.id(), arena.base(), arena.size()); }
  void add(uint32_t arena_id, std::byte* base, uint64_t bytes) {
    sizes_.at(arena_id).store(bytes, std::memory_order_relaxed);
    bases_.at(arena_id).store(base, std::memory_order_release);
  }
  std::byte* base(uint32_t arena_id) const {
    return bases_.at(arena_id).load(std::memory_order_acquire);
  }
  uint64_t size(uint32_t arena_id) const {
    return sizes_.at(arena_id).load(std::memory_order_relaxed);
  }
  // The bus's doorbells: every one is `bits` bits (so layout::doorbell_bytes(bits) long) and
  // lives in arena `arena_id`, at a multiple of layout::doorbell_stride(bits) from its first
  // page. Set once, before any publisher resolves a link; bits 0 means "not known": no link
  // resolves.
  void set_doorbells(uint32_t arena_id, uint32_t bits) {
    doorbell_arena_ = arena_id;
    doorbells_ = DoorbellGeometry(bits);
  }
  const DoorbellGeometry& doorbells() const { return doorbells_; }
  // The doorbell a link points at, or nullptr if the link cannot be one of the bus's
  // doorbells (another arena, outside the mapping, misaligned, or a bit past the doorbell's
  // end). A link that passes may still name the wrong doorbell or a stale one: ringing it
  // costs a spurious wake-up, never a write outside a doorbell.
  layout::DoorbellHeader* resolve_doorbell(uint64_t ref) const {
    const uint32_t arena_id = layout::ShmRef::arena_id(ref);
    const uint64_t offset = layout::ShmRef::offset(ref);
    if (arena_id != doorbell_arena_ || layout::ShmRef::bit(ref) >= doorbells_.bits ||
        offset < layout::kPageSize || ((offset - layout::kPageSize) & (doorbells_.stride - 1)) != 0)
      return nullptr;
    std::byte* arena = bases_[arena_id].load(std::memory_order_acquire);
    const uint64_t size = sizes_[arena_id].load(std::memory_order_relaxed);
    if (arena == nullptr || offset > size || size - offset < doorbells_.bytes) return nullptr;
    return reinterpret_cast<layout::DoorbellHeader*>(arena + offset);
  }

 private:
  std::array<std::atomic<std::byte*>, 256> bases_{};
  std::array<std::atomic<uint64_t>, 256> sizes_{};
  uint32_t doorbell_arena_ = 0;
  DoorbellGeometry doorbells_;
};

struct RingConfig {
  uint64_t capacity = 64 * 1024;  // data bytes; a power of two, at least 4 KiB
  uint32_t max_payload = 0;       // 0: the largest that fits (see RingRef::largest_payload)
  bool back_pressure = false;     // publishers wait for gating readers instead of lapping them
  uint32_t reader_capacity = 64;  // registered readers (slots) this ring can hold
  uint32_t channel_id = 0;
};

// A ring's shape as its owner decided it (max_payload resolved). Every process opens a ring
// with the geometry the daemon told it, and checks the ring's header against it then.
struct RingGeometry {
  uint64_t capacity = 0;
  uint32_t max_payload = 0;
  bool back_pressure = false;
  uint32_t reader_capacity = 0;
  uint32_t channel_id = 0;
  friend bool operator==(const RingGeometry&, const RingGeometry&) = default;
};

// A ring mapped in this process: its block (header page and data) and its reader table,
// which lives elsewhere (a reader arena; layout.hpp).
class RingRef {
 public:
  // Bytes of the ring block and of the reader table a ring with this config needs.
  static uint64_t block_bytes(const RingConfig& config) {
    return layout::ring_block_bytes(config.capacity);
  }
  static uint64_t readers_bytes(const RingConfig& config) {
    return layout::reader_table_bytes(config.reader_capacity);
  }
  // Largest payload a ring of `capacity` bytes can carry: a frame plus the padding in front
  // of it must fit in the ring.
  static uint32_t largest_payload(uint64_t capacity);
  // The geometry a config gives (max_payload 0 resolved). Throws std::invalid_argument
  // naming the bad setting.
  static RingGeometry geometry_of(const RingConfig& config);
  // Owner: formats zeroed memory as a ring: `block` (block_bytes(config) long) and its
  // reader table `readers` (readers_bytes(config) long). Throws std::invalid_argument
  // naming the bad setting.
  static RingRef format(std::byte* block, std::byte* readers, const RingConfig& config);
  // Anyone: opens the ring at `block` (`block_available` mapped bytes) with its reader
  // table at `readers` (`readers_available`), after checking the header says `expected`.
  // Throws std::runtime_error if it does not, or the memory is too small.
  static RingRef open(std::byte* block, uint64_t block_available, std::byte* readers,
                      uint64_t readers_available, const RingGeometry& expected);

  RingRef() = default;

  layout::RingHeader* header() const { return header_; }
  RingGeometry geometry() const {
    return {capacity(), max_payload_, back_pressure_, reader_capacity_, channel_id_};
  }
  // Geometry, cached when the ring was opened (validated against the block then): every
  // process that may publish may also overwrite the header, so nothing sizes a loop, an
  // allocation or an offset from the header afterwards.
  uint64_t capacity() const { return mask_ + 1; }
  uint32_t max_payload() const { return max_payload_; }
  bool back_pressure() const { return back_pressure_; }
  uint32_t channel_id() const { return channel_id_; }
  // True if a frame of `bytes` at stream position `position` can exist in this ring: a data
  // frame (header + at most max_payload bytes) never crosses the end of the data area;
  // padding is at most one lap long.
  bool frame_fits(uint64_t position, uint64_t bytes, bool padding) const {
    if (bytes < layout::kFrameHeaderBytes || bytes > capacity()) return false;
    return padding ||
           (bytes <= layout::frame_bytes(max_payload_) && (position & mask_) + bytes <= capacity());
  }
  uint32_t reader_capacity() const { return reader_capacity_; }
  // Slots ever used / ever linked to a doorbell, clamped to the table: bounds for scans.
  uint32_t slot_high_water() const {
    return std::min(readers_->slot_high_water.load(std::memory_order_acquire), reader_capacity_);
  }
  uint32_t notify_high_water() const {
    return std::min(readers_->notify_high_water.load(std::memory_order_relaxed), reader_capacity_);
  }

  layout::FrameHeader* frame_at(uint64_t position) const {
    return reinterpret_cast<layout::FrameHeader*>(data_ + (position & mask_));
  }
  std::byte* data() const { return data_; }
  uint64_t mask() const { return mask_; }

  layout::ReaderTableHeader* readers() const { return readers_; }
  std::atomic<uint64_t>* notify() const { return notify_; }
  layout::ReaderSlot* slot(uint32_t index) const { return slots_ + index; }

  // An atomic snapshot of the claim word (one 16-byte read). Writes the claim line on
  // x86-64 (a CAS is its only 16-byte atomic read): publishers and the owner only.
  layout::ClaimWord load_claim() const;
  // The same for a process that may map the ring read-only (a subscriber): two 8-byte loads
  // taken again until the position did not move between them (positions only grow, so the
  // sequence read between them belongs to that position). Gives up after a few tries on a
  // busy ring and returns the last position with the sequence read before it, which may
  // then lag: callers use it as a starting point, never as a bound.
  layout::ClaimWord read_claim() const;
  // The claim position alone (an 8-byte load; no write to the publishers' line).
  uint64_t claim_position_relaxed() const;
  // True if the claim position and the retire frontier satisfy I1 (see the top of this
  // file), read so that honest publishers moving them meanwhile cannot make it false.
  bool claim_plausible() const;
  // True while the header's configuration line still says what open() validated.
  bool header_matches_geometry() const;
  uint64_t retire_frontier() const {
    return header_->retire_frontier.load(std::memory_order_acquire);
  }
  // Messages ever claimed in this ring (committed, in flight or aborted).
  uint64_t published() const { return read_claim().sequence; }
  // The same without the 16-byte CAS (which writes the publishers' claim line): may lag,
  // enough for the daemon's idle scan and for tools.
  uint64_t published_relaxed() const {
    return __atomic_load_n(&header_->claim.sequence, __ATOMIC_RELAXED);
  }

 private:
  layout::RingHeader* header_ = nullptr;
  std::byte* data_ = nullptr;
  uint64_t mask_ = 0;
  layout::ReaderTableHeader* readers_ = nullptr;
  std::atomic<uint64_t>* notify_ = nullptr;
  layout::ReaderSlot* slots_ = nullptr;
  uint32_t reader_capacity_ = 0;
  uint32_t max_payload_ = 0;
  uint32_t channel_id_ = 0;
  bool back_pressure_ = false;
};

struct PublishMeta {
  uint64_t publish_unix_ns = 0;  // stamped by the caller (a clock read costs ~20 ns), or
  uint16_t origin = 0;           // 0: this host
  bool stamp_at_commit = false;  // by commit(): next_publish_stamp(), after the claim
};

// A claimed frame: write up to `capacity` bytes at `payload`, then commit or abandon it.
struct RingLoan {
  std::byte* payload = nullptr;
  uint32_t capacity = 0;
  uint64_t position = 0;
  uint64_t sequence = 0;
  bool active = false;
};

// How long a publisher may wait for room. Zero: never (kWouldBlock at once). Negative:
// without limit. Room runs out only in back-pressure rings (a gating reader is a ring
// behind) or behind an unfinished frame of a stopped publisher one lap back.
using WaitBudget = std::chrono::nanoseconds;
inline constexpr WaitBudget kNoWait{0};
inline constexpr WaitBudget kWaitForever{-1};

class Publisher {
 public:
  // `arenas` resolves doorbell links; it must outlive the publisher and include every arena
  // that holds a doorbell of this ring's readers.
  Publisher(RingRef ring, uint16_t publisher_id, const ArenaTable* arenas);

  // Claims a frame for `payload_bytes`: kOk (loan filled), kTooLarge, kWouldBlock (no wait
  // budget) or kTimedOut.
  Status claim(uint32_t payload_bytes, RingLoan& loan, WaitBudget wait = kNoWait);
  // Publishes the first `payload_bytes` (<= loan.capacity) of the loan.
  void commit(RingLoan& loan, uint32_t payload_bytes, const PublishMeta& meta = {});
  // Gives the frame back as padding. Its sequence number was taken, so readers report that
  // message as lost (every number is either delivered or reported lost).
  void abandon(RingLoan& loan);
  // claim + copy + commit.
  Status publish(std::span<const std::byte> payload, const PublishMeta& meta = {},
                 WaitBudget wait = kNoWait);

  const RingRef& ring() const { return ring_; }

  // Rings the doorbell of every reader of the ring, as a commit does, with no message: a
  // publisher that finds the daemon dead wakes the ring's parked subscribers, which then
  // find it dead too without waiting for their next look at the clock.
  void wake_readers() { notify_readers(); }

 private:
  // Makes bytes below `need` + capacity writable: back-pressure check, then retiring the
  // previous lap's frames up to `need`. kOk or kWouldBlock.
  Status make_room(uint64_t need);
  // Retires frames from the frontier until it reaches `need` (required) or `want`
  // (opportunistic, want >= need). kOk or kWouldBlock (an unfinished frame is in the way).
  Status retire_until(uint64_t need, uint64_t want);
  // The slowest gating reader's position (all ones if none); with `skip_dead`, readers
  // whose process has exited are left out. Reads the reader table only: a publisher may map
  // it read-only.
  uint64_t min_gating_position(bool skip_dead) const;
  void notify_readers(uint16_t origin = 0);

  RingRef ring_;
  uint16_t publisher_id_;
  const ArenaTable* arenas_;
  // Disruptor's gating-sequence cache: the slowest gating reader's position as last seen.
  uint64_t cached_min_reader_ = 0;
  uint64_t cached_reader_generation_ = ~uint64_t{0};
};

// What a reader learns about a message besides its bytes.
struct MessageInfo {
  uint64_t sequence = 0;  // message number in this ring
  uint64_t position = 0;  // stream position of its frame
  uint64_t publish_unix_ns = 0;
  uint32_t length = 0;
  uint16_t publisher_id = 0;
  uint16_t origin = 0;
  uint64_t lost_before = 0;  // messages this reader missed just before this one: lapped
                             // over, or abandoned / left unfinished by a dead publisher
};

// A message in place in the ring (zero-copy). Valid until Reader::consume(view) says so: in
// a lossy ring the bytes may be overwritten while you read them, and consume() returns false
// if that happened, in which case whatever was computed from them must be discarded.
struct MessageView : MessageInfo {
  const std::byte* payload = nullptr;
  uint64_t observed_state = 0;
};

class Reader {
 public:
  enum class Start { kLatest, kEarliest, kAfterSequence };

  Reader(RingRef ring, Start start = Start::kLatest, uint64_t after_sequence = 0);
  ~Reader();
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  // Takes a ReaderSlot so the ring knows this reader: gating readers hold back publishers
  // of a back-pressure ring; a doorbell ref (layout::ShmRef with the bit this ring sets)
  // lets wait() park. Throws if the ring has no free slot.
  void register_slot(bool gating, uint64_t doorbell_ref = layout::ShmRef::kNone,
                     layout::DoorbellHeader* doorbell = nullptr,
                     const DoorbellGeometry& geometry = {});
  // Takes over slot `slot` that the daemon registered for this reader (claim_reader_slot),
  // so messages published between registration and now are not missed. With `from_slot`
  // the reader starts where the slot was registered, at sequence `sequence`; otherwise it
  // keeps the start chosen at construction and moves the slot there.
  void adopt_slot(uint32_t slot, layout::DoorbellHeader* doorbell, const DoorbellGeometry& geometry,
                  uint32_t doorbell_bit, bool from_slot, uint64_t sequence);
  void unregister();

  // kOk and a view of the next message, or kEmpty. Padding and lapping are handled inside:
  // a lapped reader jumps to the oldest frame still in the ring and the loss shows up in the
  // next message's lost_before.
  Status try_read(MessageView& view);
  // Accepts a view from try_read: true if its bytes were intact throughout (the message
  // counts as delivered), false if it was overwritten (it counts as lost).
  bool consume(const MessageView& view);
  // True while the view's frame is unchanged: every byte read from it before this call was
  // intact (seqlock check; no side effect).
  bool intact(const MessageView& view) const;
  // Delivers a view the caller already found intact(), whatever happened to the frame
  // since: it counts as delivered, and a lap since then is handled as in consume().
  void accept(const MessageView& view);
  // Copies a view's payload into `buffer` (resized). On a lossy ring a publisher may be
  // overwriting it meanwhile: check intact() or consume() after (the copy is marked for
  // ThreadSanitizer as such a seqlock read).
  void copy_payload(const MessageView& view, std::vector<std::byte>& buffer) const;
  // try_read + copy_payload + consume; returns only intact messages.
  Status try_read_copy(std::vector<std::byte>& buffer, MessageInfo& info);

  // True if try_read may have something to do (a frame, padding, or being lapped).
  bool has_data() const;
  // Waits until has_data() or `timeout` (negative: forever): spins for `spin`, then parks
  // on the registered doorbell (or sleeps in short steps if none is registered).
  Status wait(std::chrono::nanoseconds timeout, std::chrono::nanoseconds spin = kSpinBeforePark);

  uint64_t position() const { return position_; }
  uint64_t next_sequence() const { return next_sequence_; }
  uint64_t lost() const { return lost_; }
  uint64_t delivered() const { return delivered_; }
  uint64_t lapped() const { return lapped_; }
  // Times this reader found the ring contradicting itself (a frame size, frontier or claim
  // no publisher writes) and skipped or stopped instead of following it. Non-zero means
  // some process wrote garbage into the ring: the daemon should check and quarantine it.
  uint64_t corruption_seen() const { return corrupt_; }

 private:
  static constexpr uint64_t kNoCorruptState = ~uint64_t{0};  // no frame state is all ones
  // Skips past the corrupt frame (whose state is `state`) at position_: to the head when
  // the claim is plausible, else stays and treats it as empty while its state is unchanged.
  void skip_corruption(uint64_t state);
  // True while the frame found corrupt at position_ (state `state`) and the claim position
  // are as they were then.
  bool still_corrupt(uint64_t state) const;
  void store_slot_position();
  void jump_after_lap();
  // Records `view` as delivered and moves past its frame.
  void advance_past(const MessageView& view);
  // Jumps if the frontier has passed this reader's position; true if it did.
  bool jump_if_lapped();
  void seek_sequence(uint64_t first_wanted);
  void publish_slot_stats();

  RingRef ring_;
  uint64_t position_ = 0;
  uint64_t next_sequence_ = 0;
  bool sequence_known_ = false;
  uint64_t unreported_lost_ = 0;  // lost messages not yet attached to a delivered one
  uint64_t skip_below_ = 0;
  // resume point: messages below it were delivered before
  uint64_t lost_ = 0;
  uint64_t delivered_ = 0;
  uint64_t lapped_ = 0;
  uint64_t delivered_at_last_lap_ = 0;
  uint32_t empty_polls_ = 0;
  uint64_t corrupt_ = 0;
  // The state of the frame at position_ found corrupt (with the claim position then), and
  // a frontier value found implausible: neither is looked at again while unchanged, so a
  // corrupt ring costs no spinning (has_data() says no) until a publisher's claim or the
  // daemon's quarantine changes it.
  uint64_t corrupt_state_ = kNoCorruptState;
  uint64_t corrupt_claim_ = 0;
  uint64_t corrupt_frontier_ = kNoCorruptState;
  // False only for a gating reader of a back-pressure ring: no publisher overwrites a frame
  // it has not read, so its reads are not speculative (ThreadSanitizer checks them all).
  bool lappable_ = true;
  int32_t slot_ = -1;
  uint64_t slot_owner_ = 0;  // the slot's owner token when we took it
  uint32_t doorbell_bit_ = 0;
  layout::DoorbellHeader* doorbell_ = nullptr;
  DoorbellGeometry doorbell_geometry_;
};

// Rings every doorbell linked to `ring` (arenas resolves them; nullptr: none rung), except,
// for a message with a non-zero `origin` on a lossy ring, local-only doorbells.
// REQUIRES: a full fence after the state change being announced.
void ring_linked_doorbells(RingRef ring, const ArenaTable* arenas, uint16_t origin = 0);

// ---- Owner-side maintenance (the daemon) -----------------------------------------------
// Each repair wakes readers parked on the ring's doorbells (resolved through `arenas`), so
// a reader held up by the repaired frame moves on at once.

// Every walk over frames below is bounded (a few laps of the smallest frames), validates
// each size it follows, and reports a ring that contradicts itself as corrupt instead of
// following it: these run in the daemon's event loop on memory any publisher may write.

// Pads over every frame that publisher `publisher_id` claimed and never committed.
// REQUIRES: that publisher is dead (a live one would go on writing into the padding).
struct RepairResult {
  uint32_t repaired = 0;  // frames padded
  bool corrupt = false;   // the walk met a frame no publisher writes: quarantine the ring
  // The walk reached the claim position: no frame of that publisher is left. False when it
  // stopped at a claim without a header (whose size is unknown until it is repaired or
  // written): frames of the dead publisher may lie beyond it - try again later.
  bool complete = false;
};
RepairResult repair_dead_publisher(RingRef ring, uint16_t publisher_id, const ArenaTable* arenas);

// A bounded check of a ring's shared state against its invariants: the configuration line
// against the geometry open() validated, I1 between claim and frontier, and every frame
// between frontier and claim. Also finds the oldest frame that is claimed but not
// committed: where readers and, one lap later, publishers are held up.
struct RingInspection {
  bool corrupt = false;
  std::string problem;  // why it is corrupt, for the log
  std::optional<uint64_t> first_unfinished;
};
RingInspection inspect_ring(RingRef ring);

// True if the frame at `position` carries its header (tagged with its own position): a
// claim without one is a publisher between its claim and its header, or one that died there.
bool frame_has_header(RingRef ring, uint64_t position);

// Pads over the unfinished frame at `position` - including a claim whose publisher died
// before writing any header, whose extent is found by scanning for the next frame; that case
// is repaired only when the gap provably holds that one claim (else kNotNow: try later).
// REQUIRES: the frame's publisher is dead.
enum class StalledRepair { kRepaired, kNotNow, kCorrupt };
StalledRepair repair_stalled_frame(RingRef ring, uint64_t position, const ArenaTable* arenas);

// Frees the reader slots of process `pid` (it died without unregistering).
uint32_t release_reader_slots_of(RingRef ring, int32_t pid);

// Registers a reader slot on behalf of a subscriber (its owner token, pid and doorbell
// link), at `position`. Returns the slot index, or -1 if the ring has no free slot.
// REQUIRES: if publishers may already use the ring, a process_wide_barrier() before the
// subscriber relies on the link (one barrier may cover many registrations).
struct SlotClaim {
  uint64_t position = 0;
  uint64_t owner = 0;
  int32_t pid = 0;
  bool gating = false;
  uint64_t doorbell_ref = layout::ShmRef::kNone;
};
int32_t claim_reader_slot(RingRef ring, const SlotClaim& claim);
// Frees every slot, whoever holds it (the owner's decision, for a ring no reader may use any
// more). Returns how many were in use.
uint32_t release_all_reader_slots(RingRef ring);
// Frees slot `slot` if `owner` still holds it. True if it did.
bool release_reader_slot(RingRef ring, uint32_t slot, uint64_t owner);
// Slots in use (gating or active).
uint32_t reader_slots_in_use(RingRef ring);

}  // namespace shmbus
