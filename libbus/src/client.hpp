// The client side of the control protocol and of the bus's shared memory, shared by Bus,
// Channel, Subscription and StatsReader.
//
// Thread safety: a ControlConnection is used by one thread at a time (Bus guards it with
// the mutex in ClientCore). BusMemory is safe from any thread (it maps arenas under a
// mutex; ArenaTable lookups are lock-free).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "arena.hpp"
#include "naming.hpp"
#include "protocol.hpp"
#include "reconnect.hpp"
#include "ring.hpp"

namespace shmbus {

struct OwnedFrame {
  protocol::Type type{};
  uint32_t request = 0;
  std::vector<std::byte> fields;
  protocol::Parser parser() const { return protocol::Parser(fields); }
};

struct Welcome {
  uint16_t version = 0;
  uint16_t publisher_id = 0;
  uint64_t client_id = 0;
  std::string bus;
  uint32_t doorbell_bits = 0;    // of every doorbell of the bus (publishers check links by it)
  uint64_t doorbell_offset = 0;  // this subscriber's, in the doorbell arena; 0 if none
};

class ControlConnection {
 public:
  // Called with each segment the daemon grants (its descriptor now belongs to the handler).
  using GrantHandler = std::function<void(const protocol::ArenaGrant&, int fd)>;

  // Connects and says HELLO in `role`; grants that come with the welcome go to `on_grant`.
  // Throws Error(kNoDaemon) naming the socket when nothing answers.
  ControlConnection(const Endpoint& endpoint, protocol::Role role, GrantHandler on_grant);
  ~ControlConnection();
  ControlConnection(const ControlConnection&) = delete;
  ControlConnection& operator=(const ControlConnection&) = delete;

  // Sends a request built with next_request() and returns its reply. Events that arrive
  // before the reply are queued (events()), later bytes stay unread, so the caller can
  // apply events and reply in the daemon's order. A kError reply throws Error.
  protocol::Writer next_request(protocol::Type type);
  OwnedFrame request(protocol::Writer& request);
  // The next frame answering request `id` (a reply in several frames).
  OwnedFrame next_reply(uint32_t id, protocol::Type waiting_for);
  // Reads whatever arrived without blocking and queues complete events.
  void poll_events();
  std::deque<OwnedFrame>& events() { return events_; }
  // Says goodbye (the daemon then knows our frames are all finished) and waits for the OK.
  void goodbye();

  int fd() const { return fd_; }
  const Welcome& welcome() const { return welcome_; }
  const Endpoint& endpoint() const { return endpoint_; }

 private:
  void hello(protocol::Role role);
  void close_all();
  void send_all(const std::vector<std::byte>& frame);
  // After a failed write: throws the error frame the daemon sent before closing, if any.
  void throw_if_refused();
  // Reads once (blocking up to the timeout when `wait`); false if nothing came. Descriptors
  // that arrive (SCM_RIGHTS) wait in received_fds_ for their kArenaGrant frame.
  bool receive(bool wait, protocol::Type waiting_for);
  // If `f` is a grant, hands its descriptor to on_grant_ and returns true.
  bool take_grant(const protocol::Frame& f);
  [[noreturn]] void throw_gone(const std::string& why) const;

  Endpoint endpoint_;
  int fd_ = -1;
  uint32_t next_request_id_ = 1;
  protocol::FrameAssembler in_;
  std::deque<OwnedFrame> events_;
  // Descriptors received and not yet claimed by a grant frame, in arrival order: a grant's
  // descriptor rides on its frame's first byte, so it is here by the time the frame is.
  std::deque<int> received_fds_;
  GrantHandler on_grant_;
  Welcome welcome_;
};

// The bus's arenas as mapped in this process: those the daemon granted this connection,
// read-write or read-only as it decided.
class BusMemory {
 public:
  explicit BusMemory(std::string bus) : bus_(std::move(bus)), arenas_(256) {}
  // Maps a granted segment (takes `fd`). A second grant of an arena already mapped is
  // closed: a connection's role decides its access once.
  void adopt(const protocol::ArenaGrant& grant, int fd);
  // The handler a ControlConnection calls with grants.
  ControlConnection::GrantHandler grant_handler() {
    return [this](const protocol::ArenaGrant& g, int fd) { adopt(g, fd); };
  }
  // Base and size of arena `arena_id`; throws Error(kProtocol) if it was never granted.
  std::byte* base(uint32_t arena_id) const;
  uint64_t size(uint32_t arena_id) const;
  bool mapped(uint32_t arena_id) const { return table_.base(arena_id) != nullptr; }
  // Whether this process maps arena `arena_id` writable (as granted).
  bool writable(uint32_t arena_id) const;
  // Opens the ring at `location` after checking it lies inside granted arenas.
  RingRef ring(const protocol::RingLocation& location) const;
  const ArenaTable& table() const { return table_; }
  const std::string& bus() const { return bus_; }
  // The daemon's life word (layout::DaemonLife) in the control arena, or null if that
  // arena was never granted. Only the daemon and the kernel write it.
  const std::atomic<uint32_t>* life_word() const;
  // Whether the daemon that granted this memory still serves: one load, no system call.
  bool daemon_alive() const {
    const std::atomic<uint32_t>* word = life_word();
    return word != nullptr && layout::daemon_alive(word->load(std::memory_order_acquire));
  }
  // Which daemon made this memory: its pid and start time, from the directory header (0, 0
  // if there is none). Tells a restarted daemon from the one a connection was lost to.
  std::pair<int32_t, uint64_t> daemon_identity() const;
  // The bus's doorbell size, from the daemon's welcome. REQUIRES: called before any
  // Publisher or Waiter uses table().
  void set_doorbell_bits(uint32_t bits) { table_.set_doorbells(layout::kDoorbellArena, bits); }

 private:
  std::string bus_;
  mutable std::mutex mutex_;  // guards arenas_ (adopt may run on any thread using the bus)
  std::vector<std::unique_ptr<Arena>> arenas_;
  ArenaTable table_;
};

// What a Bus and its Channels share: one connection (guarded) and the mapped memory, both
// replaced when the link is made again after the daemon went away (ensure_link_locked).
// The last owner to let go says goodbye, so the daemon knows no frame was left unfinished.
struct ClientCore {
  using Clock = std::chrono::steady_clock;

  ClientCore(const Endpoint& endpoint, ReconnectOptions reconnect);
  ~ClientCore();

  // Makes sure the link works: if the daemon is gone (its life word, or `broken`), reports
  // the loss and tries to connect again, with backoff, until `deadline`. Returns false if
  // it could not by then; throws Error(kDaemonGone) if reconnecting is off, and what a
  // daemon that answered refused (e.g. kPermission). REQUIRES: mutex held.
  bool ensure_link_locked(Clock::time_point deadline);
  // A request found the connection closed: the next ensure_link_locked() connects again.
  // REQUIRES: mutex held.
  void mark_broken_locked(const std::string& why);
  // The error a caller throws when ensure_link_locked() gave up (the first with the mutex
  // held, the second takes it).
  Error gone_error_locked() const;
  Error gone_error();
  // Hands the LinkEvents queued under the mutex to ReconnectOptions::on_event, without the
  // mutex (so the callback may use the Bus). Never throws.
  void report_events() noexcept;
  // Reports the queued events when it goes: declared before a lock_guard on `mutex`, it
  // runs after the lock is released.
  struct EventReport {
    explicit EventReport(ClientCore& core) : core_(core) {}
    ~EventReport() { core_.report_events(); }
    EventReport(const EventReport&) = delete;
    EventReport& operator=(const EventReport&) = delete;

   private:
    ClientCore& core_;
  };

  std::mutex mutex;
  const Endpoint endpoint;
  // All guarded by `mutex`. `memory` before `connection`, which hands it grants from its
  // first reply; Channels keep the memory they opened in alive with their own reference.
  std::shared_ptr<BusMemory> memory;
  std::unique_ptr<ControlConnection> connection;
  uint64_t generation = 0;  // bumped by each reconnect: channel ids of older ones are void
  Reconnect reconnect;
  std::string broken;  // why the connection failed, while it has not been made again
  // Set when the Bus goes: open channels then skip their CLOSE round trips, because the
  // daemon drops every hold of a connection that says goodbye and closes.
  bool closing = false;

 private:
  void connect_locked();
};

// "shmbusd (pid N) of bus 'B'": how losses and reconnects name the daemon.
std::string daemon_description(const Endpoint& endpoint, int32_t pid);

// The program's name, for the daemon's log ("client 12 (pid 345, 'shmbus')").
std::string program_name();

}  // namespace shmbus
