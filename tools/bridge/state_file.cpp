#include "state_file.hpp"

#include <algorithm>
#include <charconv>
#include <sstream>

namespace shmbus::bridge {

SequenceState* origin_state(OriginSequences& states, uint16_t origin) {
  auto it =
      std::find_if(states.begin(), states.end(), [&](const auto& s) { return s.first == origin; });
  return it == states.end() ? nullptr : &it->second;
}

bool number(std::string_view text, uint64_t& out) {
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), out);
  return error == std::errc{} && end == text.data() + text.size();
}

std::string to_hex(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(bytes.size() * 2);
  for (const unsigned char c : bytes) {
    hex.push_back(kHex[c >> 4]);
    hex.push_back(kHex[c & 15]);
  }
  return hex;
}

std::optional<std::string> from_hex(std::string_view hex) {
  if (hex.empty() || hex.size() % 2 != 0) return std::nullopt;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  std::string bytes;
  bytes.reserve(hex.size() / 2);
  for (size_t i = 0; i < hex.size(); i += 2) {
    const int high = nibble(hex[i]), low = nibble(hex[i + 1]);
    if (high < 0 || low < 0) return std::nullopt;
    bytes.push_back(static_cast<char>(high * 16 + low));
  }
  return bytes;
}

std::string serialize_state(const StreamPositions& stream_positions,
                            const ScannedPatterns& patterns_scanned_once,
                            const StreamSequences& stream_sequences) {
  std::ostringstream out;
  for (const auto& [key, id] : stream_positions) out << id << ' ' << to_hex(key) << '\n';
  for (const auto& pattern : patterns_scanned_once) out << "scanned " << to_hex(pattern) << '\n';
  for (const auto& [key, origins] : stream_sequences) {
    for (const auto& [origin, state] : origins) {
      out << "seq " << to_hex(key) << ' ' << origin << ' ' << state.sequence << ' '
          << state.publish_unix_ns;
      for (const uint64_t missing : state.missing) out << ' ' << missing;
      out << '\n';
    }
  }
  return out.str();
}

bool parse_state_line(std::string_view text, StreamPositions& stream_positions,
                      ScannedPatterns& patterns_scanned_once, StreamSequences& stream_sequences,
                      size_t& sequence_lines) {
  std::vector<std::string_view> words;
  for (size_t at = 0; at < text.size();) {
    const size_t end = std::min(text.find(' ', at), text.size());
    if (end > at) words.push_back(text.substr(at, end - at));
    at = end + 1;
  }
  // Unsigned decimal, the whole word (from_chars refuses a sign).
  if (words.size() < 2) return false;
  const std::optional<std::string> key = from_hex(words[1]);
  if (!key) return false;
  if (words[0] == "scanned") {
    if (words.size() != 2) return false;
    patterns_scanned_once.insert(*key);
    return true;
  }
  if (words[0] != "seq") {
    // A stream entry id: <ms>-<seq>.
    const size_t dash = words[0].find('-');
    uint64_t ms = 0, in_ms = 0;
    if (words.size() != 2 || dash == std::string_view::npos ||
        !number(words[0].substr(0, dash), ms) || !number(words[0].substr(dash + 1), in_ms))
      return false;
    stream_positions[*key] = std::string(words[0]);
    return true;
  }
  uint64_t origin = 0;
  SequenceState state;
  if (words.size() < 5 || !number(words[2], origin) || origin == 0 || origin > 0xffff ||
      !number(words[3], state.sequence) || !number(words[4], state.publish_unix_ns))
    return false;
  for (size_t w = 5; w < words.size(); ++w) {
    uint64_t missing = 0;
    if (!number(words[w], missing) || missing >= state.sequence) return false;
    state.missing.insert(missing);
  }
  state.restored_upto = state.sequence;
  OriginSequences& origins = stream_sequences[*key];
  if (origin_state(origins, static_cast<uint16_t>(origin)))
    return false;  // a second line for the same origin
  origins.push_back({static_cast<uint16_t>(origin), std::move(state)});
  ++sequence_lines;
  return true;
}

}  // namespace shmbus::bridge
