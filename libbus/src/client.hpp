// The client side of the control protocol and of the bus's shared memory, shared by Bus,
// Channel, Subscription and StatsReader.
//
// Thread safety: a ControlConnection is used by one thread at a time (Bus guards it with
// the mutex in ClientCore). BusMemory is safe from any thread (it maps arenas under a
// mutex; ArenaTable lookups are lock-free).
#pragma once

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
  // The bus's doorbell size, from the daemon's welcome. REQUIRES: called before any
  // Publisher or Waiter uses table().
  void set_doorbell_bits(uint32_t bits) { table_.set_doorbells(layout::kDoorbellArena, bits); }

 private:
  std::string bus_;
  mutable std::mutex mutex_;  // guards arenas_ (adopt may run on any thread using the bus)
  std::vector<std::unique_ptr<Arena>> arenas_;
  ArenaTable table_;
};

// What a Bus and its Channels share: one connection (guarded) and the mapped memory.
// The last owner to let go says goodbye, so the daemon knows no frame was left unfinished.
struct ClientCore {
  explicit ClientCore(const Endpoint& endpoint)
      : memory(endpoint.bus),
        connection(endpoint, protocol::Role::kPublisher, memory.grant_handler()) {
    memory.set_doorbell_bits(connection.welcome().doorbell_bits);
  }
  ~ClientCore() {
    try {
      connection.goodbye();
    } catch (const std::exception&) {
      // The daemon is gone: nobody to tell.
    }
  }
  std::mutex mutex;  // guards `connection`
  BusMemory memory;  // before `connection`, which hands it grants from its first reply
  ControlConnection connection;
  // Set when the Bus goes: open channels then skip their CLOSE round trips, because the
  // daemon drops every hold of a connection that says goodbye and closes.
  bool closing = false;
};

// The program's name, for the daemon's log ("client 12 (pid 345, 'shmbus')").
std::string program_name();

}  // namespace shmbus
