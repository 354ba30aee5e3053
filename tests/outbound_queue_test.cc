// The bridge's outbound queue (tools/bridge/outbound_queue.hpp) without Redis: order,
// accounting, compaction and put_first keep every message whole and in place.
#include "outbound_queue.hpp"

#include <gtest/gtest.h>

#include <string>

namespace shmbus::bridge {
namespace {

OutboundQueue::Item item(const std::string& key, const std::string& body, uint64_t sequence,
                         const Rule* rule = nullptr) {
  return {key, body, rule, sequence, sequence * 10};
}

TEST(OutboundQueue, FirstInFirstOutWithBytesCounted) {
  OutboundQueue q;
  EXPECT_TRUE(q.empty());
  q.push_back(item("k1", "body-1", 1));
  q.push_back(item("key-2", "b2", 2));
  EXPECT_EQ(q.size(), 2u);
  EXPECT_EQ(q.bytes(), 2u + 6 + 5 + 2);
  EXPECT_EQ(q.front().key, "k1");
  EXPECT_EQ(q.front().body, "body-1");
  EXPECT_EQ(q.front().publish_unix_ns, 10u);
  q.pop_front();
  EXPECT_EQ(q.front().key, "key-2");
  EXPECT_EQ(q.front().sequence, 2u);
  EXPECT_EQ(q.bytes(), 7u);
  q.pop_front();
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.bytes(), 0u);
}

TEST(OutboundQueue, CompactionKeepsEveryMessageWholeAndInOrder) {
  // Past 4,096 entries and 64 KiB taken from the front, the rest moves to the front: the
  // messages behind must read the same before and after, interleaved with pushes.
  OutboundQueue q;
  uint64_t pushed = 0, popped = 0;
  for (int round = 0; round < 20; ++round) {
    for (int i = 0; i < 3000; ++i, ++pushed)
      q.push_back(item("chan:" + std::to_string(pushed), std::string(pushed % 97, 'x'), pushed));
    for (int i = 0; i < 2500; ++i, ++popped) {
      const OutboundQueue::Item front = q.front();
      ASSERT_EQ(front.sequence, popped);
      ASSERT_EQ(front.key, "chan:" + std::to_string(popped));
      ASSERT_EQ(front.body, std::string(popped % 97, 'x'));
      q.pop_front();
    }
  }
  EXPECT_EQ(q.size(), pushed - popped);
  for (; !q.empty(); q.pop_front(), ++popped) ASSERT_EQ(q.front().sequence, popped);
  EXPECT_EQ(popped, pushed);
  EXPECT_EQ(q.bytes(), 0u);
}

TEST(OutboundQueue, PutFirstPlacesInFlightMessagesAheadInTheirOrder) {
  const Rule rule{};
  OutboundQueue queued, in_flight;
  queued.push_back(item("later", "3", 3));
  queued.push_back(item("later", "4", 4));
  in_flight.push_back(item("first", "1", 1, &rule));
  in_flight.push_back(item("first", "2", 2, &rule));
  queued.put_first(std::move(in_flight));
  std::string order;
  for (; !queued.empty(); queued.pop_front()) order += queued.front().body;
  EXPECT_EQ(order, "1234");
}

TEST(OutboundQueue, ALargeBacklogIsGivenBackOnceDrained) {
  OutboundQueue q;
  const std::string megabyte(1 << 20, 'm');
  for (int i = 0; i < 16; ++i) q.push_back(item("big", megabyte, i));
  EXPECT_GE(q.held_bytes(), 16u << 20);
  while (!q.empty()) q.pop_front();
  EXPECT_LT(q.held_bytes(), 4u << 20);  // not kept for good after an outage
}

}  // namespace
}  // namespace shmbus::bridge
