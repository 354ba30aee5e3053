// The bus end to end through the public API, with an in-process daemon: what a Redis
// Pub/Sub user relies on (receiver counts, message/pmessage, unsubscribe, no first-message
// race) plus shmbus's own promises (start positions, loss reports, zero-copy loans).
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "daemon_support.hpp"
#include "shmbus/shmbus.hpp"

namespace shmbus {
namespace {

using namespace std::chrono_literals;
using test::TestDaemon;

std::string payload_of(const Message& m) {
  return std::string(m.text());
}

// A daemon whose rings hold 4 KiB: a few hundred bytes a message lap them quickly.
daemon::Config tiny_rings(bool back_pressure = false) {
  auto config = test::small_test_config();
  config.defaults.ring_bytes = 4096;
  config.defaults.back_pressure = back_pressure;
  return config;
}

TEST(Bus, PublishReturnsZeroWithoutSubscribersAndCreatesTheChannel) {
  TestDaemon daemon;
  auto bus = Bus::connect(daemon.options());
  EXPECT_EQ(bus.publish("chat:1", "hello"), 0u);
  auto stats = StatsReader::open(daemon.options()).read();
  ASSERT_EQ(stats.channels.size(), 1u);
  EXPECT_EQ(stats.channels[0].channel, "chat:1");
  EXPECT_EQ(stats.channels[0].published, 1u);
  EXPECT_EQ(stats.channels[0].payload_bytes, 5u);
}

TEST(Bus, SubscriberReceivesWhatIsPublishedAfterSubscribe) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"chat:1"});
  auto bus = Bus::connect(daemon.options());
  EXPECT_EQ(bus.publish("chat:1", "one"), 1u);
  EXPECT_EQ(bus.publish("chat:1", "two"), 1u);
  auto m1 = sub.next(2s);
  ASSERT_TRUE(m1);
  EXPECT_EQ(m1->channel, "chat:1");
  EXPECT_EQ(m1->pattern, "");
  EXPECT_EQ(payload_of(*m1), "one");
  EXPECT_EQ(m1->sequence, 0u);
  EXPECT_EQ(m1->lost_before, 0u);
  EXPECT_GT(m1->publish_unix_ns, 0u);
  auto m2 = sub.next(2s);
  ASSERT_TRUE(m2);
  EXPECT_EQ(payload_of(*m2), "two");
  EXPECT_EQ(m2->sequence, 1u);
  EXPECT_FALSE(sub.next(0ns));
}

TEST(Bus, ChannelAndMatchingPatternDeliverTwiceLikeRedis) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"foo"});
  sub.psubscribe({"f*", "x*"});
  EXPECT_EQ(sub.count(), 3u);
  auto bus = Bus::connect(daemon.options());
  // Redis counts one receiver per matching subscription entry: foo and f*.
  EXPECT_EQ(bus.publish("foo", "hi"), 2u);
  auto first = sub.next(2s);
  auto second = sub.next(2s);
  ASSERT_TRUE(first && second);
  EXPECT_EQ(first->pattern, "");  // "message" first, as Redis sends it
  EXPECT_EQ(second->pattern, "f*");
  EXPECT_EQ(second->channel, "foo");
  EXPECT_EQ(payload_of(*second), "hi");
  EXPECT_FALSE(sub.next(0ns));
}

// A subscription change delivers nothing published before it, even for a channel that a
// pattern brought in and nobody has read yet: Redis sends "before" once, as a pmessage, and
// only "after" twice. (The attach event of the new channel was still unread in the socket
// when the change settled what came before it.)
TEST(Bus, AChangeRightAfterANewChannelAddsNoReasonToWhatCameBefore) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  sub.psubscribe({"*"});
  auto bus = Bus::connect(daemon.options());
  EXPECT_EQ(bus.publish("fresh:1", "before"), 1u);  // creates the channel
  sub.subscribe({"fresh:1"});
  sub.psubscribe({"fresh:*"});
  EXPECT_EQ(bus.publish("fresh:1", "after"), 3u);
  std::vector<std::pair<std::string, std::string>> got;  // (pattern, payload)
  while (auto m = sub.next(200ms)) got.emplace_back(m->pattern, payload_of(*m));
  EXPECT_EQ(got, (std::vector<std::pair<std::string, std::string>>{
                     {"*", "before"}, {"", "after"}, {"*", "after"}, {"fresh:*", "after"}}));
}

// Redis delivers each publisher's messages in publish order across every channel and
// pattern a subscriber holds; so must shmbus, whichever rings they went through.
TEST(Bus, OnePublishersMessagesArriveInPublishOrderAcrossChannels) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  sub.psubscribe({"q:*"});
  auto bus = Bus::connect(daemon.options());
  bus.publish("q:z", "1");
  bus.publish("q:a", "2");
  bus.publish("q:z", "3");
  bus.publish("q:a", "4");
  std::vector<std::string> got;
  while (auto m = sub.next(200ms)) got.push_back(std::string(m->channel) + " " + payload_of(*m));
  EXPECT_EQ(got, (std::vector<std::string>{"q:z 1", "q:a 2", "q:z 3", "q:a 4"}));
}

// Several rings read ahead (here by name and by pattern, 12 channels: past the direct polls
// into the doorbell's), two Buses in one thread, and a subscription change in the middle
// that settles unread messages: still one order, the publishing thread's.
TEST(Bus, OrderHoldsAcrossBusesRingsAndASubscriptionChange) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  std::vector<std::string> names;
  for (int i = 0; i < 12; ++i) names.push_back("o:" + std::to_string(i));
  sub.subscribe({names[0], names[1]});
  sub.psubscribe({"o:*"});
  auto first = Bus::connect(daemon.options());
  auto second = Bus::connect(daemon.options());
  for (const auto& name : names) first.publish(name, "warm");  // every channel exists
  while (sub.next(50ms)) {
  }
  const int kMessages = 600;
  std::vector<int> got;
  for (int i = 0; i < kMessages; ++i) {
    (i % 3 == 0 ? second : first)
        .publish(names[static_cast<size_t>(i * 7 % 12)], std::to_string(i));
    if (i == kMessages / 2) sub.unsubscribe({names[1]});  // settles what is unread
  }
  std::string last_payload;
  while (auto m = sub.next(200ms)) {
    const std::string payload = payload_of(*m);
    if (payload != last_payload) got.push_back(std::stoi(payload));  // one per message
    last_payload = payload;
  }
  ASSERT_EQ(got.size(), static_cast<size_t>(kMessages));
  for (int i = 0; i < kMessages; ++i) EXPECT_EQ(got[static_cast<size_t>(i)], i) << "at " << i;
}

// A subscriber waiting in next() while one publisher thread alternates two channels back
// to back (the measurement found 500 of 1,000 out of order).
TEST(Bus, AWaitingSubscriberGetsAlternatingChannelsInOrder) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"alt:a", "alt:b"});
  const int kMessages = 1000;
  std::thread publisher([&] {
    auto bus = Bus::connect(daemon.options());
    for (int i = 0; i < kMessages; ++i)
      bus.publish(i % 2 == 0 ? "alt:a" : "alt:b", std::to_string(i));
  });
  int expected = 0;
  int out_of_order = 0;
  while (expected < kMessages) {
    auto m = sub.next(2s);
    if (!m) break;
    if (std::stoi(payload_of(*m)) != expected) ++out_of_order;
    expected = std::stoi(payload_of(*m)) + 1;
  }
  publisher.join();
  EXPECT_EQ(expected, kMessages);
  EXPECT_EQ(out_of_order, 0);
}

TEST(Bus, PatternSubscriberGetsTheFirstMessageOfANewChannel) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  sub.psubscribe({"user:*"});
  auto bus = Bus::connect(daemon.options());
  // The channel does not exist yet: created by this publish, whose message must arrive.
  EXPECT_EQ(bus.publish("user:42", "first"), 1u);
  auto m = sub.next(2s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->channel, "user:42");
  EXPECT_EQ(m->pattern, "user:*");
  EXPECT_EQ(payload_of(*m), "first");
  EXPECT_EQ(m->sequence, 0u);
  EXPECT_EQ(bus.publish("other:1", "not for us"), 0u);
  EXPECT_FALSE(sub.next(50ms));
}

TEST(Bus, ManyNewChannelsUnderOnePatternAllArrive) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  sub.psubscribe({"user:*"});
  auto bus = Bus::connect(daemon.options());
  constexpr int kChannels = 300;
  for (int i = 0; i < kChannels; ++i)
    ASSERT_EQ(bus.publish("user:" + std::to_string(i), std::to_string(i)), 1u);
  std::vector<bool> seen(kChannels, false);
  for (int i = 0; i < kChannels; ++i) {
    auto m = sub.next(2s);
    ASSERT_TRUE(m) << "message " << i << " missing";
    const int id = std::stoi(std::string(m->channel.substr(5)));
    EXPECT_EQ(payload_of(*m), std::to_string(id));
    EXPECT_FALSE(seen[id]);
    seen[id] = true;
  }
  EXPECT_FALSE(sub.next(0ns));
}

TEST(Bus, UnsubscribeStopsDeliveryAndReceiverCounts) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"a", "b"});
  sub.psubscribe({"a*"});
  auto bus = Bus::connect(daemon.options());
  EXPECT_EQ(bus.publish("a", "1"), 2u);
  sub.unsubscribe({"a"});
  EXPECT_EQ(bus.publish("a", "2"), 1u);  // only the pattern now
  sub.punsubscribe();
  EXPECT_EQ(bus.publish("a", "3"), 0u);
  EXPECT_EQ(bus.publish("b", "4"), 1u);
  std::vector<std::string> got;
  while (auto m = sub.next(100ms)) got.push_back(std::string(m->pattern) + "|" + payload_of(*m));
  EXPECT_EQ(got, (std::vector<std::string>{"|1", "a*|1", "a*|2", "|4"}));
  sub.unsubscribe();
  EXPECT_EQ(sub.count(), 0u);
  EXPECT_EQ(bus.publish("b", "5"), 0u);
}

TEST(Bus, IntrospectionLikePubsub) {
  TestDaemon daemon;
  auto bus = Bus::connect(daemon.options());
  auto s1 = Subscription::open(daemon.options());
  auto s2 = Subscription::open(daemon.options());
  s1.subscribe({"news.tech", "news.art"});
  s2.subscribe({"news.tech"});
  s2.psubscribe({"news.*", "x?"});
  s1.psubscribe({"news.*"});
  bus.publish("quiet", "x");  // exists, but nobody subscribes by name
  EXPECT_EQ(bus.channels(), (std::vector<std::string>{"news.art", "news.tech"}));
  EXPECT_EQ(bus.channels("*tech"), (std::vector<std::string>{"news.tech"}));
  const std::vector<std::string> names{"news.tech", "news.art", "nothing"};
  auto counts = bus.numsub(names);
  ASSERT_EQ(counts.size(), 3u);
  EXPECT_EQ(counts[0].subscribers, 2u);
  EXPECT_EQ(counts[1].subscribers, 1u);
  EXPECT_EQ(counts[2].subscribers, 0u);
  EXPECT_EQ(bus.numpat(), 2u);  // distinct patterns, as Redis counts them
  EXPECT_GT(bus.ping().count(), 0);
}

TEST(Bus, PatternsListsEachDistinctPatternWithItsSubscribers) {
  TestDaemon daemon;
  auto bus = Bus::connect(daemon.options());
  EXPECT_TRUE(bus.patterns().empty());
  auto first = Subscription::open(daemon.options());
  first.psubscribe({"chat:*", "user:?"});
  {
    auto second = Subscription::open(daemon.options());
    second.psubscribe({"chat:*"});
    second.subscribe({"chat:1"});  // a channel is no pattern
    const auto all = bus.patterns();
    ASSERT_EQ(all.size(), 2u);
    EXPECT_EQ(all[0].pattern, "chat:*");
    EXPECT_EQ(all[0].subscribers, 2u);
    EXPECT_EQ(all[1].pattern, "user:?");
    EXPECT_EQ(all[1].subscribers, 1u);
    const auto chat = bus.patterns("chat:*");  // the filter matches patterns as strings
    ASSERT_EQ(chat.size(), 1u);
    EXPECT_EQ(chat[0].pattern, "chat:*");
  }
  const auto after = bus.patterns();  // the second subscription closed
  ASSERT_EQ(after.size(), 2u);
  EXPECT_EQ(after[0].subscribers, 1u);
  first.punsubscribe({"user:?"});
  ASSERT_EQ(bus.patterns().size(), 1u);
  EXPECT_EQ(bus.numpat(), 1u);
}

TEST(Bus, PatternsAnswersInSeveralFramesWhenLarge) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  // 1,500 patterns of 1,000 bytes: past one protocol frame (1 MiB).
  std::vector<std::string> patterns;
  for (int i = 0; i < 1500; ++i) {
    std::string p = std::to_string(i) + ":";
    patterns.push_back(p + std::string(1000 - p.size() - 1, 'x') + "*");
  }
  for (size_t i = 0; i < patterns.size(); i += 500)
    sub.psubscribe(std::span<const std::string>(patterns).subspan(i, 500));
  auto bus = Bus::connect(daemon.options());
  const auto listed = bus.patterns();
  ASSERT_EQ(listed.size(), patterns.size());
  for (const auto& p : listed) EXPECT_EQ(p.subscribers, 1u);
}

TEST(Bus, TryPublishWithOriginMarksRelayedMessages) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"chat:1"});
  auto bus = Bus::connect(daemon.options());
  auto channel = bus.channel("chat:1");
  const std::string text = "relayed";
  ASSERT_TRUE(channel.try_publish(std::as_bytes(std::span(text)), 0ns, 7).ok());
  ASSERT_TRUE(channel.try_publish(std::as_bytes(std::span(text)), 0ns).ok());
  auto relayed = sub.next(2s);
  ASSERT_TRUE(relayed);
  EXPECT_EQ(relayed->origin, 7u);
  auto local = sub.next(2s);
  ASSERT_TRUE(local);
  EXPECT_EQ(local->origin, 0u);
}

TEST(Bus, SubscriptionClosedOrDeadLeavesNoOrphans) {
  TestDaemon daemon;
  auto bus = Bus::connect(daemon.options());
  {
    auto sub = Subscription::open(daemon.options());
    sub.subscribe({"c"});
    sub.psubscribe({"c*"});
    EXPECT_EQ(bus.publish("c", "x"), 2u);
  }
  // The daemon frees the slots when the connection closes; give it a moment.
  uint32_t receivers = 99;
  for (int i = 0; i < 200 && receivers != 0; ++i) {
    receivers = bus.publish("c", "y");
    if (receivers != 0) std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(receivers, 0u);
  EXPECT_EQ(bus.numpat(), 0u);
  auto stats = StatsReader::open(daemon.options()).read("c");
  ASSERT_EQ(stats.channels.size(), 1u);
  EXPECT_EQ(stats.channels[0].subscribers, 0u);
}

TEST(Bus, StartEarliestAndAfterSequenceReadHistory) {
  TestDaemon daemon;
  auto bus = Bus::connect(daemon.options());
  for (int i = 0; i < 5; ++i) bus.publish("log", std::to_string(i));
  auto earliest = Subscription::open(daemon.options());
  earliest.subscribe({"log"}, StartAt::earliest());
  for (int i = 0; i < 5; ++i) {
    auto m = earliest.next(1s);
    ASSERT_TRUE(m);
    EXPECT_EQ(payload_of(*m), std::to_string(i));
  }
  auto resumed = Subscription::open(daemon.options());
  resumed.subscribe({"log"}, StartAt::after(2));
  auto m = resumed.next(1s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->sequence, 3u);
  EXPECT_EQ(payload_of(*m), "3");
  auto latest = Subscription::open(daemon.options());
  latest.subscribe({"log"});
  EXPECT_FALSE(latest.next(0ns));
}

TEST(Bus, LappedSubscriberLearnsHowManyItLost) {
  TestDaemon daemon(tiny_rings());
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"fast"});
  auto bus = Bus::connect(daemon.options());
  const std::string payload(200, 'p');
  for (int i = 0; i < 100; ++i) bus.publish("fast", payload);  // ~17 fit in 4 KiB
  uint64_t delivered = 0, lost = 0, last_sequence = 0;
  while (auto m = sub.next(100ms)) {
    ++delivered;
    lost += m->lost_before;
    last_sequence = m->sequence;
  }
  EXPECT_GT(lost, 0u);
  EXPECT_EQ(delivered + lost, 100u);
  EXPECT_EQ(last_sequence, 99u);
}

// next_view(): the payload is the ring's own bytes, held until the next call.
TEST(Bus, ViewOnABackPressureChannelIsStableUntilTheNextCall) {
  TestDaemon daemon(tiny_rings(true));
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"bp"});
  sub.psubscribe({"b*"});
  auto bus = Bus::connect(daemon.options());
  ChannelOptions no_wait;
  no_wait.publish_wait = 0ns;
  auto channel = bus.channel("bp", no_wait);
  const std::string first(1000, 'a');
  ASSERT_EQ(channel.publish(first), 2u);
  auto m = sub.next_view(1s);
  ASSERT_TRUE(m);
  EXPECT_EQ(payload_of(*m), first);
  // The held frame gates publishers: the ring fills up behind it and never overwrites it.
  uint32_t accepted = 0;
  const std::string other(1000, 'z');
  while (channel.try_publish(std::as_bytes(std::span(other)), 0ns).ok()) ++accepted;
  EXPECT_GT(accepted, 0u);
  EXPECT_LT(accepted, 4u);
  EXPECT_EQ(payload_of(*m), first);
  EXPECT_TRUE(sub.intact());
  // The pmessage of the same message comes from the same frame.
  auto p = sub.next_view(1s);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->pattern, "b*");
  EXPECT_EQ(payload_of(*p), first);
  uint64_t lost = 0, delivered = 0;
  while (auto n = sub.next_view(100ms)) {
    lost += n->lost_before;
    ++delivered;
    EXPECT_EQ(payload_of(*n), other);
  }
  EXPECT_EQ(lost, 0u);
  EXPECT_EQ(delivered, 2u * accepted);  // message + pmessage each
}

// On a lossy ring a view can be overwritten while held: intact() says so, and the message
// counts as lost, so every sequence number is still delivered or reported lost once.
TEST(Bus, OverwrittenViewIsNotIntactAndCountsAsLost) {
  TestDaemon daemon(tiny_rings());
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"fast"});
  auto bus = Bus::connect(daemon.options());
  const std::string payload(200, 'p');
  bus.publish("fast", "first");
  auto m = sub.next_view(1s);
  ASSERT_TRUE(m);
  EXPECT_EQ(payload_of(*m), "first");
  EXPECT_TRUE(sub.intact());
  for (int i = 0; i < 99; ++i) bus.publish("fast", payload);  // laps the 4 KiB ring
  EXPECT_FALSE(sub.intact());
  uint64_t delivered = 0, lost = 0, last_sequence = 0;
  while (auto n = sub.next_view(100ms)) {
    EXPECT_EQ(payload_of(*n), payload);
    ASSERT_TRUE(sub.intact());
    ++delivered;
    lost += n->lost_before;
    last_sequence = n->sequence;
  }
  EXPECT_EQ(last_sequence, 99u);
  EXPECT_GT(lost, 1u);
  EXPECT_EQ(delivered + lost, 100u);  // "first" is among the lost: intact() said false
}

// A view the caller found intact counts as delivered even if it is overwritten afterwards.
TEST(Bus, ViewFoundIntactCountsAsDeliveredWhateverHappensAfter) {
  TestDaemon daemon(tiny_rings());
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"fast"});
  auto bus = Bus::connect(daemon.options());
  bus.publish("fast", "first");
  auto m = sub.next_view(1s);
  ASSERT_TRUE(m);
  EXPECT_EQ(payload_of(*m), "first");
  ASSERT_TRUE(sub.intact());
  const std::string payload(200, 'p');
  for (int i = 0; i < 99; ++i) bus.publish("fast", payload);
  uint64_t delivered = 1, lost = 0;
  while (auto n = sub.next(100ms)) {
    ++delivered;
    lost += n->lost_before;
  }
  EXPECT_GT(lost, 0u);
  EXPECT_EQ(delivered + lost, 100u);
}

// A subscription change while a view with deliveries to go is held copies them out first.
TEST(Bus, SubscriptionChangeWhileHoldingAViewKeepsItsPmessages) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"foo"});
  sub.psubscribe({"f*"});
  auto bus = Bus::connect(daemon.options());
  ASSERT_EQ(bus.publish("foo", "payload"), 2u);
  auto m = sub.next_view(1s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->pattern, "");
  sub.subscribe({"other"});  // releases the frame; the pmessage must survive
  ASSERT_EQ(bus.publish("foo", "later"), 2u);
  auto p = sub.next(1s);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->pattern, "f*");
  EXPECT_EQ(payload_of(*p), "payload");
  EXPECT_EQ(p->sequence, 0u);
  auto later = sub.next_view(1s);
  ASSERT_TRUE(later);
  EXPECT_EQ(payload_of(*later), "later");
  EXPECT_EQ(later->lost_before, 0u);
}

// Loans reuse their bookkeeping once committed; two outstanding at once must not share it.
TEST(Bus, OverlappingLoansOnOneChannelStayApart) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"frames"});
  auto bus = Bus::connect(daemon.options());
  auto channel = bus.channel("frames");
  for (int round = 0; round < 3; ++round) {
    auto first = channel.loan(8);
    auto second = channel.loan(8);
    ASSERT_NE(first.data().data(), second.data().data());
    std::memcpy(second.data().data(), "second", 6);
    std::memcpy(first.data().data(), "first", 5);
    EXPECT_EQ(second.commit(6), 1u);  // out of claim order: delivered when first is done
    EXPECT_EQ(first.commit(5), 1u);
    EXPECT_TRUE(first.data().empty());
  }
  for (int round = 0; round < 3; ++round) {
    auto m = sub.next(1s);
    ASSERT_TRUE(m);
    EXPECT_EQ(payload_of(*m), "first");
    m = sub.next(1s);
    ASSERT_TRUE(m);
    EXPECT_EQ(payload_of(*m), "second");
  }
  EXPECT_FALSE(sub.next(0ns));
}

// set_spin(0): next() sleeps at once, yet still wakes for a message.
TEST(Bus, SubscriberWithoutSpinSleepsAndStillWakes) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"quiet"});
  sub.set_spin(0ns);
  rusage before{}, after{};
  getrusage(RUSAGE_THREAD, &before);
  EXPECT_FALSE(sub.next(200ms));
  getrusage(RUSAGE_THREAD, &after);
  const auto cpu_us = [](const rusage& r) {
    return (r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1'000'000L + r.ru_utime.tv_usec +
           r.ru_stime.tv_usec;
  };
  EXPECT_LT(cpu_us(after) - cpu_us(before), 20'000) << "waited 200 ms: it should have slept";
  auto bus = Bus::connect(daemon.options());
  std::thread later([&] {
    std::this_thread::sleep_for(50ms);
    bus.publish("quiet", "wake up");
  });
  auto m = sub.next(5s);
  later.join();
  ASSERT_TRUE(m);
  EXPECT_EQ(payload_of(*m), "wake up");
}

// set_local_only(): a bridge's exporter gets what was published here, never what a
// bridge imported (Channel::try_publish with an origin).
TEST(Bus, LocalOnlySubscriberSkipsImportedMessages) {
  TestDaemon daemon;
  auto exporter = Subscription::open(daemon.options());
  exporter.psubscribe({"chat:*"});
  exporter.set_local_only(true);
  auto everyone = Subscription::open(daemon.options());
  everyone.psubscribe({"chat:*"});
  auto bus = Bus::connect(daemon.options());
  auto channel = bus.channel("chat:1");
  const auto bytes = [](std::string_view text) {
    return std::as_bytes(std::span<const char>(text.data(), text.size()));
  };
  ASSERT_TRUE(channel.try_publish(bytes("imported 1"), 0ns, 7).ok());
  ASSERT_TRUE(channel.try_publish(bytes("local"), 0ns).ok());
  ASSERT_TRUE(channel.try_publish(bytes("imported 2"), 0ns, 7).ok());
  auto m = exporter.next(1s);
  ASSERT_TRUE(m);
  EXPECT_EQ(payload_of(*m), "local");
  EXPECT_EQ(m->origin, 0u);
  EXPECT_EQ(m->lost_before, 0u);  // skipped is not lost
  EXPECT_FALSE(exporter.next(50ms));
  int seen = 0;
  while (everyone.next(100ms)) ++seen;
  EXPECT_EQ(seen, 3);
}

// A ninth ring ends direct reads: what the first eight still hold must not wait for their
// next publish.
TEST(Bus, GrowingPastEightRingsStrandsNoBacklog) {
  TestDaemon daemon;
  auto bus = Bus::connect(daemon.options());
  std::vector<std::string> names;
  for (int i = 0; i < 8; ++i) {
    names.push_back("backlog:" + std::to_string(i));
    bus.publish(names.back(), "one");
    bus.publish(names.back(), "two");
  }
  auto sub = Subscription::open(daemon.options());
  sub.subscribe(names, StartAt::earliest());
  // In publish order: the first half of the backlog before the ninth ring comes, the rest
  // after (its rings were staged, or queued, while there were eight).
  for (int i = 0; i < 16; ++i) {
    if (i == 8) sub.subscribe({"backlog:8"});
    auto m = sub.next(1s);
    ASSERT_TRUE(m) << "backlog message " << i << " stranded";
    EXPECT_EQ(m->channel, names[static_cast<size_t>(i / 2)]);
    EXPECT_EQ(payload_of(*m), i % 2 == 0 ? "one" : "two");
  }
  EXPECT_FALSE(sub.next(0ns));
}

// Losses reported on an imported message a local-only subscriber skips go with the next
// message it delivers.
TEST(Bus, LocalOnlySubscriberKeepsTheLossesOfSkippedMessages) {
  TestDaemon daemon(tiny_rings());
  auto exporter = Subscription::open(daemon.options());
  exporter.subscribe({"chat:1"});
  exporter.set_local_only(true);
  auto bus = Bus::connect(daemon.options());
  auto channel = bus.channel("chat:1");
  const std::string imported(200, 'i');
  ASSERT_TRUE(channel.try_publish(std::as_bytes(std::span(std::string_view("L1"))), 0ns).ok());
  for (int i = 0; i < 100; ++i)  // laps "L1" in the 4 KiB ring, without waking the exporter
    ASSERT_TRUE(channel.try_publish(std::as_bytes(std::span(imported)), 0ns, 7).ok());
  ASSERT_TRUE(channel.try_publish(std::as_bytes(std::span(std::string_view("L2"))), 0ns).ok());
  auto m = exporter.next(1s);
  ASSERT_TRUE(m);
  EXPECT_EQ(payload_of(*m), "L2");
  EXPECT_GE(m->lost_before, 1u);  // at least "L1"
  EXPECT_FALSE(exporter.next(0ns));
}

// The pmessage of a held view that was overwritten is not handed out torn by next().
TEST(Bus, OverwrittenHeldViewDropsItsRemainingDeliveries) {
  TestDaemon daemon(tiny_rings());
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"foo"});
  sub.psubscribe({"f*"});
  auto bus = Bus::connect(daemon.options());
  bus.publish("foo", "first");
  auto m = sub.next_view(1s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->pattern, "");
  ASSERT_TRUE(sub.intact());
  const std::string filler(200, 'f');
  for (int i = 0; i < 100; ++i) bus.publish("foo", filler);  // laps "first"
  auto next = sub.next(1s);
  ASSERT_TRUE(next);
  EXPECT_GT(next->sequence, 0u);  // not the torn pmessage of "first"
  EXPECT_EQ(payload_of(*next), filler);
}

// A subscription polled now and then sees a new pattern channel at its next poll, not after
// 64 of them.
TEST(Bus, OccasionalPollerSeesANewPatternChannelAtOnce) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"a"});
  sub.psubscribe({"user:*"});
  auto bus = Bus::connect(daemon.options());
  EXPECT_FALSE(sub.next(0ns));
  ASSERT_EQ(bus.publish("user:1", "hello"), 1u);
  std::optional<Message> m;
  for (int poll = 0; poll < 5 && !m; ++poll) {
    m = sub.next(0ns);
    if (!m) std::this_thread::sleep_for(20ms);
  }
  ASSERT_TRUE(m);
  EXPECT_EQ(m->channel, "user:1");
}

TEST(Bus, LoanPublishesInPlace) {
  TestDaemon daemon;
  auto sub = Subscription::open(daemon.options());
  sub.subscribe({"frames"});
  auto bus = Bus::connect(daemon.options());
  auto channel = bus.channel("frames");
  {
    auto loan = channel.loan(1000);
    ASSERT_EQ(loan.data().size(), 1000u);
    std::memcpy(loan.data().data(), "abc", 3);
    EXPECT_EQ(loan.commit(3), 1u);
  }
  {
    auto abandoned = channel.loan(10);  // destroyed uncommitted: counted as lost
  }
  EXPECT_EQ(channel.publish("after"), 1u);
  auto m = sub.next(1s);
  ASSERT_TRUE(m);
  EXPECT_EQ(payload_of(*m), "abc");
  m = sub.next(1s);
  ASSERT_TRUE(m);
  EXPECT_EQ(payload_of(*m), "after");
  EXPECT_EQ(m->lost_before, 1u);
}

}  // namespace
}  // namespace shmbus
