// The envelope a bridge wraps around a message it sends through Redis in envelope mode.
//
//   +-----------+---------+-----------+----------+-------------+----------------+---------+
//   | magic "SBE"| version | origin u16| flags u16| sequence u64| publish_ns u64 | payload |
//   +-----------+---------+-----------+----------+-------------+----------------+---------+
//     0          3         4           6          8             16               24
//
// Little-endian. version 1. origin: the exporting bridge's host id (1..65534). flags: 0 in
// version 1 (a decoder refuses anything else rather than misread a later version). sequence:
// the message's sequence in its channel on the origin bus (gap-free there, so a receiver can
// count what was lost on the way). publish_ns: the origin publisher's CLOCK_REALTIME.
//
// Thread safety: plain functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

namespace shmbus::bridge {

inline constexpr std::size_t kEnvelopeHeaderBytes = 24;
inline constexpr uint8_t kEnvelopeVersion = 1;

struct EnvelopeHeader {
  uint16_t origin = 0;
  uint64_t sequence = 0;
  uint64_t publish_unix_ns = 0;
};

// Appends header + payload to `out` (cleared first).
void encode_envelope(const EnvelopeHeader& header, std::span<const std::byte> payload,
                     std::string& out);

struct DecodedEnvelope {
  EnvelopeHeader header;
  std::span<const std::byte> payload;  // points into the decoded bytes
};
// nullopt, with `why` set, unless `bytes` is a well-formed version-1 envelope.
std::optional<DecodedEnvelope> decode_envelope(std::span<const std::byte> bytes,
                                               std::string& why);

}  // namespace shmbus::bridge
