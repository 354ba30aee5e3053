// Bus: a connection to one shmbusd, for publishing and introspection.
//
//   auto bus = shmbus::Bus::connect();            // $SHMBUS_SOCKET, $SHMBUS_BUS or "default"
//   uint32_t receivers = bus.publish("chat:42", "hello");
//
// Publishing writes straight into the channel's ring in shared memory: the daemon is asked
// only the first time this Bus publishes to a channel (and it creates the channel then).
// Each publish also reads the daemon's life word in shared memory: a publish after the
// daemon died (or stopped) reconnects (ReconnectOptions) and goes to the bus as it is now,
// never into the dead daemon's rings.
// `publish` returns how many subscriptions receive the message, like Redis PUBLISH: each
// subscription that holds the channel counts once, plus once per pattern of it that matches.
//
// Thread safety: a Bus and each Channel are used by one thread at a time (guard them, or
// give each thread its own: opening the same channel twice is cheap). Any number of Buses
// and Channels, in any threads and processes, may publish to one channel at once.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shmbus/error.hpp"

namespace shmbus {

// A change of a Bus's or Subscription's link to its daemon (ReconnectOptions::on_event).
struct LinkEvent {
  enum class Kind {
    kLost,         // the daemon is gone (it stopped or died, or closed this connection)
    kReconnected,  // connected again (to a new daemon, or the same one), subscriptions renewed
  };
  Kind kind = Kind::kLost;
  std::string detail;     // why it was lost; or which daemon answered and what may be missing
  uint64_t attempts = 0;  // kReconnected: tries it took
  std::chrono::nanoseconds down_for{0};  // kReconnected: since the loss was noticed
  bool new_daemon = false;               // kReconnected: a restarted daemon (new rings)
};

// Counters of a link, for logs and metrics.
struct LinkStats {
  uint64_t losses = 0;      // times the daemon was found gone
  uint64_t reconnects = 0;  // times the link came back
  bool connected = true;    // false between a loss and its reconnect
};

// What a Bus or Subscription does when its daemon goes away. Like node-redis and ioredis,
// it reconnects by itself by default: it tries at once, then after delays that double from
// `first_delay` up to `max_delay`, each drawn between half and all of that (jitter, so many
// clients do not come back in step). A Subscription subscribes its channels and patterns
// again; a Bus reopens its channels as they are next used.
struct ReconnectOptions {
  bool enabled = true;  // false: the first call after a loss throws Error(kDaemonGone)
  std::chrono::nanoseconds first_delay = std::chrono::milliseconds(10);
  std::chrono::nanoseconds max_delay = std::chrono::milliseconds(500);
  // How long a publish or a control call waits for the daemon to come back before it
  // fails (Error(kDaemonGone), PublishStatus::kDaemonGone). Zero: fail at once and try again
  // on the next call. Subscription::next waits within its own timeout instead.
  std::chrono::nanoseconds wait = std::chrono::seconds(5);
  // Called inside the call that noticed the change, on its thread, with no lock of the Bus
  // held (the callback may use it). Channels of one Bus used from several threads may call
  // it concurrently.
  std::function<void(const LinkEvent&)> on_event;
};

// Where to find the daemon. Empty fields come from the environment: socket from
// $SHMBUS_SOCKET, else /run/shmbus/<bus>.sock; bus from $SHMBUS_BUS, else "default".
struct ConnectOptions {
  std::string bus;
  std::string socket_path;
  std::string client_name;  // shown in the daemon's log; defaults to the program name
  ReconnectOptions reconnect;
};

// Limits: channel names are 1..1024 bytes, any bytes.
inline constexpr std::size_t kMaxChannelNameBytes = 1024;

// Result of a non-throwing publish.
enum class PublishStatus {
  kOk,
  kTooLarge,    // larger than the channel's max message size (Channel::max_message_bytes)
  kWouldBlock,  // back-pressure channel full and the wait budget was zero
  kTimedOut,    // back-pressure channel stayed full for the whole budget
  kCorrupt,     // the channel's ring was found corrupt (another process wrote garbage
                // into it); nothing was published
  kDaemonGone,  // the daemon is gone and did not come back within ReconnectOptions::wait;
                // nothing was published
  kRefused,     // the channel had to be opened again (its daemon restarted, or its ring was
                // replaced) and the daemon refused (a limit, an [[access]] rule); publish()
                // throws the daemon's error
};
struct PublishResult {
  PublishStatus status = PublishStatus::kOk;
  uint32_t receivers = 0;  // when kOk: subscriptions that receive it (see above)
  bool ok() const { return status == PublishStatus::kOk; }
};

// A message being written in place in the ring (zero-copy). Fill data(), then commit(n);
// destroying an uncommitted loan abandons it (subscribers count it as lost). A Loan must not
// outlive the Channel it came from.
class SHMBUS_CXX_API Loan {
 public:
  Loan(Loan&&) noexcept;
  Loan& operator=(Loan&&) noexcept;
  ~Loan();
  std::span<std::byte> data() const;
  // Publishes the first `bytes` bytes (<= data().size()); returns receivers.
  uint32_t commit(std::size_t bytes);
  void abandon();

 private:
  friend class Channel;
  struct State;
  explicit Loan(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// An open channel: the fast path for a publisher that sends to the same channel often.
// The channel stays alive (never reclaimed as idle) while a Channel or a Bus holds it.
class SHMBUS_CXX_API Channel {
 public:
  Channel(Channel&&) noexcept;
  Channel& operator=(Channel&&) noexcept;
  ~Channel();

  const std::string& name() const;
  std::size_t max_message_bytes() const;
  std::size_t ring_bytes() const;
  bool back_pressure() const;

  // Copies `payload` into the ring. Never throws; waits up to `wait` only on a
  // back-pressure channel that is full (zero: never wait; negative: without limit).
  // `origin` marks a message relayed from another host: subscribers see it in
  // Message::origin (0, the default, means published on this host). It is for relays such
  // as shmbus-bridge, which never export a message whose origin is not 0, so what one
  // bridge imports is never sent back out.
  PublishResult try_publish(std::span<const std::byte> payload,
                            std::chrono::nanoseconds wait = std::chrono::nanoseconds{-1},
                            uint16_t origin = 0);
  // Like try_publish but throws shmbus::Error (kTooLarge, kTimedOut...) naming the channel,
  // the limit and the config key that raises it. Returns the receivers.
  uint32_t publish(std::span<const std::byte> payload);
  uint32_t publish(std::string_view text);
  // Zero-copy: reserves `bytes` in the ring. Throws kTooLarge / kTimedOut as publish does.
  Loan loan(std::size_t bytes);

 private:
  friend class Bus;
  struct State;
  explicit Channel(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// Settings asked for when opening a channel. Ring settings apply when this call creates the
// channel (0 / unset: the daemon's [[channel]] rules decide); if the channel exists with
// different settings, opening throws kInvalidArgument naming both. A ring larger than the
// rules let a client ask for (their ring_bytes, or max_ring_bytes) throws kLimit.
struct ChannelOptions {
  uint64_t ring_bytes = 0;  // a power of two >= 4096
  uint32_t max_message_bytes = 0;
  std::optional<bool> back_pressure;
  // How long publish() waits on a full back-pressure channel before throwing kTimedOut.
  std::chrono::nanoseconds publish_wait = std::chrono::seconds(5);
};

// What the daemon knows about a channel's subscribers (Redis PUBSUB NUMSUB).
struct NumSub {
  std::string channel;
  uint64_t subscribers = 0;  // subscriptions holding the channel by name (not patterns)
};

// A pattern subscribed somewhere on the bus, and by how many subscriptions.
struct PatternInterest {
  std::string pattern;
  uint64_t subscribers = 0;
};

class SHMBUS_CXX_API Bus {
 public:
  // Connects, or throws Error(kNoDaemon) naming the socket path and how to start a daemon.
  static Bus connect(const ConnectOptions& options = {});

  Bus(Bus&&) noexcept;
  Bus& operator=(Bus&&) noexcept;
  ~Bus();

  // Publishes a copy of `payload` to `channel`, creating the channel if needed; returns the
  // receivers. Throws Error on a bad name, a message over the channel's limit, or a daemon
  // limit; on a full back-pressure channel it waits up to 5 s, then throws kTimedOut.
  uint32_t publish(std::string_view channel, std::span<const std::byte> payload);
  uint32_t publish(std::string_view channel, std::string_view text);

  // Opens a channel handle for repeated publishing (creating the channel if needed).
  Channel channel(std::string_view name, const ChannelOptions& options = {});

  // Introspection, like Redis PUBSUB. channels(): live channels, optionally only those
  // matching a glob pattern; numpat(): distinct patterns subscribed bus-wide.
  std::vector<std::string> channels(std::string_view pattern = {});
  std::vector<NumSub> numsub(std::span<const std::string> channels);
  uint64_t numpat();
  // The distinct patterns subscribed bus-wide (optionally only those matching the glob
  // `filter`, compared as strings), sorted, each with its number of subscriptions. Redis has
  // no such command; relays use it to learn what local subscribers want. Asks the daemon
  // (needs shmbusd of protocol version 2; an older one throws Error(kProtocol)).
  std::vector<PatternInterest> patterns(std::string_view filter = {});
  // Round trip to the daemon; returns its reply time.
  std::chrono::nanoseconds ping();

  const std::string& bus_name() const;
  const std::string& socket_path() const;
  // Losses and reconnects of this Bus's link to its daemon.
  LinkStats link_stats() const;

 private:
  struct State;
  explicit Bus(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace shmbus
