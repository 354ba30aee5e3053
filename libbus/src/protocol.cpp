#include "protocol.hpp"

#include <algorithm>
#include <cstring>

namespace shmbus::protocol {

namespace {
constexpr size_t kLengthBytes = 4;
constexpr size_t kBodyHeaderBytes = 6;  // type u16 + request u32
}  // namespace

const char* type_name(Type type) {
  switch (type) {
    case Type::kHello: return "HELLO";
    case Type::kOpenChannel: return "OPEN_CHANNEL";
    case Type::kCloseChannel: return "CLOSE_CHANNEL";
    case Type::kSubscribe: return "SUBSCRIBE";
    case Type::kPsubscribe: return "PSUBSCRIBE";
    case Type::kUnsubscribe: return "UNSUBSCRIBE";
    case Type::kPunsubscribe: return "PUNSUBSCRIBE";
    case Type::kPing: return "PING";
    case Type::kBye: return "BYE";
    case Type::kPatterns: return "PATTERNS";
    case Type::kMapArenas: return "MAP_ARENAS";
    case Type::kReportCorrupt: return "REPORT_CORRUPT";
    case Type::kWelcome: return "WELCOME";
    case Type::kOk: return "OK";
    case Type::kError: return "ERROR";
    case Type::kChannelOpened: return "CHANNEL_OPENED";
    case Type::kSubscribed: return "SUBSCRIBED";
    case Type::kUnsubscribed: return "UNSUBSCRIBED";
    case Type::kPong: return "PONG";
    case Type::kPatternList: return "PATTERN_LIST";
    case Type::kArenaGrant: return "ARENA_GRANT";
    case Type::kAttach: return "ATTACH";
    case Type::kDetach: return "DETACH";
  }
  return "UNKNOWN";
}

// ---- Writer -------------------------------------------------------------------------------

Writer::Writer(Type type, uint32_t request) {
  buf_.reserve(64);
  put(0, 4);  // length, filled in by frame()
  put(static_cast<uint16_t>(type), 2);
  put(request, 4);
}

void Writer::put(uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) buf_.push_back(static_cast<std::byte>(v >> (8 * i)));
}

Writer& Writer::u8(uint8_t v) {
  put(v, 1);
  return *this;
}
Writer& Writer::u16(uint16_t v) {
  put(v, 2);
  return *this;
}
Writer& Writer::u32(uint32_t v) {
  put(v, 4);
  return *this;
}
Writer& Writer::u64(uint64_t v) {
  put(v, 8);
  return *this;
}

Writer& Writer::str(std::string_view s) {
  if (s.size() > kMaxFrameBytes)
    throw ProtocolError("string of " + std::to_string(s.size()) + " bytes does not fit in a frame");
  put(s.size(), 4);
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  buf_.insert(buf_.end(), p, p + s.size());
  return *this;
}

const std::vector<std::byte>& Writer::frame() {
  const size_t body = buf_.size() - kLengthBytes;
  if (body > kMaxFrameBytes)
    throw ProtocolError("control message of " + std::to_string(body) +
                        " bytes exceeds the protocol limit of " + std::to_string(kMaxFrameBytes) +
                        "; send fewer names per call");
  for (int i = 0; i < 4; ++i) buf_[i] = static_cast<std::byte>(body >> (8 * i));
  return buf_;
}

// ---- Parser -------------------------------------------------------------------------------

uint64_t Parser::take(int bytes) {
  if (rest_.size() < static_cast<size_t>(bytes))
    throw ProtocolError("truncated message: needed " + std::to_string(bytes) + " more bytes, " +
                        std::to_string(rest_.size()) + " left");
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t{std::to_integer<uint8_t>(rest_[i])} << (8 * i);
  rest_ = rest_.subspan(bytes);
  return v;
}

uint8_t Parser::u8() {
  return static_cast<uint8_t>(take(1));
}
uint16_t Parser::u16() {
  return static_cast<uint16_t>(take(2));
}
uint32_t Parser::u32() {
  return static_cast<uint32_t>(take(4));
}
uint64_t Parser::u64() {
  return take(8);
}

std::string_view Parser::str(uint32_t max_bytes, const char* field) {
  const uint32_t length = u32();
  if (length > max_bytes)
    throw ProtocolError(std::string(field) + " of " + std::to_string(length) +
                        " bytes exceeds the limit of " + std::to_string(max_bytes));
  if (length > rest_.size())
    throw ProtocolError(std::string(field) + " of " + std::to_string(length) +
                        " bytes runs past the end of the message");
  std::string_view s(reinterpret_cast<const char*>(rest_.data()), length);
  rest_ = rest_.subspan(length);
  return s;
}

uint32_t Parser::count(uint32_t max_items, uint32_t min_item_bytes, const char* field) {
  const uint32_t n = u32();
  if (n > max_items)
    throw ProtocolError(std::string(field) + ": " + std::to_string(n) +
                        " items exceed the limit of " + std::to_string(max_items));
  if (uint64_t{n} * min_item_bytes > rest_.size())
    throw ProtocolError(std::string(field) + ": " + std::to_string(n) +
                        " items cannot fit in the " + std::to_string(rest_.size()) + " bytes left");
  return n;
}

void Parser::end() {
  if (!rest_.empty())
    throw ProtocolError(std::to_string(rest_.size()) + " unexpected bytes after the message");
}

// ---- Frames -------------------------------------------------------------------------------

Frame Frame::parse(std::span<const std::byte> body) {
  if (body.size() < kBodyHeaderBytes) throw ProtocolError("message shorter than its header");
  Parser p(body);
  Frame f;
  f.type = static_cast<Type>(p.u16());
  f.request = p.u32();
  f.fields = body.subspan(kBodyHeaderBytes);
  return f;
}

void FrameAssembler::feed(std::span<const std::byte> bytes) {
  if (start_ == buf_.size()) {
    buf_.clear();
    start_ = 0;
  } else if (start_ > buf_.size() / 2) {
    buf_.erase(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(start_));
    start_ = 0;
  }
  buf_.insert(buf_.end(), bytes.begin(), bytes.end());
  // Check the announced length as soon as it arrives, before buffering a forged megabyte.
  if (buf_.size() - start_ >= kLengthBytes) {
    Parser p(std::span<const std::byte>(buf_).subspan(start_, kLengthBytes));
    const uint32_t length = p.u32();
    if (length > kMaxFrameBytes)
      throw ProtocolError("peer announced a message of " + std::to_string(length) +
                          " bytes; the limit is " + std::to_string(kMaxFrameBytes));
  }
}

bool FrameAssembler::has_frame() const {
  const size_t available = buf_.size() - start_;
  if (available < kLengthBytes) return false;
  Parser p(std::span<const std::byte>(buf_).subspan(start_, kLengthBytes));
  const uint32_t length = p.u32();
  return length > kMaxFrameBytes || available >= kLengthBytes + length;
}

bool FrameAssembler::next(std::span<const std::byte>& body) {
  const size_t available = buf_.size() - start_;
  if (available < kLengthBytes) return false;
  Parser p(std::span<const std::byte>(buf_).subspan(start_, kLengthBytes));
  const uint32_t length = p.u32();
  if (length > kMaxFrameBytes)
    throw ProtocolError("peer announced a message of " + std::to_string(length) +
                        " bytes; the limit is " + std::to_string(kMaxFrameBytes));
  if (available < kLengthBytes + length) return false;
  body = std::span<const std::byte>(buf_).subspan(start_ + kLengthBytes, length);
  start_ += kLengthBytes + length;
  return true;
}

// ---- Field groups -------------------------------------------------------------------------

void ArenaGrant::write(Writer& w) const {
  w.u32(arena_id).u8(static_cast<uint8_t>(access)).str(label);
}

ArenaGrant ArenaGrant::read(Parser& p) {
  ArenaGrant g;
  g.arena_id = p.u32();
  const uint8_t access = p.u8();
  g.label = std::string(p.str(256, "arena label"));
  if (g.arena_id > 255) throw ProtocolError("arena id " + std::to_string(g.arena_id) + " > 255");
  if (access > static_cast<uint8_t>(GrantAccess::kReadOnly))
    throw ProtocolError("unknown arena access " + std::to_string(access));
  g.access = static_cast<GrantAccess>(access);
  return g;
}

void RingLocation::write(Writer& w) const {
  w.u32(channel_id)
      .u64(descriptor)
      .u32(ring_arena)
      .u64(ring_offset)
      .u64(ring_bytes)
      .u32(readers_arena)
      .u64(readers_offset)
      .u64(readers_bytes)
      .u64(capacity)
      .u32(max_payload)
      .u32(flags)
      .u32(reader_capacity);
}

RingLocation RingLocation::read(Parser& p) {
  RingLocation r;
  r.channel_id = p.u32();
  r.descriptor = p.u64();
  r.ring_arena = p.u32();
  r.ring_offset = p.u64();
  r.ring_bytes = p.u64();
  r.readers_arena = p.u32();
  r.readers_offset = p.u64();
  r.readers_bytes = p.u64();
  r.capacity = p.u64();
  r.max_payload = p.u32();
  r.flags = p.u32();
  r.reader_capacity = p.u32();
  if (r.ring_arena > 255 || r.readers_arena > 255)
    throw ProtocolError("arena id " + std::to_string(std::max(r.ring_arena, r.readers_arena)) +
                        " > 255");
  return r;
}

void Attachment::write(Writer& w) const {
  ring.write(w);
  w.str(channel).u32(slot).u32(bit).u64(start_position).u64(start_sequence);
}

Attachment Attachment::read(Parser& p) {
  Attachment a;
  a.ring = RingLocation::read(p);
  a.channel = std::string(p.str(kMaxChannelNameBytes, "channel name"));
  a.slot = p.u32();
  a.bit = p.u32();
  a.start_position = p.u64();
  a.start_sequence = p.u64();
  return a;
}

}  // namespace shmbus::protocol
