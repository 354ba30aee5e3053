// The bridge's state file: what durable imports have read and taken, so a restart resumes
// there. One line each:
//   <last id> <key as hex>                 the read position in a stream
//   seq <key as hex> <origin> <sequence> <publish ns> [<missing sequence>...]
//                                          what was imported from an origin (SequenceState)
//   scanned <pattern as hex>               a pattern SCANned for streams
// Pure text in and out; writing it durably is durable_file.hpp's.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shmbus::bridge {

// Per (channel, origin): the last envelope sequence imported, to count gaps and to drop
// durable entries read twice.
struct SequenceState {
  uint64_t sequence = 0;
  uint64_t publish_unix_ns = 0;
  // Durable only: sequences below `sequence` not seen yet, within kResendWindow of it. A
  // resend can land after later entries (an XADD refused for a moment while the ones
  // pipelined behind it were taken): it fills its gap instead of passing for a duplicate.
  std::set<uint64_t> missing;
  // Missing sequences up to this one were restored from the state file: an earlier run of
  // the bridge counted them in its lost_in_transit, so filling them leaves ours alone.
  uint64_t restored_upto = 0;
  // Pub/sub only (not saved): the last gap counted lost, [gap_first, gap_last]; empty
  // while gap_first > gap_last (origin_sequences.cpp).
  uint64_t gap_first = 1;
  uint64_t gap_last = 0;
};

// What was imported from each origin of one stream or channel.
using OriginSequences = std::vector<std::pair<uint16_t, SequenceState>>;
// The state of `origin` in `states`, or nullptr.
SequenceState* origin_state(OriginSequences& states, uint16_t origin);

using StreamPositions = std::map<std::string, std::string>;  // stream key -> last id read
using ScannedPatterns = std::set<std::string, std::less<>>;
using StreamSequences = std::map<std::string, OriginSequences>;

// The file's text for these (keys and patterns as hex, so any bytes fit on a line).
std::string serialize_state(const StreamPositions& positions, const ScannedPatterns& scanned,
                            const StreamSequences& sequences);

// One line of the file into the three; false, and nothing taken, if malformed (a second
// line for the same stream and origin included). `sequence_lines` counts the seq lines.
bool parse_state_line(std::string_view text, StreamPositions& positions, ScannedPatterns& scanned,
                      StreamSequences& sequences, size_t& sequence_lines);

// An unsigned decimal that is the whole of `text` (no sign, no space, no overflow).
bool number(std::string_view text, uint64_t& out);

// Stream keys and patterns in the file: any bytes, as lowercase hex; nullopt unless `hex`
// is a non-empty even run of lowercase hex digits.
std::string to_hex(std::string_view bytes);
std::optional<std::string> from_hex(std::string_view hex);

}  // namespace shmbus::bridge
