// Raw-mode echo suppression's ledger (tools/bridge/echo_ledger.hpp) without Redis: our own
// payloads are recognised once each, in order, per channel; a heartbeat that comes back
// retires what was sent before it; others' payloads are never taken for ours.
#include "echo_ledger.hpp"

#include <gtest/gtest.h>

namespace shmbus::bridge {
namespace {

TEST(EchoLedger, OurPayloadsAreRecognisedOnceEachPerChannel) {
  EchoLedger ledger;
  ledger.remember("chat:1", "hello", 0);
  ledger.remember("chat:1", "hello", 0);              // the same payload published twice
  EXPECT_FALSE(ledger.recognise("chat:2", "hello"));  // another channel
  EXPECT_FALSE(ledger.recognise("chat:1", "someone else's"));
  EXPECT_TRUE(ledger.recognise("chat:1", "hello"));
  EXPECT_TRUE(ledger.recognise("chat:1", "hello"));
  EXPECT_FALSE(ledger.recognise("chat:1", "hello"));  // a third copy is someone else's
}

TEST(EchoLedger, AnEchoRetiresTheOlderEntriesOfItsChannel) {
  // Our publishes come back in order: when "b" returns, "a" (sent before it) never will.
  EchoLedger ledger;
  ledger.remember("c", "a", 0);
  ledger.remember("c", "b", 0);
  EXPECT_TRUE(ledger.recognise("c", "b"));
  EXPECT_FALSE(ledger.recognise("c", "a"));
}

TEST(EchoLedger, AReturnedHeartbeatRetiresWhatWasSentBeforeIt) {
  EchoLedger ledger;
  ledger.remember("c", "before", 0);
  ledger.remember("c", "after", 1);
  ledger.remember("d", "old", 0);
  ledger.heartbeat_returned(1);
  EXPECT_EQ(ledger.channels(), 1u);  // "d" emptied and gone
  EXPECT_FALSE(ledger.recognise("c", "before"));
  EXPECT_TRUE(ledger.recognise("c", "after"));
}

TEST(EchoLedger, ForgottenChannelsAndClearLeaveNothing) {
  EchoLedger ledger;
  ledger.remember("keep", "x", 0);
  ledger.remember("drop", "x", 0);
  ledger.forget_channels([](const std::string& channel) { return channel == "drop"; });
  EXPECT_FALSE(ledger.recognise("drop", "x"));
  EXPECT_TRUE(ledger.recognise("keep", "x"));
  ledger.remember("keep", "y", 0);
  ledger.clear();
  EXPECT_EQ(ledger.channels(), 0u);
  EXPECT_FALSE(ledger.recognise("keep", "y"));
}

TEST(EchoLedger, TheHashTellsLengthsAndBytesApart) {
  EXPECT_NE(payload_hash(""), payload_hash(std::string_view("\0", 1)));
  EXPECT_NE(payload_hash("ab"), payload_hash("ba"));
  EXPECT_EQ(payload_hash("same"), payload_hash("same"));
}

}  // namespace
}  // namespace shmbus::bridge
