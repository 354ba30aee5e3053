#include "envelope.hpp"

namespace shmbus::bridge {

namespace {
constexpr char kMagic[3] = {'S', 'B', 'E'};
constexpr uint16_t kInvalidOrigin = 0;
constexpr uint16_t kReservedOrigin = 0xffff;  // kUnknownOrigin: raw imports only

void put(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}
uint64_t get(std::span<const std::byte> in, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t{std::to_integer<uint8_t>(in[at + i])} << (8 * i);
  return v;
}
}  // namespace

void encode_envelope(const EnvelopeHeader& header, std::span<const std::byte> payload,
                     std::string& out) {
  out.clear();
  out.reserve(kEnvelopeHeaderBytes + payload.size());
  out.append(kMagic, sizeof kMagic);
  put(out, kEnvelopeVersion, 1);
  put(out, header.origin, 2);
  put(out, 0, 2);
  put(out, header.sequence, 8);
  put(out, header.publish_unix_ns, 8);
  out.append(reinterpret_cast<const char*>(payload.data()), payload.size());
}

std::optional<DecodedEnvelope> decode_envelope(std::span<const std::byte> bytes,
                                               std::string& why) {
  if (bytes.size() < kEnvelopeHeaderBytes) {
    why = "envelope of " + std::to_string(bytes.size()) + " bytes is shorter than its " +
          std::to_string(kEnvelopeHeaderBytes) + "-byte header";
    return std::nullopt;
  }
  for (size_t i = 0; i < sizeof kMagic; ++i) {
    if (std::to_integer<char>(bytes[i]) != kMagic[i]) {
      why = "no envelope magic (a raw message on an envelope rule?)";
      return std::nullopt;
    }
  }
  const auto version = static_cast<uint8_t>(get(bytes, 3, 1));
  const auto flags = static_cast<uint16_t>(get(bytes, 6, 2));
  if (version != kEnvelopeVersion || flags != 0) {
    why = "envelope version " + std::to_string(version) + " flags " + std::to_string(flags) +
          "; this bridge reads version 1 with flags 0";
    return std::nullopt;
  }
  DecodedEnvelope d;
  d.header.origin = static_cast<uint16_t>(get(bytes, 4, 2));
  if (d.header.origin == kInvalidOrigin || d.header.origin == kReservedOrigin) {
    why = "envelope origin " + std::to_string(d.header.origin) + " is not a host id (1..65534)";
    return std::nullopt;
  }
  d.header.sequence = get(bytes, 8, 8);
  d.header.publish_unix_ns = get(bytes, 16, 8);
  d.payload = bytes.subspan(kEnvelopeHeaderBytes);
  return d;
}

}  // namespace shmbus::bridge
