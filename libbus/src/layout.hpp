// Shared-memory layouts of shmbus: everything that lives in the bus's shared memory is
// declared here and nowhere else, so the bytes another process sees can be read off one file.
//
// Rules for every structure in this file
// - Offsets, never pointers: each process maps a segment at its own address.
// - Only lock-free std::atomic and plain integers: no mutex, condition variable or anything a
//   crashed process could leave held (research/rings.md section 4).
// - Fields written by one party and read by another on the hot path sit on their own cache
//   line, so a publisher's claim does not invalidate the line a reader spins on.
// - Bump kLayoutVersion whenever a byte moves; attach() refuses a different version.
//
// SEGMENTS. Every segment is an arena: an unnamed memfd the daemon creates and hands to
// clients as a descriptor (arena.hpp), read-write or read-only as each needs. Which arena
// holds what, and who may write it:
//
//   arena 0     CONTROL: bus directory and channel descriptors. Only the daemon writes it;
//               every client maps it read-only. What clients must be able to trust (names,
//               geometry, receiver counts, whether a ring is still in service) lives here.
//   arena 1     DOORBELLS: one per subscription, at a fixed stride. Publishers ring them and
//               each subscriber waits on its own, so publishers and subscribers map it
//               read-write; its shape comes from the daemon, never from its headers.
//   arena 2..   per access class (shmbusd.toml [[access]] rules): RING arenas (ring blocks:
//               publishers of the class map them read-write, its subscribers read-only) and
//               READER arenas (reader tables: its subscribers read-write, publishers
//               read-only). A client maps only the arenas of classes it may use.
//
//   0            4096                                                         arena_bytes
//   +------------+--------------------+-------+--------------------+-----------+
//   | ArenaHeader| block              | free  | block              | ...       |
//   | (1 page)   | (page aligned)     |       |                    |           |
//   +------------+--------------------+-------+--------------------+-----------+
//   The segment is sized with ftruncate (sparse) and sealed against resizing; each block's
//   pages are reserved with posix_fallocate when the owner allocates it, so running out of
//   memory is an allocation error in the owner instead of a SIGBUS in a client. Freed
//   blocks are punched out (pages return to the system and read back as zero).
//
// RING BLOCK (one channel, in a ring arena)
//
//   0            256                  4096                      4096+capacity
//   +------------+--------------------+--------------------------+
//   | RingHeader | (unused)           | data: frames, capacity   |
//   | config     |                    | bytes, a power of two    |
//   | claim      |                    |                          |
//   | retire     |                    |                          |
//   | stats      |                    |                          |
//   +------------+--------------------+--------------------------+
//   The configuration line is informational: readers and publishers take the geometry from
//   the daemon (the descriptor, and the control protocol) and only check the header against
//   it once, when they open the ring.
//
// READER TABLE (one channel, in a reader arena; 64-byte aligned, packed with others)
//
//   0                   64                      64 + 8*capacity (to 64)
//   +-------------------+-----------------------+------------------------------+
//   | ReaderTableHeader | notify[]: doorbell    | slots[]: one ReaderSlot per  |
//   |                   | link of each slot     | subscriber, own cache line   |
//   +-------------------+-----------------------+------------------------------+
//   Reader positions and doorbell links live here, apart from the ring's data pages, so a
//   subscriber writes nothing a publisher of the channel relies on for its own memory safety.
//
// FRAME (32-byte aligned, inside the data area; a frame may wrap only if it is padding)
//
//   0        8          16            24         28          30       32
//   +--------+----------+-------------+----------+-----------+--------+------------------+
//   | state  | sequence | publish_ns  | payload  | publisher | origin | payload ...      |
//   | (atom) |          |             | length   | id        |        |                  |
//   +--------+----------+-------------+----------+-----------+--------+------------------+
//   state = position | flags. The position (byte offset in the endless stream, a multiple of
//   32) tags the lap the frame belongs to; the low 5 bits are the flags below. A frame is
//   complete only when its state reads exactly (its position | kFrameCommitted); a retired
//   frame's state is (position ^ kRetiredTagFlip) | flags | kFrameRetired.
//
// CONTROL ARENA (arena 0): the daemon's life word (DaemonLife, in the header page), the
// directory, then one descriptor per channel
//
//   4096                64                                     64 + 8*capacity
//   +-------------------+--------------------------------------+
//   | DirectoryHeader   | entries[]: descriptor offset per id  |   ... descriptors (64-byte
//   +-------------------+--------------------------------------+       granular blocks)
//   A channel's id is its entry index. Only the daemon writes this arena.
//
// DOORBELL (in arena 1, at offset kPageSize + k * doorbell_stride(bits))
//
//   0                         64                        64 + 8*summary_words
//   +-------------------------+-------------------------+---------------------------+
//   | futex_word | wake_armed | summary bits            | leaf bits (one per ring)  |
//   +-------------------------+-------------------------+---------------------------+
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace shmbus::layout {

// 3: unnamed segments per access class, descriptors in a daemon-only control arena,
//    reader tables apart from rings
// 4: the daemon's life word in the control arena's header page
inline constexpr uint32_t kLayoutVersion = 4;
inline constexpr uint32_t kArenaMagic = 0x53484d41;       // "SHMA"
inline constexpr uint32_t kRingMagic = 0x53484d52;        // "SHMR"
inline constexpr uint32_t kDoorbellMagic = 0x53484d44;    // "SHMD"
inline constexpr uint32_t kDescriptorMagic = 0x53484d43;  // "SHMC"

// Fixed arena ids (ShmRef::arena_id): the rest are per access class.
inline constexpr uint32_t kControlArena = 0;
inline constexpr uint32_t kDoorbellArena = 1;
inline constexpr uint32_t kFirstClassArena = 2;

inline constexpr std::size_t kCacheLine = 64;
inline constexpr std::size_t kPageSize = 4096;

constexpr uint64_t align_up(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) & ~(alignment - 1);
}
constexpr bool is_power_of_two(uint64_t value) {
  return value != 0 && (value & (value - 1)) == 0;
}

// ---------------------------------------------------------------------------------------
// Arena
// ---------------------------------------------------------------------------------------

struct ArenaHeader {
  // Written last, with release ordering, by the owner once every other field is set; an
  // attacher that reads kArenaMagic with acquire ordering sees a complete header.
  std::atomic<uint32_t> magic;
  uint32_t version;
  uint64_t arena_bytes;  // size of the whole segment
  uint64_t first_block;  // offset of the first allocatable byte (== kPageSize)
  int32_t owner_pid;     // process that created the segment and allocates in it
  uint32_t arena_id;     // index used in ShmRef values that point into this arena
  uint64_t created_unix_ns;
};
static_assert(offsetof(ArenaHeader, magic) == 0);
static_assert(offsetof(ArenaHeader, arena_bytes) == 8);
static_assert(offsetof(ArenaHeader, first_block) == 16);
static_assert(offsetof(ArenaHeader, owner_pid) == 24);
static_assert(offsetof(ArenaHeader, arena_id) == 28);
static_assert(offsetof(ArenaHeader, created_unix_ns) == 32);
static_assert(sizeof(ArenaHeader) <= kPageSize);

// A reference to a structure in some arena, valid in every process: arena id (8 bits),
// offset in 64-byte units (32 bits, so up to 256 GiB per arena) and a 24-bit payload
// (the bit index of a doorbell). Zero means "none": offset 0 is always an ArenaHeader.
struct ShmRef {
  static constexpr uint64_t kNone = 0;
  static constexpr uint64_t make(uint32_t arena_id, uint64_t offset, uint32_t bit) {
    return (uint64_t{arena_id & 0xff} << 56) | ((offset / kCacheLine) << 24) | (bit & 0xffffff);
  }
  static constexpr uint32_t arena_id(uint64_t ref) { return static_cast<uint32_t>(ref >> 56); }
  static constexpr uint64_t offset(uint64_t ref) {
    return ((ref >> 24) & 0xffffffffULL) * kCacheLine;
  }
  static constexpr uint32_t bit(uint64_t ref) { return static_cast<uint32_t>(ref & 0xffffff); }
  static constexpr uint32_t kMaxBit = 0xffffff;
};
static_assert(ShmRef::offset(ShmRef::make(3, 4096 * 5, 77)) == 4096 * 5);
static_assert(ShmRef::arena_id(ShmRef::make(3, 4096 * 5, 77)) == 3);
static_assert(ShmRef::bit(ShmRef::make(3, 4096 * 5, 77)) == 77);

// ---------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------

inline constexpr uint64_t kFrameAlignment = 32;
inline constexpr uint64_t kFrameHeaderBytes = 32;

// Flags in the low bits of FrameHeader::state (free because positions are 32-aligned).
inline constexpr uint64_t kFrameCommitted = 1;  // header and payload complete
inline constexpr uint64_t kFramePadding = 2;    // no message: readers skip it
inline constexpr uint64_t kFrameRetired = 4;    // about to be overwritten: readers are lapped
inline constexpr uint64_t kFrameWriting = 8;    // claimed, header fields valid, payload not yet
inline constexpr uint64_t kFrameAborted = 16;   // padding that took a sequence number (an
                                                // abandoned loan or a repaired dead frame)
inline constexpr uint64_t kFrameFlagMask = kFrameAlignment - 1;

constexpr uint64_t frame_tag(uint64_t state) {
  return state & ~kFrameFlagMask;
}

// Retiring a frame flips every bit of its tag. A retired header is soon overwritten by the
// next lap, possibly only in part: a payload may end one byte into the old state word, with
// the rest in alignment slack that nobody writes. Had the old word kept its position, those
// surviving bytes plus one new byte could read as "position P, committed" again - a forged
// frame (the multi-process stress test caught exactly that). With the tag flipped, surviving
// bytes of a retired header can never spell P.
inline constexpr uint64_t kRetiredTagFlip = ~kFrameFlagMask;
constexpr uint64_t retired_state(uint64_t committed_state) {
  return (committed_state ^ kRetiredTagFlip) | kFrameRetired;
}
constexpr bool is_retired_at(uint64_t state, uint64_t position) {
  return (state & kFrameRetired) != 0 && frame_tag(state) == (position ^ kRetiredTagFlip);
}
static_assert(is_retired_at(retired_state(4096 | kFrameCommitted), 4096));
static_assert(frame_tag(retired_state(4096 | kFrameCommitted)) != 4096);
constexpr uint64_t frame_bytes(uint32_t payload_length) {
  return align_up(kFrameHeaderBytes + payload_length, kFrameAlignment);
}

// Every field but `state` is written by exactly one publisher between its claim and its
// commit, and read by readers that may race with the next lap's writer; they are atomics
// accessed with relaxed ordering so that race is defined behaviour, and readers trust them
// only after re-reading `state` (see Reader in ring.hpp).
struct FrameHeader {
  std::atomic<uint64_t> state;            // position | kFrame* flags
  std::atomic<uint64_t> sequence;         // data message number in this ring (padding: the
                                          // number the next message will get)
  std::atomic<uint64_t> publish_unix_ns;  // set by the publisher's caller; 0 if not stamped
  std::atomic<uint32_t> payload_length;   // bytes of payload (padding: frame bytes - 32)
  std::atomic<uint16_t> publisher_id;     // daemon-assigned id of the publishing client
  std::atomic<uint16_t> origin;           // 0 = published on this host, else bridged-from id
};
static_assert(offsetof(FrameHeader, state) == 0);
static_assert(offsetof(FrameHeader, sequence) == 8);
static_assert(offsetof(FrameHeader, publish_unix_ns) == 16);
static_assert(offsetof(FrameHeader, payload_length) == 24);
static_assert(offsetof(FrameHeader, publisher_id) == 28);
static_assert(offsetof(FrameHeader, origin) == 30);
static_assert(sizeof(FrameHeader) == kFrameHeaderBytes);
static_assert(std::atomic<uint64_t>::is_always_lock_free);
static_assert(std::atomic<uint32_t>::is_always_lock_free);
static_assert(std::atomic<uint16_t>::is_always_lock_free);

// ---------------------------------------------------------------------------------------
// Ring
// ---------------------------------------------------------------------------------------

inline constexpr uint32_t kRingBackPressure = 1;  // RingHeader::flags: publishers wait for
                                                  // the slowest gating reader

// The claim word: the next free stream position and the next message sequence number,
// changed together by one 16-byte compare-and-swap so that sequence order is position order
// and a lapped reader can count exactly what it lost.
struct alignas(16) ClaimWord {
  uint64_t position;
  uint64_t sequence;
};
static_assert(sizeof(ClaimWord) == 16);

struct RingHeader {
  // Line 0: configuration, written by the owner before the magic. Checked against the
  // daemon's geometry when a process opens the ring, never relied on afterwards.
  std::atomic<uint32_t> magic;
  uint32_t version;
  uint64_t capacity;     // data bytes, a power of two
  uint64_t block_bytes;  // size of the whole ring block
  uint64_t reserved0;
  uint32_t max_payload;      // largest message this ring accepts
  uint32_t flags;            // kRingBackPressure
  uint32_t reader_capacity;  // slots in the ring's ReaderTable
  uint32_t channel_id;       // owner's id for the channel (stats, repair)
  uint8_t pad0[kCacheLine - 48];

  // Line 1: claim word. Publishers CAS it; readers read it only to find "latest".
  alignas(kCacheLine) ClaimWord claim;
  uint8_t pad1[kCacheLine - sizeof(ClaimWord)];

  // Line 2: retire frontier. Every frame at a position below it has been retired (marked
  // kFrameRetired), so its bytes may be overwritten; invariant: frontier <= claim.position
  // <= frontier + capacity. Advanced by publishers with CAS, never moves back.
  alignas(kCacheLine) std::atomic<uint64_t> retire_frontier;
  uint8_t pad2[kCacheLine - 8];

  // Line 3: counters for introspection (`shmbus stats` reads them without asking the
  // daemon). Publishers write the line on every commit, so readers never touch it; with one
  // publisher it stays in that core's cache.
  alignas(kCacheLine) std::atomic<uint64_t> repaired_frames;  // frames padded by repair
  std::atomic<uint64_t> back_pressure_waits;                  // claims that had to wait
  std::atomic<uint64_t> payload_bytes;                        // payload bytes committed
  std::atomic<uint64_t> last_publish_unix_ns;                 // stamp of the latest commit
  uint8_t pad3[kCacheLine - 32];
};
static_assert(offsetof(RingHeader, magic) == 0);
static_assert(offsetof(RingHeader, capacity) == 8);
static_assert(offsetof(RingHeader, max_payload) == 32);
static_assert(offsetof(RingHeader, channel_id) == 44);
static_assert(offsetof(RingHeader, claim) == 64);
static_assert(offsetof(RingHeader, retire_frontier) == 128);
static_assert(offsetof(RingHeader, repaired_frames) == 192);
static_assert(sizeof(RingHeader) == 256);

inline constexpr uint64_t kRingDataOffset = kPageSize;  // data starts on its own page

// Channel names are binary-safe byte strings of at most this many bytes.
inline constexpr uint32_t kMaxChannelName = 1024;

// Reader slot states.
inline constexpr uint32_t kSlotFree = 0;
inline constexpr uint32_t kSlotActive = 1;  // lossy reader: publishers never wait for it
inline constexpr uint32_t kSlotGating = 2;  // back-pressure reader: publishers wait for it

// One per registered reader, on its own cache line: the reader writes `position` as it
// consumes; publishers read it only when their cached minimum runs out.
struct ReaderSlot {
  std::atomic<uint64_t> position;   // next stream position this reader will read
  std::atomic<uint32_t> state;      // kSlot*
  std::atomic<int32_t> pid;         // owning process, for liveness checks and cleanup
  std::atomic<uint64_t> lost;       // messages this reader was lapped over (stats)
  std::atomic<uint64_t> delivered;  // messages this reader consumed (stats)
  // Who holds the slot: the daemon's id of the subscribing connection (0: a reader that
  // registered itself). The daemon frees a dead client's slots by this, never by index
  // alone, so it cannot free a slot that was meanwhile given to someone else.
  std::atomic<uint64_t> owner;
  uint8_t pad[kCacheLine - 40];
};
static_assert(sizeof(ReaderSlot) == kCacheLine);

// notify[i] holds the doorbell ShmRef of slot i (0 = none). It is a compact array apart
// from the slots so a publisher scans one line for up to eight subscribers.
struct ReaderTableHeader {
  std::atomic<uint32_t> notify_high_water;  // notify[0, high_water) may be non-zero
  std::atomic<uint32_t> slot_high_water;    // slots[0, high_water) may be in use
  std::atomic<uint64_t> generation;         // bumped on every (un)registration
  uint8_t pad[kCacheLine - 16];
};
static_assert(sizeof(ReaderTableHeader) == kCacheLine);

// A reader table: header, links, slots; a multiple of 64 bytes.
constexpr uint64_t reader_table_bytes(uint32_t reader_capacity) {
  return sizeof(ReaderTableHeader) + align_up(8ULL * reader_capacity, kCacheLine) +
         uint64_t{sizeof(ReaderSlot)} * reader_capacity;
}
constexpr uint64_t notify_array_offset() {
  return sizeof(ReaderTableHeader);
}
constexpr uint64_t slots_offset(uint32_t reader_capacity) {
  return sizeof(ReaderTableHeader) + align_up(8ULL * reader_capacity, kCacheLine);
}
constexpr uint64_t ring_block_bytes(uint64_t capacity) {
  return kRingDataOffset + capacity;
}
static_assert(reader_table_bytes(1) == 3 * kCacheLine);

// ---------------------------------------------------------------------------------------
// Channel descriptor: what the daemon tells everyone about a channel, in the control arena
// (which only the daemon writes), so it can be trusted where the ring itself cannot.
// ---------------------------------------------------------------------------------------

inline constexpr uint32_t kChannelLive = 1;         // in service
inline constexpr uint32_t kChannelQuarantined = 2;  // its ring was found corrupt: publishers
                                                    // reopen the channel (a new ring)
inline constexpr uint32_t kChannelReclaimed = 3;    // idle and removed

struct ChannelDescriptor {
  // Line 0: fixed once the magic is stored (release, last).
  std::atomic<uint32_t> magic;
  uint32_t channel_id;
  uint64_t ring_ref;     // ShmRef of the ring block
  uint64_t readers_ref;  // ShmRef of the reader table
  uint64_t capacity;     // ring data bytes
  uint32_t max_payload;
  uint32_t flags;  // kRingBackPressure
  uint32_t reader_capacity;
  uint32_t access_class;  // index of the [[access]] rule that decided (0: none matched)
  uint32_t name_length;
  uint32_t reserved0;
  // Line 1: what changes while the channel lives. Publishers read it on every publish
  // (receivers, state); only the daemon writes it, so the line stays shared in their caches.
  alignas(kCacheLine) std::atomic<uint32_t> state;  // kChannel*
  // Subscriptions that receive each message: channel subscribers plus, per subscription,
  // every matching pattern (what Redis PUBLISH returns).
  std::atomic<uint32_t> receivers;
  // Subscriptions holding the channel by name (Redis PUBSUB NUMSUB).
  std::atomic<uint32_t> channel_subscribers;
  uint8_t pad1[kCacheLine - 12];
  // Then name_length bytes of name.
};
static_assert(offsetof(ChannelDescriptor, ring_ref) == 8);
static_assert(offsetof(ChannelDescriptor, state) == kCacheLine);
static_assert(sizeof(ChannelDescriptor) == 2 * kCacheLine);
constexpr uint64_t descriptor_bytes(uint32_t name_length) {
  return align_up(sizeof(ChannelDescriptor) + name_length, kCacheLine);
}

// ---------------------------------------------------------------------------------------
// Doorbell: how one waiter sleeps on many rings.
// A publisher that commits to a ring linked to a doorbell sets the ring's leaf bit (and
// the summary bit above it) unless already set, then wakes the futex if a waiter armed it. The
// waiter exchanges summary words to find leaf words, and leaf words to find rings, so it
// never scans rings that have nothing new.
// ---------------------------------------------------------------------------------------

struct DoorbellHeader {
  std::atomic<uint32_t> futex_word;  // bumped by a waker before FUTEX_WAKE
  std::atomic<uint32_t> wake_armed;  // 1: a waiter parked (or is parking) since the last wake
  uint32_t magic;
  uint32_t bit_capacity;   // rings this doorbell can tell apart
  uint32_t summary_words;  // each summary bit covers one leaf word (64 rings)
  uint32_t leaf_words;
  // 1: the waiter takes only messages published on this host (origin 0), so a message a
  // bridge imported (origin != 0) need not wake it - unless its ring is back-pressure,
  // where the reader must read it for publishers to go on. Set by the waiter.
  std::atomic<uint32_t> local_only;
  uint8_t pad[kCacheLine - 28];
};
static_assert(offsetof(DoorbellHeader, futex_word) == 0);
static_assert(offsetof(DoorbellHeader, wake_armed) == 4);
static_assert(sizeof(DoorbellHeader) == kCacheLine);

constexpr uint32_t doorbell_leaf_words(uint32_t bits) {
  return (bits + 63) / 64;
}
constexpr uint32_t doorbell_summary_words(uint32_t bits) {
  return (doorbell_leaf_words(bits) + 63) / 64;
}
constexpr uint64_t doorbell_bytes(uint32_t bits) {
  return sizeof(DoorbellHeader) + align_up(8ULL * doorbell_summary_words(bits), kCacheLine) +
         align_up(8ULL * doorbell_leaf_words(bits), kCacheLine);
}
// Doorbells sit at this stride in the doorbell arena, from kPageSize on: a power of two of
// at least a page, so each doorbell's pages are its own (reserved and punched out as one)
// and a publisher checks that a link points at a doorbell's start with a mask, not a
// division, on every publish to a ring with a parked subscriber.
constexpr uint64_t doorbell_stride(uint32_t bits) {
  uint64_t stride = kPageSize;
  while (stride < doorbell_bytes(bits)) stride *= 2;
  return stride;
}

// ---------------------------------------------------------------------------------------
// Bus directory: the daemon lists every live channel here, so `shmbus stats` and
// `channels` can read names and counters from shared memory without a round trip.
// ---------------------------------------------------------------------------------------

inline constexpr uint32_t kDirectoryMagic = 0x53484d42;  // "SHMB"

struct DirectoryHeader {
  std::atomic<uint32_t> magic;  // written last by the daemon, with release
  uint32_t version;
  uint32_t capacity;  // entries (the daemon's channel limit)
  int32_t daemon_pid;
  std::atomic<uint32_t> high_water;  // entries[0, high_water) may be non-zero
  uint32_t doorbell_bits;            // bits of every doorbell of the bus
  std::atomic<uint64_t> generation;  // bumped after every add and remove
  uint64_t started_unix_ns;
  std::atomic<uint32_t> patterns;  // distinct patterns subscribed (Redis PUBSUB NUMPAT)
  std::atomic<uint32_t> clients;   // connected clients
  uint8_t pad[kCacheLine - 48];
};
static_assert(offsetof(DirectoryHeader, high_water) == 16);
static_assert(offsetof(DirectoryHeader, generation) == 24);
static_assert(sizeof(DirectoryHeader) == kCacheLine);

// The directory is the first block the daemon allocates in the control arena.
inline constexpr uint64_t kDirectoryOffset = kPageSize;

// ---------------------------------------------------------------------------------------
// Daemon life (control arena, in its header page at kDaemonLifeOffset)
// ---------------------------------------------------------------------------------------
//
// The one structure here that a crashed process must leave marked rather than free. The
// daemon's serving thread holds a robust, process-shared pthread mutex at this offset from
// the moment it serves until it stops, and never hands it over. glibc keeps that mutex on
// the thread's robust list (a kernel ABI: set_robust_list(2)), so when the thread ends in any
// way - a clean stop, SIGKILL, a crash - the kernel sets FUTEX_OWNER_DIED in the mutex's
// futex word; a clean stop unlocks it first (word 0). The futex word is the first field of
// glibc's pthread_mutex_t: the owner's thread id while held. Clients map the control arena
// read-only, so no client can forge it; they read `futex_word` (daemon_alive()) to learn,
// without a system call, that the daemon they are attached to is gone.
inline constexpr uint64_t kDaemonLifeOffset = 2048;
struct DaemonLife {
  std::atomic<uint32_t> futex_word;
  uint8_t rest_of_mutex[kCacheLine - 4];  // the daemon's pthread_mutex_t (40 bytes on x86-64)
};
static_assert(sizeof(DaemonLife) == kCacheLine);
static_assert(kDaemonLifeOffset % kCacheLine == 0 && kDaemonLifeOffset + kCacheLine <= kPageSize);
static_assert(sizeof(ArenaHeader) <= kDaemonLifeOffset);

// Whether the futex word of a held robust mutex says its owner still lives: a thread id is
// there (FUTEX_TID_MASK) and the kernel has not marked it dead (FUTEX_OWNER_DIED).
constexpr bool daemon_alive(uint32_t futex_word) {
  constexpr uint32_t kOwnerDied = 0x40000000;  // FUTEX_OWNER_DIED, linux/futex.h
  constexpr uint32_t kTidMask = 0x3fffffff;    // FUTEX_TID_MASK
  return (futex_word & kTidMask) != 0 && (futex_word & kOwnerDied) == 0;
}

constexpr uint64_t directory_bytes(uint32_t capacity) {
  return align_up(sizeof(DirectoryHeader) + 8ULL * capacity, kPageSize);
}

}  // namespace shmbus::layout
