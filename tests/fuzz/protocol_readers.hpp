// The readers of the control protocol, as the fuzz targets run them: for each frame type,
// the fields parsed in the order and with the limits the real reader uses (client side:
// libbus/src/client.cpp, bus.cpp, subscription.cpp; daemon side: dispatch() and the on_*
// handlers in daemon/requests.cpp). The real readers sit inside classes that also act on what
// they parse (map rings, create channels), so they are restated here; a change to a reader
// there belongs here too.
//
// Every reader also writes back what it parsed with protocol::Writer and aborts unless that
// reproduces the fields byte for byte: a parser that accepts a frame but misreads it (a
// field skipped, a length off by one) is caught even though nothing crashes.
//
// Thread safety: plain functions.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "protocol.hpp"

namespace shmbus::fuzz {

// daemon/requests.cpp: kMaxClientNameBytes (private to the daemon).
inline constexpr uint32_t kMaxClientNameBytes = 256;

// Aborts unless `w` (built from what was parsed) carries exactly the fields of `f`, or with
// `prefix`, the bytes of `f` its reader looked at (a reader that ignores what follows).
inline void expect_same_fields(protocol::Writer& w, const protocol::Frame& f, bool prefix = false) {
  constexpr size_t kHeader = 10;  // length u32 + type u16 + request u32
  size_t written = 0;
  bool same = false;
  try {
    const std::vector<std::byte>& frame = w.frame();
    written = frame.size() - kHeader;
    same = (prefix ? written <= f.fields.size() : written == f.fields.size()) &&
           (written == 0 || std::memcmp(frame.data() + kHeader, f.fields.data(), written) == 0);
  } catch (const protocol::ProtocolError& e) {
    // The fields came from a frame within the limit: writing them back must fit too.
    std::fprintf(stderr, "%s: writing back the parsed fields failed: %s\n",
                 protocol::type_name(f.type), e.what());
    std::abort();
  }
  if (!same) {
    std::fprintf(stderr, "%s: %zu bytes of fields parsed, writing them back gave %zu bytes%s\n",
                 protocol::type_name(f.type), f.fields.size(), written,
                 written == f.fields.size() ? " that differ" : "");
    std::abort();
  }
}

// A u32 count and that many strings (server.cpp: read_names).
inline std::vector<std::string> read_names(protocol::Parser& p, uint32_t max_bytes,
                                           const char* what) {
  const uint32_t n = p.count(protocol::kMaxNamesPerRequest, 4, what);
  std::vector<std::string> names;
  names.reserve(n);
  for (uint32_t i = 0; i < n; ++i) names.emplace_back(p.str(max_bytes, what));
  return names;
}

inline void write_names(protocol::Writer& w, const std::vector<std::string>& names) {
  w.u32(static_cast<uint32_t>(names.size()));
  for (const auto& name : names) w.str(name);
}

// Parses a frame the client reads (a reply or an event). Throws ProtocolError on a malformed
// one; returns false for a type no client reader handles.
inline bool read_client_frame(const protocol::Frame& f) {
  using protocol::Type;
  protocol::Parser p(f.fields);
  protocol::Writer w(f.type, f.request);
  switch (f.type) {
    case Type::kWelcome: {  // client.cpp: ControlConnection::ControlConnection
      const uint16_t version = p.u16();
      const uint16_t publisher_id = p.u16();
      const uint64_t client_id = p.u64();
      const std::string bus(p.str(256, "bus name"));
      const uint32_t doorbell_bits = p.u32();
      const uint64_t doorbell_offset = p.u64();
      p.end();
      w.u16(version).u16(publisher_id).u64(client_id).str(bus);
      w.u32(doorbell_bits).u64(doorbell_offset);
      break;
    }
    case Type::kArenaGrant: {  // client.cpp: ControlConnection::take_grant
      const auto grant = protocol::ArenaGrant::read(p);
      p.end();
      grant.write(w);
      break;
    }
    case Type::kError: {  // client.cpp: ControlConnection::next_reply (no end(): ignored)
      const uint16_t code = p.u16();
      const std::string message(p.str(protocol::kMaxErrorBytes, "error"));
      w.u16(code).str(message);
      expect_same_fields(w, f, true);
      return true;
    }
    case Type::kChannelOpened: {  // bus.cpp: open_channel
      const auto location = protocol::RingLocation::read(p);
      const std::string rule(p.str(protocol::kMaxPatternBytes + 64, "rule"));
      p.end();
      location.write(w);
      w.str(rule);
      break;
    }
    case Type::kSubscribed: {  // subscription.cpp: apply_subscribed, one frame of the reply
      const uint8_t final = p.u8();
      const uint32_t n = p.count(protocol::kMaxFrameBytes, 40, "attachments");
      std::vector<protocol::Attachment> attachments;
      for (uint32_t i = 0; i < n; ++i) attachments.push_back(protocol::Attachment::read(p));
      w.u8(final).u32(n);
      for (const auto& a : attachments) a.write(w);
      if (final != 0) {
        const uint32_t subscriptions = p.u32();
        const uint16_t code = p.u16();
        const std::string error(p.str(protocol::kMaxErrorBytes, "error"));
        w.u32(subscriptions).u16(code).str(error);
      }
      p.end();
      break;
    }
    case Type::kUnsubscribed: {  // subscription.cpp: apply_unsubscribed
      const uint32_t n = p.count(protocol::kMaxNamesPerRequest * 4u, 4, "detached channels");
      w.u32(n);
      for (uint32_t i = 0; i < n; ++i) w.u32(p.u32());
      w.u32(p.u32());
      p.end();
      break;
    }
    case Type::kPatternList: {  // bus.cpp: Bus::patterns, one frame of the reply
      const uint8_t final = p.u8();
      const uint32_t n = p.count(protocol::kMaxFrameBytes, 8, "patterns");
      w.u8(final).u32(n);
      for (uint32_t i = 0; i < n; ++i) {
        const std::string pattern(p.str(protocol::kMaxPatternBytes, "pattern"));
        w.str(pattern).u32(p.u32());
      }
      p.end();
      break;
    }
    case Type::kAttach: {  // subscription.cpp: apply_events
      const auto a = protocol::Attachment::read(p);
      p.end();
      a.write(w);
      break;
    }
    case Type::kDetach: {  // subscription.cpp: apply_events
      const uint32_t channel_id = p.u32();
      p.end();
      w.u32(channel_id);
      break;
    }
    case Type::kOk:
    case Type::kPong:  // their fields are not read
      return true;
    default: return false;
  }
  expect_same_fields(w, f);
  return true;
}

// Parses a request the daemon reads. Throws ProtocolError where the daemon would drop the
// connection; returns false for a type the daemon refuses unread.
inline bool read_daemon_frame(const protocol::Frame& f) {
  using protocol::Type;
  protocol::Parser p(f.fields);
  protocol::Writer w(f.type, f.request);
  switch (f.type) {
    case Type::kHello: {  // on_hello
      const uint32_t magic = p.u32();
      const uint16_t min_version = p.u16();
      const uint16_t max_version = p.u16();
      const std::string name(p.str(kMaxClientNameBytes, "client name"));
      const uint8_t role = p.u8();
      p.end();
      if (role > static_cast<uint8_t>(protocol::Role::kObserver))
        throw protocol::ProtocolError("HELLO with unknown role");
      w.u32(magic).u16(min_version).u16(max_version).str(name).u8(role);
      break;
    }
    case Type::kOpenChannel: {  // on_open_channel
      const std::string name(p.str(kMaxChannelNameBytes, "channel name"));
      const uint64_t ring_bytes = p.u64();
      const uint32_t max_message = p.u32();
      const uint8_t back_pressure = p.u8();
      p.end();
      w.str(name).u64(ring_bytes).u32(max_message).u8(back_pressure);
      break;
    }
    case Type::kCloseChannel: {  // on_close_channel
      const uint32_t channel_id = p.u32();
      p.end();
      w.u32(channel_id);
      break;
    }
    case Type::kSubscribe: {  // on_subscribe
      const uint8_t start = p.u8();
      const uint64_t after_sequence = p.u64();
      if (start > static_cast<uint8_t>(protocol::StartKind::kAfterSequence))
        throw protocol::ProtocolError("unknown start position");
      const auto names = read_names(p, kMaxChannelNameBytes, "channel name");
      p.end();
      w.u8(start).u64(after_sequence);
      write_names(w, names);
      break;
    }
    case Type::kPsubscribe:  // on_psubscribe
    case Type::kPunsubscribe: {
      const auto patterns = read_names(p, protocol::kMaxPatternBytes, "pattern");
      p.end();
      write_names(w, patterns);
      break;
    }
    case Type::kUnsubscribe: {  // on_unsubscribe
      const auto names = read_names(p, kMaxChannelNameBytes, "channel name");
      p.end();
      write_names(w, names);
      break;
    }
    case Type::kPatterns: {  // on_patterns
      const std::string filter(p.str(protocol::kMaxPatternBytes, "pattern filter"));
      p.end();
      w.str(filter);
      break;
    }
    case Type::kReportCorrupt: {  // on_report_corrupt
      const uint32_t channel_id = p.u32();
      p.end();
      w.u32(channel_id);
      break;
    }
    case Type::kPing:
    case Type::kBye:  // dispatch: no fields
    case Type::kMapArenas: p.end(); break;
    default: return false;
  }
  expect_same_fields(w, f);
  return true;
}

}  // namespace shmbus::fuzz
