// The control protocol between libshmbus and shmbusd (a Unix stream socket). The data path
// never uses it: publishing and receiving happen in shared memory.
//
// FRAME
//   +----------------+----------+------------+------------------------------+
//   | body_length u32| type u16 | request u32| fields (per type, see below) |
//   +----------------+----------+------------+------------------------------+
//   Integers are little-endian. body_length counts type + request + fields and is at most
//   kMaxFrameBytes. Strings are u32 length + bytes (binary-safe). `request` echoes the id of
//   the request a reply answers; events (kAttach, kDetach) carry 0.
//
// The first frame of a connection must be kHello with kProtocolMagic and a version range;
// the daemon answers kWelcome with the version both speak, or kError and closes. Every
// field is bounds-checked on decode (Parser throws ProtocolError); the daemon drops a
// connection that sends anything malformed, and only that one.
//
// Thread safety: plain functions and values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "shmbus/bus.hpp"

namespace shmbus::protocol {

inline constexpr uint32_t kProtocolMagic = 0x53424d43;  // "CMBS"
// Version 2 added kPatterns. Version 3: segments are granted as descriptors (kArenaGrant)
// and ring locations carry the geometry; it goes with layout version 3, so older clients
// cannot use a version 3 daemon's memory and are refused at HELLO. A daemon speaks every
// version from kMinProtocolVersion up and answers HELLO with the highest one both sides
// speak.
inline constexpr uint16_t kProtocolVersion = 3;
inline constexpr uint16_t kMinProtocolVersion = 3;
inline constexpr uint32_t kMaxFrameBytes = 1u << 20;  // requests and replies alike
inline constexpr uint32_t kMaxNamesPerRequest = 65536;

enum class Type : uint16_t {
  // client -> daemon
  kHello = 1,
  kOpenChannel = 2,
  kCloseChannel = 3,
  kSubscribe = 4,
  kPsubscribe = 5,
  kUnsubscribe = 6,
  kPunsubscribe = 7,
  kPing = 8,
  kBye = 9,
  kPatterns = 10,       // v2: the bus's subscribed patterns (optionally matching a glob)
  kMapArenas = 11,      // v3: an observer asks for the arenas it may read (stats tools)
  kReportCorrupt = 12,  // v3: a client found a channel's ring contradicting itself
  // daemon -> client: replies
  kWelcome = 100,
  kOk = 101,
  kError = 102,
  kChannelOpened = 103,
  kSubscribed = 104,
  kUnsubscribed = 105,
  kPong = 106,
  kPatternList = 107,  // v2: answers kPatterns, in several frames (the last flagged final)
  // v3: a segment handed over as a descriptor (SCM_RIGHTS on the frame's first byte), sent
  // before the reply or event that first refers to it. Carries the request id of the
  // request it precedes (0 before an event).
  kArenaGrant = 108,
  // daemon -> client: events (request id 0)
  kAttach = 200,  // a channel created now matches a pattern: start reading it
  kDetach = 201,  // a channel is being reclaimed: stop reading it
};
const char* type_name(Type type);

class ProtocolError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Appends little-endian fields to a frame being built.
class Writer {
 public:
  explicit Writer(Type type, uint32_t request = 0);
  Writer& u8(uint8_t v);
  Writer& u16(uint16_t v);
  Writer& u32(uint32_t v);
  Writer& u64(uint64_t v);
  Writer& str(std::string_view s);
  // Finishes the frame (fills in the length); throws ProtocolError if over kMaxFrameBytes.
  const std::vector<std::byte>& frame();

 private:
  void put(uint64_t v, int bytes);
  std::vector<std::byte> buf_;
};

// Reads fields of one received body (type and request already taken by Frame::parse).
class Parser {
 public:
  explicit Parser(std::span<const std::byte> fields) : rest_(fields) {}
  uint8_t u8();
  uint16_t u16();
  uint32_t u32();
  uint64_t u64();
  // A string of at most `max_bytes`; names the field in the error.
  std::string_view str(uint32_t max_bytes, const char* field);
  // A count of items that follow, each at least `min_item_bytes` long: checked against the
  // bytes left, so a forged count cannot make the reader allocate or loop for long.
  uint32_t count(uint32_t max_items, uint32_t min_item_bytes, const char* field);
  // Throws unless every byte was read.
  void end();

 private:
  uint64_t take(int bytes);
  std::span<const std::byte> rest_;
};

struct Frame {
  Type type;
  uint32_t request;
  std::span<const std::byte> fields;
  // Splits one body (without the length prefix).
  static Frame parse(std::span<const std::byte> body);
};

// Incremental framing over a byte stream: feed what recv() returned, take whole bodies.
class FrameAssembler {
 public:
  // Appends bytes; throws ProtocolError if a frame announces more than kMaxFrameBytes.
  void feed(std::span<const std::byte> bytes);
  // Next complete body, if any. The span is valid until the next feed() or next().
  bool next(std::span<const std::byte>& body);
  // Whether next() has something to say: a complete body, or a length it throws for.
  bool has_frame() const;
  bool empty() const { return start_ == buf_.size(); }

 private:
  std::vector<std::byte> buf_;
  size_t start_ = 0;
};

// ---- Shared field groups ----------------------------------------------------------------

// What a connection is for, said in HELLO: it decides which segments the daemon grants and
// whether they are writable (a subscriber maps ring data read-only).
enum class Role : uint8_t {
  kPublisher = 0,   // Bus: writes rings, rings doorbells
  kSubscriber = 1,  // Subscription: reads rings, has a doorbell
  kObserver = 2,    // stats tools: read-only everything it may read
};

// A segment granted with kArenaGrant.
enum class GrantAccess : uint8_t { kReadWrite = 0, kReadOnly = 1 };
struct ArenaGrant {
  uint32_t arena_id = 0;
  GrantAccess access = GrantAccess::kReadOnly;
  std::string label;  // for messages ("shmbus.default.2")
  void write(Writer& w) const;
  static ArenaGrant read(Parser& p);
};

// Where a channel's ring lives and what shape it has, as the daemon decided: the ring block
// (`ring_bytes` at `ring_offset` of arena `ring_arena`), its reader table, and its
// descriptor in the control arena. A client opens the ring with this geometry and checks the
// ring's own header against it once; it never takes sizes from the ring afterwards.
struct RingLocation {
  uint32_t channel_id = 0;
  uint64_t descriptor = 0;  // offset of the ChannelDescriptor in the control arena
  uint32_t ring_arena = 0;
  uint64_t ring_offset = 0;
  uint64_t ring_bytes = 0;
  uint32_t readers_arena = 0;
  uint64_t readers_offset = 0;
  uint64_t readers_bytes = 0;
  uint64_t capacity = 0;
  uint32_t max_payload = 0;
  uint32_t flags = 0;  // layout::kRingBackPressure
  uint32_t reader_capacity = 0;
  void write(Writer& w) const;
  static RingLocation read(Parser& p);
};

// A reader slot the daemon registered in a ring for a subscription, linked to bit `bit`
// of the subscription's doorbell.
// start_position / start_sequence: where the slot was registered (the reader starts there
// to miss nothing), or kKeepReading if the client already reads this ring.
inline constexpr uint64_t kKeepReading = ~uint64_t{0};
struct Attachment {
  RingLocation ring;
  std::string channel;
  uint32_t slot = 0;
  uint32_t bit = 0;
  uint64_t start_position = kKeepReading;
  uint64_t start_sequence = 0;
  void write(Writer& w) const;
  static Attachment read(Parser& p);
};

inline constexpr uint32_t kMaxPatternBytes = 1024;
inline constexpr uint32_t kMaxErrorBytes = 4096;

// Start positions in kSubscribe (same order as StartAt::Kind).
enum class StartKind : uint8_t { kLatest = 0, kEarliest = 1, kAfterSequence = 2 };

}  // namespace shmbus::protocol
