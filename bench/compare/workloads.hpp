// The workloads, written once for every system. A system supplies a Publisher and a
// Subscriber with the small interface below (see peer_*.cc); each role of a workload is a
// function template over them, so every system runs the very same loop.
//
//   Publisher:  prepare(bytes) -> a writable payload of `bytes` (a loaned chunk of shared
//               memory, or the publisher's own buffer for systems that copy), send(bytes)
//               publishes it, flush() completes anything the publisher batches (Redis
//               pipelining; a no-op elsewhere).
//   Subscriber: receive(wait, timeout_ns) -> the next payload, busy-polling without
//               blocking or in the system's blocking receive, for up to `timeout_ns` when
//               none is there; the view stays valid until release(). A receive that finds a
//               message reads no clock: at millions of messages a second, one clock read
//               (~20 ns here) would be a measurable part of the cost.
//
// Pacing and coordination go through the control page, never through the system under test.
#pragma once

#include <time.h>

#include <algorithm>
#include <climits>
#include <concepts>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "bench_support.hpp"
#include "harness.hpp"

namespace shmbus::compare {

template <class P>
concept PublisherApi = requires(P p, size_t bytes) {
  { p.prepare(bytes) } -> std::same_as<std::span<std::byte>>;
  p.send(bytes);
  p.flush();
};

template <class S>
concept SubscriberApi = requires(S s, Wait wait, int64_t timeout_ns) {
  { s.receive(wait, timeout_ns) } -> std::same_as<std::optional<std::span<const std::byte>>>;
  s.release();
};

// The end of one receive call's wait, taken from the clock only once it has to wait.
class Patience {
 public:
  explicit Patience(int64_t timeout_ns) : timeout_ns_(timeout_ns) {}
  // Nanoseconds left (<= 0: the timeout has passed); the first call starts the clock.
  int64_t left() {
    const int64_t now = mono_ns();
    if (deadline_ns_ == 0) deadline_ns_ = now + timeout_ns_;
    return deadline_ns_ - now;
  }
  bool exhausted() { return left() <= 0; }

 private:
  int64_t timeout_ns_;
  int64_t deadline_ns_ = 0;
};

// Subscribes to `spec.patterns` patterns that match none of the harness's channels (see
// hold_patterns below), tells the page it is ready, and holds them until the page says stop.
template <class System>
concept PatternApi = requires(const ChildSpec& spec, ControlPage& page) {
  System::hold_patterns(spec, page);
};

// The i-th glob of the pattern workload: it matches none of the harness's channel names,
// which never start with "nomatch:".
inline std::string non_matching_pattern(uint64_t i) {
  return "nomatch:" + std::to_string(i) + ":*";
}

inline constexpr int64_t kSecond = 1'000'000'000;
inline constexpr int64_t kMillisecond = 1'000'000;
// Long enough for iceoryx's discovery loop (100 ms) and ZeroMQ's reconnect interval.
inline constexpr int64_t kConnectTimeoutNs = 20 * kSecond;
inline constexpr int64_t kProbeIntervalNs = kMillisecond;
inline constexpr int64_t kAckTimeoutNs = 5 * kSecond;
inline constexpr int64_t kReceiveSliceNs = 20 * kMillisecond;
inline constexpr int64_t kGiveUpNs = 60 * kSecond;
// A lossy system's last messages may never come: the subscriber stops after this long
// without one once every publisher has finished.
inline constexpr int64_t kDrainIdleNs = 500 * kMillisecond;
// A late subscriber: how long to wait for history to start arriving, and between messages.
inline constexpr int64_t kHistoryFirstWaitNs = kSecond;
inline constexpr int64_t kHistoryIdleNs = 200 * kMillisecond;

// Throughput messages carry what they are and who sent them in the first word.
enum class Kind : uint64_t { kProbe = 1, kWarmup = 2, kMeasured = 3 };
inline uint64_t tag(Kind kind, int publisher) {
  return (static_cast<uint64_t>(kind) << 8) | static_cast<uint64_t>(publisher);
}
inline Kind kind_of(uint64_t first) { return static_cast<Kind>(first >> 8); }
inline int publisher_of(uint64_t first) { return static_cast<int>(first & 0xff); }

template <PublisherApi Pub>
void send_words(Pub& pub, size_t bytes, uint64_t first, uint64_t last) {
  put_words(pub.prepare(bytes), first, last);
  pub.send(bytes);
}

// Sends a probe every millisecond until `receivers` subscribers report that they see this
// publisher: subscriptions in most systems become effective some time after they are made,
// and whatever is sent before that is dropped.
template <PublisherApi Pub>
void probe_until_ready(Pub& pub, ControlPage& page, const ChildSpec& spec, uint64_t first,
                       uint32_t receivers) {
  const int64_t deadline = mono_ns() + kConnectTimeoutNs;
  while (page.ready.get() < receivers) {
    if (mono_ns() > deadline)
      throw Failure("subscribers saw no probe within 20 s: the subscription never connected");
    send_words(pub, spec.payload_bytes, first, 0);
    pub.flush();
    page.ready.wait_at_least(receivers, 0, mono_ns() + kProbeIntervalNs);
  }
}

inline void sleep_until(int64_t when_ns) {
  const timespec ts{static_cast<time_t>(when_ns / kSecond), static_cast<long>(when_ns % kSecond)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
  }
}

inline void check_size(size_t got, const ChildSpec& spec) {
  if (got != spec.payload_bytes)
    throw Failure("received " + std::to_string(got) + " bytes where " +
                  std::to_string(spec.payload_bytes) + " were sent");
}

// ---- one-way latency ------------------------------------------------------------------------
// The sender stamps CLOCK_MONOTONIC into the first word just before it starts publishing
// (loan, write, publish) and the sequence into the last; the receiver reads both words, then
// the clock. The next message goes only after the receiver's acknowledgement, so no queue
// builds up: with `gap_ns`, at a fixed pace instead.

template <PublisherApi Pub>
nlohmann::json latency_sender(const ChildSpec& spec, ControlPage& page, Pub& pub) {
  probe_until_ready(pub, page, spec, 0, 1);
  const uint64_t limit = spec.warmup + spec.max_samples;
  int64_t measure_end = INT64_MAX;
  int64_t next_send = mono_ns();
  uint64_t seq = 0;
  while (seq < limit) {
    if (seq == spec.warmup) measure_end = mono_ns() + spec.measure_ns;
    if (seq > spec.warmup && mono_ns() >= measure_end) break;
    ++seq;
    if (spec.gap_ns > 0) {
      next_send = std::max(next_send + spec.gap_ns, mono_ns());
      sleep_until(next_send);
    }
    const auto stamp = static_cast<uint64_t>(mono_ns());
    std::span<std::byte> payload = pub.prepare(spec.payload_bytes);
    put_words(payload, stamp, seq);
    pub.send(spec.payload_bytes);
    pub.flush();
    if (!page.ack.wait_at_least(static_cast<uint32_t>(seq), spec.ack_spin_ns,
                                mono_ns() + kAckTimeoutNs))
      throw Failure("message " + std::to_string(seq) + " was not received within 5 s");
  }
  page.stop.set(1);
  return {{"sent", seq}};
}

template <SubscriberApi Sub>
nlohmann::json latency_receiver(const ChildSpec& spec, ControlPage& page, Sub& sub) {
  std::vector<double> samples;
  samples.reserve(spec.max_samples);
  uint64_t expected = 1;
  const int64_t give_up = mono_ns() + kGiveUpNs;
  for (;;) {
    const auto payload = sub.receive(spec.wait, kReceiveSliceNs);
    if (!payload) {
      if (page.stop.get() != 0) break;
      if (mono_ns() > give_up) throw Failure("the sender neither sent nor finished within 60 s");
      continue;
    }
    const size_t size = payload->size();
    const Words words = read_words(*payload);
    const int64_t now = mono_ns();
    sub.release();
    check_size(size, spec);
    if (words.last == 0) {  // a probe: the subscription works
      page.ready.set(1);
      continue;
    }
    if (words.last != expected)
      throw Failure("message " + std::to_string(words.last) + " arrived when " +
                    std::to_string(expected) + " was due (lost or reordered)");
    ++expected;
    if (words.last > spec.warmup) samples.push_back(static_cast<double>(now - static_cast<int64_t>(words.first)));
    page.ack.set(static_cast<uint32_t>(words.last));
  }
  if (samples.empty()) throw Failure("no measured sample arrived");
  const bench::Percentiles p = bench::percentiles(std::move(samples));
  return {{"samples", p.n}, {"p50_ns", p.p50},   {"p90_ns", p.p90},
          {"p99_ns", p.p99}, {"p999_ns", p.p999}, {"max_ns", p.max}};
}

// ---- throughput -----------------------------------------------------------------------------
// Connect (probes), warm up (warmup_messages each, until every subscriber has the last one),
// then every publisher sends as fast as it can for duration_ns. Subscribers count what they
// get from each publisher; the harness divides all deliveries by the time from the first
// publisher's start to the last subscriber's last message.

template <PublisherApi Pub>
nlohmann::json throughput_publisher(const ChildSpec& spec, ControlPage& page, Pub& pub) {
  const int me = spec.publisher_index;
  const size_t bytes = spec.payload_bytes;
  const auto subscribers = static_cast<uint32_t>(spec.subscribers);
  probe_until_ready(pub, page, spec, tag(Kind::kProbe, me), subscribers);
  for (uint64_t seq = 1; seq <= spec.warmup_messages; ++seq)
    send_words(pub, bytes, tag(Kind::kWarmup, me), seq);
  pub.flush();
  if (!page.warmed.wait_at_least(subscribers, 0, mono_ns() + kGiveUpNs))
    throw Failure("subscribers did not get the warm-up messages within 60 s");
  // All publishers start together.
  page.measuring.add(1);
  if (!page.measuring.wait_at_least(static_cast<uint32_t>(spec.publishers), 0,
                                    mono_ns() + kGiveUpNs))
    throw Failure("the other publishers did not start within 60 s");
  const int64_t start = mono_ns();
  const uint64_t measured_tag = tag(Kind::kMeasured, me);
  const int64_t end = start + spec.duration_ns;
  uint64_t seq = 0;
  do {
    for (int i = 0; i < 64; ++i) send_words(pub, bytes, measured_tag, ++seq);
  } while (mono_ns() < end);
  page.last_sequence[me].store(seq + 1, std::memory_order_release);
  send_words(pub, bytes, measured_tag, seq + 1);
  pub.flush();
  page.finished.add(1);
  // Stay connected until the subscribers have drained what is still on its way.
  page.stop.wait_at_least(1, 0, mono_ns() + kGiveUpNs);
  return {{"sent", seq + 1}, {"start_ns", start}};
}

template <SubscriberApi Sub>
nlohmann::json throughput_subscriber(const ChildSpec& spec, ControlPage& page, Sub& sub) {
  const auto publishers = static_cast<size_t>(spec.publishers);
  std::vector<bool> probed(publishers), warmed(publishers), complete(publishers);
  std::vector<uint64_t> received(publishers), next_seq(publishers, 1), gaps(publishers);
  size_t probed_count = 0, warmed_count = 0, complete_count = 0;
  int64_t last_receipt = 0;  // of a measured message
  int64_t last_activity = mono_ns();
  const int64_t give_up = mono_ns() + kGiveUpNs;
  while (complete_count < publishers) {
    const auto payload = sub.receive(Wait::kBlocking, kReceiveSliceNs);
    if (!payload) {
      const int64_t now = mono_ns();
      if (page.finished.get() >= publishers &&
          now - std::max(last_activity, last_receipt) > kDrainIdleNs)
        break;  // the rest is not coming: counted as lost
      if (now > give_up) throw Failure("no end of the measured phase within 60 s");
      continue;
    }
    const size_t size = payload->size();
    const Words words = read_words(*payload);
    sub.release();
    check_size(size, spec);
    const auto from = static_cast<size_t>(publisher_of(words.first));
    if (from >= publishers) throw Failure("a message names publisher " + std::to_string(from));
    switch (kind_of(words.first)) {
      case Kind::kProbe:
        last_activity = mono_ns();
        if (!probed[from] && ++probed_count == publishers) page.ready.add(1);
        probed[from] = true;
        break;
      case Kind::kWarmup:
        last_activity = mono_ns();
        if (words.last == spec.warmup_messages && !warmed[from] && ++warmed_count == publishers)
          page.warmed.add(1);
        if (words.last == spec.warmup_messages) warmed[from] = true;
        break;
      case Kind::kMeasured:
        ++received[from];
        if (words.last != next_seq[from]) gaps[from] += words.last - next_seq[from];
        next_seq[from] = words.last + 1;
        // A clock read per message would cost as much as a shmbus delivery; one in 64 bounds
        // the end time of a lossy run, the last message gives it exactly.
        if ((received[from] & 63) == 0) last_receipt = mono_ns();
        if (words.last == page.last_sequence[from].load(std::memory_order_acquire)) {
          last_receipt = mono_ns();
          complete[from] = true;
          ++complete_count;
        }
        break;
      default:
        throw Failure("a message of unknown kind");
    }
  }
  uint64_t total = 0, total_gaps = 0;
  for (size_t i = 0; i < publishers; ++i) {
    total += received[i];
    total_gaps += gaps[i];
  }
  return {{"received", total}, {"gaps", total_gaps}, {"end_ns", last_receipt}};
}

// ---- publish rate with pattern subscriptions on the server ----------------------------------

template <PublisherApi Pub>
nlohmann::json rate_publisher(const ChildSpec& spec, ControlPage&, Pub& pub) {
  auto publish_for = [&](int64_t duration) {
    uint64_t count = 0;
    const int64_t end = mono_ns() + duration;
    do {
      for (int i = 0; i < 64; ++i) send_words(pub, spec.payload_bytes, 0, ++count);
    } while (mono_ns() < end);
    pub.flush();
    return count;
  };
  publish_for(spec.duration_ns / 10);  // warm-up
  const int64_t start = mono_ns();
  const uint64_t count = publish_for(spec.duration_ns);
  const double seconds = static_cast<double>(mono_ns() - start) / 1e9;
  return {{"published", count}, {"publishes_per_s", static_cast<double>(count) / seconds}};
}

// ---- late subscriber ------------------------------------------------------------------------

template <PublisherApi Pub>
nlohmann::json late_publisher(const ChildSpec& spec, ControlPage& page, Pub& pub) {
  for (uint64_t seq = 1; seq <= spec.messages; ++seq) send_words(pub, spec.payload_bytes, 0, seq);
  pub.flush();
  page.published.set(1);
  // The publisher stays: some systems keep history only while it lives.
  page.stop.wait_at_least(1, 0, mono_ns() + kGiveUpNs);
  return {{"published", spec.messages}};
}

template <SubscriberApi Sub>
nlohmann::json late_subscriber(const ChildSpec& spec, ControlPage&, Sub& sub) {
  uint64_t delivered = 0, first = 0, last = 0;
  while (const auto payload =
             sub.receive(Wait::kBlocking, delivered == 0 ? kHistoryFirstWaitNs : kHistoryIdleNs)) {
    const size_t size = payload->size();
    const Words words = read_words(*payload);
    sub.release();
    check_size(size, spec);
    if (words.last == 0 || words.last > spec.messages)
      throw Failure("a history message with sequence " + std::to_string(words.last));
    if (delivered++ == 0) first = words.last;
    last = words.last;
  }
  return {{"delivered", delivered}, {"first_sequence", first}, {"last_sequence", last}};
}

// ---- pattern subscriptions held by another process ------------------------------------------

// What every system's hold_patterns does around its own subscribe call: `subscribe_all`
// takes the patterns and returns whatever keeps them subscribed (a connection), held until
// the harness says stop.
template <class SubscribeAll>
nlohmann::json hold_patterns(const ChildSpec& spec, ControlPage& page, SubscribeAll&& subscribe_all) {
  std::vector<std::string> patterns;
  for (uint64_t i = 0; i < spec.patterns; ++i) patterns.push_back(non_matching_pattern(i));
  const int64_t start = mono_ns();
  const auto holding = subscribe_all(patterns);
  const double seconds = static_cast<double>(mono_ns() - start) / 1e9;
  page.ready.set(1);
  page.stop.wait_at_least(1, 0, mono_ns() + kGiveUpNs);
  return {{"patterns", spec.patterns}, {"subscribe_seconds", seconds}};
}

// ---- a child's role -------------------------------------------------------------------------

// Opens the role's end (a Publisher or Subscriber) and runs the role with it.
template <class End, class Role>
nlohmann::json run_with(const ChildSpec& spec, ControlPage& page, Role role) {
  End end(spec);
  return role(spec, page, end);
}

template <class System>
nlohmann::json run_role(const ChildSpec& spec, ControlPage& page) {
  using Publisher = typename System::Publisher;
  using Subscriber = typename System::Subscriber;
  static_assert(PublisherApi<Publisher> && SubscriberApi<Subscriber>);
  const std::string& role = spec.role;
  if (role == "latency-sender") return run_with<Publisher>(spec, page, latency_sender<Publisher>);
  if (role == "latency-receiver")
    return run_with<Subscriber>(spec, page, latency_receiver<Subscriber>);
  if (role == "throughput-publisher")
    return run_with<Publisher>(spec, page, throughput_publisher<Publisher>);
  if (role == "throughput-subscriber")
    return run_with<Subscriber>(spec, page, throughput_subscriber<Subscriber>);
  if (role == "rate-publisher") return run_with<Publisher>(spec, page, rate_publisher<Publisher>);
  if (role == "late-publisher") return run_with<Publisher>(spec, page, late_publisher<Publisher>);
  if (role == "late-subscriber")
    return run_with<Subscriber>(spec, page, late_subscriber<Subscriber>);
  if (role == "pattern-holder") {
    if constexpr (PatternApi<System>) return System::hold_patterns(spec, page);
    else throw Failure(spec.system + " has no pattern subscriptions");
  }
  throw Failure("unknown role " + role);
}

}  // namespace shmbus::compare
