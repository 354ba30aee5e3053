// Subscription: channels and patterns received together, like a Redis subscribed connection.
//
//   auto sub = shmbus::Subscription::open();
//   sub.subscribe({"chat:42"});
//   sub.psubscribe({"user:*"});
//   while (auto m = sub.next(std::chrono::seconds(1)))
//     std::cout << m->channel << ": " << m->text() << '\n';
//
// Semantics (Redis Pub/Sub unless stated):
// - A subscription holding both `foo` and `f*` receives each message on foo twice: once
//   with pattern() empty (Redis "message") and once with pattern() == "f*" ("pmessage").
// - Patterns use Redis glob syntax and matching exactly: `*`, `?`, `[abc]`, `[^a]`, `[a-z]`
//   (reversed ranges too), `\` escapes.
// - No first-message race: once subscribe() or psubscribe() returns, every message published
//   afterwards on a subscribed channel, or on a channel created afterwards that matches a
//   pattern, is delivered (or counted in lost_before if this subscriber fell a ring behind).
// - Unlike Redis, a slow subscriber is not disconnected: it is lapped, and the next message
//   says how many it missed (lost_before). A back-pressure channel makes publishers wait
//   instead.
// - Each subscribe() call is confirmed by the daemon before it returns; there are no
//   separate "subscribe" replies to read.
// - Order, as Redis: each publishing thread's messages arrive in the order it published
//   them, across every channel and pattern the subscription holds; a message for several
//   reasons arrives as its "message" then one "pmessage" per matching pattern, in
//   psubscribe() order, with nothing in between. Messages of different threads arrive in
//   the order of their stamps: each publish is stamped from its thread's CLOCK_REALTIME,
//   after its claim, later than that thread's previous stamp and than its channel's
//   latest. That is their publish order whenever one publish happened before the other,
//   unless they came within the two threads' clock disagreement (well under a
//   microsecond on one host). Precisely, a message goes out after every message with a
//   smaller stamp on a channel held that was committed before it, except:
//   - a message waits behind any earlier claim in its own ring (a Loan out, a publisher
//     stopped mid-publish), and its channel's messages keep ring order whatever their
//     stamps say; messages of other channels do not wait for it;
//   - when 4 looks at the rings in a row each found something new, the earliest message
//     found so far goes out (a flood of new arrivals cannot stall delivery);
//   - a stamp more than 1 ms ahead of this process's clock says nothing (the message takes
//     its ring's previous place), and a message passed over by more deliveries than the
//     rings held can hold (at least 65,536) goes out next: stamps forged by a publisher,
//     or left by a clock step of more than 1 ms, can misorder but never stall delivery;
//   - a process that clears doorbell bits (it can, being a client of the same access
//     class) can hide a ring's news for up to a second, and its order with it;
//   - a subscriber lapped on a channel (lost_before > 0) resumes at that ring's oldest
//     message: messages around the loss may come after later ones of other channels.
//   A subscription of one channel held by name reads its ring as it comes, which is that
//   order.
//
// Thread safety: one thread at a time. The descriptor fd() returns may be polled from any
// thread; fd() itself belongs to the owning thread like every other call.
// A Subscription has its own connection to the daemon; destroying it (or the process
// dying) removes all its subscriptions.
#pragma once

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shmbus/bus.hpp"

namespace shmbus {

// Where a channel subscription starts reading.
struct StartAt {
  enum class Kind { kLatest, kEarliest, kAfterSequence };
  Kind kind = Kind::kLatest;
  uint64_t sequence = 0;  // kAfterSequence: the last sequence the caller already has

  static StartAt latest() { return {}; }
  // The oldest message still in the ring (what a recent history allows).
  static StartAt earliest() { return {Kind::kEarliest, 0}; }
  // Resume without loss after a restart, while the ring still holds what follows `seq`.
  static StartAt after(uint64_t seq) { return {Kind::kAfterSequence, seq}; }
};

// One delivered message. Views point into the Subscription and stay valid until the next
// call of next() or any subscription change.
struct Message {
  std::string_view channel;
  std::string_view pattern;            // the matching pattern; empty for a channel delivery
  std::span<const std::byte> payload;  // next(): a private copy; next_view(): in the ring
  uint64_t sequence = 0;               // per channel, from 0, no gaps in what is published
  uint64_t publish_unix_ns = 0;        // publisher's CLOCK_REALTIME at publish
  uint64_t lost_before = 0;            // messages of this channel missed just before this one
  uint16_t origin = 0;                 // 0: published on this host; else the bridge's host id
  // True on the first message of a channel after this subscription reconnected: messages
  // of the channel published while it was away may be missing, and how many is not known
  // (lost_before counts only what the ring it now reads still tells). See next().
  bool gap = false;

  std::string_view text() const {
    return {reinterpret_cast<const char*>(payload.data()), payload.size()};
  }
};

// Limits: patterns are 1..1024 bytes, any bytes (as channel names, kMaxChannelNameBytes).
inline constexpr std::size_t kMaxPatternBytes = 1024;

class SHMBUS_CXX_API Subscription {
 public:
  // Opens a connection of its own to the daemon; throws Error(kNoDaemon) as Bus::connect.
  static Subscription open(const ConnectOptions& options = {});

  Subscription(Subscription&&) noexcept;
  Subscription& operator=(Subscription&&) noexcept;
  ~Subscription();

  // Adds channels (creating them if they do not exist yet, so every message published
  // after this returns arrives). `start` applies to channels added by this call. At least
  // one channel, as Redis's SUBSCRIBE (kInvalidArgument otherwise).
  void subscribe(std::span<const std::string> channels, StartAt start = {});
  void subscribe(std::initializer_list<std::string_view> channels, StartAt start = {});
  // Adds glob patterns: existing matching channels from their latest message, channels
  // created later from their first. At least one; each 1 to kMaxPatternBytes bytes (an
  // empty pattern, which Redis takes, could match no channel here: names are never empty).
  void psubscribe(std::span<const std::string> patterns);
  void psubscribe(std::initializer_list<std::string_view> patterns);
  // Removes the given channels / patterns; with none given, removes all (as Redis does).
  void unsubscribe(std::span<const std::string> channels = {});
  void unsubscribe(std::initializer_list<std::string_view> channels);
  void punsubscribe(std::span<const std::string> patterns = {});
  void punsubscribe(std::initializer_list<std::string_view> patterns);

  // The next message, waiting up to `timeout` (zero: poll; negative: forever). Returns
  // nullopt on timeout. Spins about 20 us before sleeping, so a busy channel is served
  // with sub-microsecond latency and an idle subscriber uses no CPU.
  // When the daemon dies or stops, next() learns it within about 250 ms even while
  // parked, delivers what the rings still hold, then (ReconnectOptions, on by default)
  // reconnects with backoff within the timeout and subscribes every channel and pattern
  // again, reporting LinkEvents. A restarted daemon has new rings: the channels, held by
  // name or by pattern, are read from their oldest message (all of it published since the
  // restart), and the first message of each channel after that says `gap`. With
  // reconnecting off it throws Error(kDaemonGone) instead.
  std::optional<Message> next(std::chrono::nanoseconds timeout);

  // Zero-copy receive: as next(), but the payload is the message in place in the channel's
  // shared-memory ring, not a copy, so a 1 MiB message costs what a 64 B one does. Valid
  // until the next call on this Subscription.
  // - On a back-pressure channel nothing can change it meanwhile: publishers wait for it.
  // - On a lossy channel a publisher that laps this subscriber may overwrite it while you
  //   read. Read what you need, then call intact(): false means the bytes may have changed
  //   under you; discard what you made of them. The message then counts as lost (in the
  //   next message's lost_before), exactly as if it had been lapped before you saw it.
  //   (next() does that check for you, at the cost of a copy.)
  //
  //   while (auto m = sub.next_view(timeout)) {
  //     Event e = parse(m->payload);
  //     if (sub.intact()) handle(e);
  //   }
  std::optional<Message> next_view(std::chrono::nanoseconds timeout);
  // For the message next_view() returned last: true if its bytes were intact throughout
  // every read made before this call. True for next()'s copies, and for messages
  // delivered from a subscription change.
  bool intact();

  // How long next()/next_view() spin before they sleep when nothing is waiting (default
  // 20 us, which serves a busy channel without a system call). Zero sleeps at once: for a
  // subscriber that shares its CPU with the threads it waits on (on a small machine a
  // woken thread often runs on the waker's CPU, and a spinning waker keeps it waiting),
  // or one that must not burn CPU between messages.
  void set_spin(std::chrono::nanoseconds spin);

  // Local only: messages published with a non-zero origin (imported by a bridge) are
  // skipped, not delivered, and on lossy channels they do not wake this subscriber. For a
  // bridge's exporter, which must never send an imported message out again.
  void set_local_only(bool local_only);

  // A file descriptor that polls readable (POLLIN) when next(0) may return a message: for
  // epoll/poll/select event loops. Drain with next(0) until it returns nullopt, then poll
  // again. It also turns readable when the daemon is gone and when a reconnect try is due,
  // so next(0) can do it; the descriptor stays the same across reconnects. Created on first call
  // (it costs one helper thread); owned by the Subscription.
  int fd();

  // Losses and reconnects of this subscription's link to its daemon.
  LinkStats link_stats() const;

  // Redis's subscription count: channels plus patterns held.
  std::size_t count() const;
  std::vector<std::string> channels() const;
  std::vector<std::string> patterns() const;

 private:
  struct State;
  explicit Subscription(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace shmbus
