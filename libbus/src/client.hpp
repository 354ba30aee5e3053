// The client side of the control protocol and of the bus's shared memory, shared by Bus,
// Channel, Subscription and StatsReader.
//
// Thread safety: a ControlConnection is used by one thread at a time (Bus guards it with
// the mutex in ClientCore). BusMemory is safe from any thread (it maps arenas under a
// mutex; ArenaTable lookups are lock-free).
#pragma once

#include <cstdint>
#include <deque>
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
  uint64_t directory_offset = 0;
  uint64_t doorbell_offset = 0;  // in arena 0; 0 if none was asked for
  uint32_t doorbell_bits = 0;    // of every doorbell of the bus (publishers check links by it)
};

class ControlConnection {
 public:
  // Connects and says HELLO. Throws Error(kNoDaemon) naming the socket when nothing answers.
  ControlConnection(const Endpoint& endpoint, bool wants_doorbell);
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
  void send_all(const std::vector<std::byte>& frame);
  // Reads once (blocking up to the timeout when `wait`); false if nothing came.
  bool receive(bool wait, protocol::Type waiting_for);
  [[noreturn]] void throw_gone(const std::string& why) const;

  Endpoint endpoint_;
  int fd_ = -1;
  uint32_t next_request_id_ = 1;
  protocol::FrameAssembler in_;
  std::deque<OwnedFrame> events_;
  Welcome welcome_;
};

// The bus's arenas as mapped in this process: arena 0 (directory and doorbells) and the
// ring arenas, mapped on first use.
class BusMemory {
 public:
  BusMemory(std::string bus, Arena::Access access);
  // Maps arena `arena_id` if needed and returns its base; throws Error naming the segment.
  std::byte* base(uint32_t arena_id);
  uint64_t size(uint32_t arena_id);
  // Opens the ring at `location` after checking it lies inside its arena.
  RingRef ring(const protocol::RingLocation& location);
  const ArenaTable& table() const { return table_; }
  const std::string& bus() const { return bus_; }
  // The bus's doorbell size, from the daemon's welcome. REQUIRES: called before any
  // Publisher or Waiter uses table().
  void set_doorbell_bits(uint32_t bits) { table_.set_doorbells(0, bits); }

 private:
  std::string bus_;
  Arena::Access access_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<Arena>> arenas_;
  ArenaTable table_;
};

// What a Bus and its Channels share: one connection (guarded) and the mapped memory.
// The last owner to let go says goodbye, so the daemon knows no frame was left unfinished.
struct ClientCore {
  ClientCore(const Endpoint& endpoint, bool wants_doorbell)
      : connection(endpoint, wants_doorbell), memory(endpoint.bus, Arena::Access::kReadWrite) {
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
  ControlConnection connection;
  BusMemory memory;
  // Set when the Bus goes: open channels then skip their CLOSE round trips, because the
  // daemon drops every hold of a connection that says goodbye and closes.
  bool closing = false;
};

// The program's name, for the daemon's log ("client 12 (pid 345, 'shmbus')").
std::string program_name();

}  // namespace shmbus
