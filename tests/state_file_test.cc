// The bridge's state file text (tools/bridge/state_file.hpp) without Redis: what is saved
// reads back the same, whatever bytes the keys hold, and a malformed line is refused whole.
#include "state_file.hpp"

#include <gtest/gtest.h>

#include <sstream>
#include <string>

namespace shmbus::bridge {
namespace {

struct State {
  StreamPositions positions;
  ScannedPatterns scanned;
  StreamSequences sequences;
  size_t sequence_lines = 0;
  // Every line of `text`; false at the first one refused.
  bool load(const std::string& text) {
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
      if (!parse_state_line(line, positions, scanned, sequences, sequence_lines)) return false;
    return true;
  }
};

TEST(StateFile, WhatIsSavedReadsBackTheSame) {
  State saved;
  const std::string binary_key("orders\0:\xff\n 1", 12);
  saved.positions["orders:1"] = "1700000000000-3";
  saved.positions[binary_key] = "5-0";
  saved.scanned.insert("orders:*");
  SequenceState a;
  a.sequence = 42;
  a.publish_unix_ns = 1700000000123456789;
  a.missing = {39, 40};
  saved.sequences["orders:1"].push_back({7, a});
  SequenceState b;
  b.sequence = 3;
  saved.sequences["orders:1"].push_back({65535, b});
  const std::string text = serialize_state(saved.positions, saved.scanned, saved.sequences);
  State loaded;
  ASSERT_TRUE(loaded.load(text)) << text;
  EXPECT_EQ(loaded.positions, saved.positions);
  EXPECT_EQ(loaded.scanned, saved.scanned);
  EXPECT_EQ(loaded.sequence_lines, 2u);
  const SequenceState* seven = origin_state(loaded.sequences["orders:1"], 7);
  ASSERT_NE(seven, nullptr);
  EXPECT_EQ(seven->sequence, 42u);
  EXPECT_EQ(seven->publish_unix_ns, 1700000000123456789u);
  EXPECT_EQ(seven->missing, (std::set<uint64_t>{39, 40}));
  EXPECT_EQ(seven->restored_upto, 42u);  // what an earlier run counted as lost
  EXPECT_NE(origin_state(loaded.sequences["orders:1"], 65535), nullptr);
  EXPECT_EQ(origin_state(loaded.sequences["orders:1"], 8), nullptr);
}

TEST(StateFile, MalformedLinesAreRefusedWhole) {
  for (const std::string line : {
           "5-0",                                  // no key
           "5-0 6f7",                              // odd hex
           "5-0 6F72",                             // uppercase hex
           "5 6f72",                               // an id without its dash
           "-5-0 6f72",                            // a sign
           "5-0 6f72 extra",                       // too many words
           "scanned",                              // no pattern
           "scanned 6f72 6f72",                    // two patterns
           "seq 6f72 0 3 100",                     // origin 0 is this host's, never stored
           "seq 6f72 65536 3 100",                 // origin past 16 bits
           "seq 6f72 7 3",                         // no publish time
           "seq 6f72 7 3 100 3",                   // a missing sequence not below the last
           "seq 6f72 7 18446744073709551616 100",  // overflow
       }) {
    State state;
    EXPECT_FALSE(state.load(line)) << "accepted: '" << line << "'";
    EXPECT_TRUE(state.positions.empty() && state.scanned.empty()) << line;
  }
  State empty;
  EXPECT_FALSE(
      parse_state_line("", empty.positions, empty.scanned, empty.sequences, empty.sequence_lines));
  State twice;
  EXPECT_FALSE(twice.load("seq 6f72 7 3 100\nseq 6f72 7 4 200\n"));  // one line per origin
}

TEST(StateFile, HexRoundTripsAnyBytes) {
  std::string all;
  for (int c = 0; c < 256; ++c) all.push_back(static_cast<char>(c));
  EXPECT_EQ(from_hex(to_hex(all)), all);
  EXPECT_EQ(from_hex(""), std::nullopt);
  EXPECT_EQ(from_hex("0g"), std::nullopt);
}

}  // namespace
}  // namespace shmbus::bridge
