// Loss and repeat accounting per origin (tools/bridge/origin_sequences.hpp) without Redis.
#include "origin_sequences.hpp"

#include <gtest/gtest.h>

#include <optional>

namespace shmbus::bridge {
namespace {

// What take() returns for a durable entry refused as a repeat.
constexpr std::nullopt_t kRepeat = std::nullopt;

constexpr LossChange lost(uint64_t n) {
  return {n, 0};
}
constexpr LossChange kFound{0, 1};

// Takes `sequence` (stamped `ns`) from origin 7, as the bridge does; returns the change in
// lost_in_transit, or kRepeat.
struct Origin {
  OriginSequences states;
  bool durable;
  std::optional<LossChange> take(uint64_t sequence, uint64_t ns) {
    SequenceState* last = origin_state(states, 7);
    if (durable && last && durable_repeat(*last, sequence, ns)) return kRepeat;
    return record_sequence(states, last, 7, sequence, ns, durable);
  }
};

TEST(OriginSequences, PubSubCountsGapsAndFollowsRestarts) {
  Origin o{{}, false};
  EXPECT_EQ(o.take(1, 100), lost(0));  // the first: nothing before it is known
  EXPECT_EQ(o.take(2, 110), lost(0));
  EXPECT_EQ(o.take(5, 120), lost(2));  // 3 and 4 never came
  EXPECT_EQ(o.take(1, 130), lost(0));  // a lower number published later: a restart
  EXPECT_EQ(o.take(2, 135), lost(0));  // counted from the restart, not from 5
  EXPECT_EQ(o.take(4, 140), lost(1));
  ASSERT_EQ(o.states.size(), 1u);
  EXPECT_EQ(o.states[0].second.sequence, 4u);
  EXPECT_TRUE(o.states[0].second.missing.empty());  // pub/sub keeps no per-number gaps
}

// A cluster failover can deliver what the old primary held after what the new one took:
// the late messages fill the gap they were counted lost in, and the numbering goes on.
TEST(OriginSequences, PubSubMessagesLateThroughAFailoverAreFoundAgain) {
  Origin o{{}, false};
  EXPECT_EQ(o.take(10, 100), lost(0));
  EXPECT_EQ(o.take(20, 200), lost(9));  // 11..19 missing
  EXPECT_EQ(o.take(11, 110), kFound);
  EXPECT_EQ(o.take(12, 120), kFound);
  EXPECT_EQ(o.take(19, 190), kFound);
  EXPECT_EQ(o.take(15, 150), kFound);   // from the middle: 13 and 14 stay counted
  EXPECT_EQ(o.take(13, 130), lost(0));  // ... even when they come after all
  EXPECT_EQ(o.take(21, 210), lost(0));  // counted from 20, not from a late one
  EXPECT_EQ(o.states[0].second.sequence, 21u);
  // Late messages from before the gap were never counted: nothing to uncount.
  EXPECT_EQ(o.take(5, 50), lost(0));
}

// A large gap costs one interval, not a set of numbers.
TEST(OriginSequences, PubSubGapsCostNothingToTrack) {
  Origin o{{}, false};
  EXPECT_EQ(o.take(1, 1), lost(0));
  EXPECT_EQ(o.take(uint64_t{1} << 31, 5), lost((uint64_t{1} << 31) - 2));
  EXPECT_TRUE(o.states[0].second.missing.empty());
  EXPECT_EQ(o.states[0].second.gap_first, 2u);
  EXPECT_EQ(o.states[0].second.gap_last, (uint64_t{1} << 31) - 1);
  EXPECT_EQ(o.take(3, 2), kFound);  // far below the newest, but in the gap: late
}

// Anyone who can PUBLISH can forge an origin's envelope: a number and a stamp at 2^64 - 1
// must neither add 2^64 to the losses nor freeze the accounting for the real messages.
TEST(OriginSequences, PubSubForgedNumbersNeitherCountNorStick) {
  Origin o{{}, false};
  EXPECT_EQ(o.take(5, 100), lost(0));
  EXPECT_EQ(o.take(UINT64_MAX, UINT64_MAX), lost(0));  // implausible: a restart
  EXPECT_EQ(o.take(6, 110), lost(0));                  // far below, older: a restart again
  EXPECT_EQ(o.take(8, 120), lost(1));                  // and counting goes on
}

TEST(OriginSequences, DurableRepeatsAreRefusedAndLateResendsFillTheirGap) {
  Origin o{{}, true};
  EXPECT_EQ(o.take(1, 100), lost(0));
  EXPECT_EQ(o.take(4, 130), lost(2));  // 2 and 3 missing for now
  EXPECT_EQ(o.take(4, 130), kRepeat);
  EXPECT_EQ(o.take(1, 100), kRepeat);
  EXPECT_EQ(o.take(2, 110), kFound);   // a late resend: no longer lost
  EXPECT_EQ(o.take(2, 110), kRepeat);  // ... and a second copy of it is a repeat
  EXPECT_EQ(o.take(3, 120), kFound);
  EXPECT_TRUE(o.states[0].second.missing.empty());
}

TEST(OriginSequences, RestoredGapsFillWithoutUncountingThisRun) {
  Origin o{{}, true};
  EXPECT_EQ(o.take(10, 100), lost(0));
  SequenceState& state = o.states[0].second;
  state.missing = {8, 9};  // as restored from the state file: an earlier run counted them
  state.restored_upto = 9;
  EXPECT_EQ(o.take(9, 95), lost(0));
  EXPECT_EQ(state.missing.count(9), 0u);
}

TEST(OriginSequences, DurableNumberingRestartDropsOldGaps) {
  Origin o{{}, true};
  EXPECT_EQ(o.take(1, 100), lost(0));
  EXPECT_EQ(o.take(5, 110), lost(3));
  // A newer stamp with a lower number: the origin restarted its numbering.
  EXPECT_EQ(o.take(2, 200), lost(0));
  EXPECT_TRUE(o.states[0].second.missing.empty());
  EXPECT_EQ(o.take(3, 210), lost(0));  // would have passed as a late resend of the old gap
}

TEST(OriginSequences, GapsOlderThanTheResendWindowAreForgotten) {
  Origin o{{}, true};
  EXPECT_EQ(o.take(1, 1), lost(0));
  EXPECT_EQ(o.take(3, 3), lost(1));  // 2 missing
  const uint64_t far = 3 + kResendWindow + 10;
  EXPECT_EQ(o.take(far, 5), lost(far - 4));
  // Only the last kResendWindow numbers are kept as fillable gaps.
  EXPECT_EQ(o.states[0].second.missing.size(), kResendWindow);
  EXPECT_EQ(o.states[0].second.missing.count(2), 0u);
  EXPECT_EQ(o.take(2, 2), kRepeat);  // too old to be a resend: taken for a repeat
}

// A forged sequence number far ahead: pub/sub counts a gap up to kMaxPubSubGap and takes a
// larger jump for a restart; durable counts it whole; neither overflows.
TEST(OriginSequences, HugeGapsCountWithoutOverflow) {
  Origin o{{}, false};
  EXPECT_EQ(o.take(1, 1), lost(0));
  EXPECT_EQ(o.take(kMaxPubSubGap + 1, 2), lost(kMaxPubSubGap - 1));
  EXPECT_EQ(o.take(UINT64_MAX, 3), lost(0));  // past kMaxPubSubGap: a restart, not loss
  Origin d{{}, true};
  EXPECT_EQ(d.take(0, 1), lost(0));
  EXPECT_EQ(d.take(uint64_t{1} << 63, 2), lost((uint64_t{1} << 63) - 1));
  EXPECT_EQ(d.states[0].second.missing.size(), kResendWindow);
}

TEST(OriginSequences, OriginsAreKeptApart) {
  OriginSequences states;
  EXPECT_EQ(record_sequence(states, nullptr, 1, 5, 10, false), lost(0));
  EXPECT_EQ(record_sequence(states, nullptr, 2, 9, 10, false), lost(0));
  EXPECT_EQ(record_sequence(states, origin_state(states, 1), 1, 7, 20, false), lost(1));
  EXPECT_EQ(origin_state(states, 2)->sequence, 9u);
}

}  // namespace
}  // namespace shmbus::bridge
