// An intruder for tests: a client that connects like any other, maps exactly what the
// daemon grants it (as descriptors), and then writes where an honest client would not. What
// it can reach is what any buggy or hostile client of the same user can reach.
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "client.hpp"
#include "directory.hpp"
#include "protocol.hpp"
#include "ring.hpp"
#include "shmbus/bus.hpp"

namespace shmbus::test {

class Intruder {
 public:
  Intruder(const ConnectOptions& options, protocol::Role role)
      : memory_(resolve_endpoint(options).bus),
        connection_(resolve_endpoint(options), role, memory_.grant_handler()) {
    memory_.set_doorbell_bits(connection_.welcome().doorbell_bits);
  }

  // Publisher role: opens `channel` for publishing (creating it) and returns its ring as
  // this client maps it (ring read-write, reader table read-only).
  RingRef open_channel(std::string_view channel) {
    protocol::Writer w = connection_.next_request(protocol::Type::kOpenChannel);
    w.str(channel).u64(0).u32(0).u8(0);
    const OwnedFrame reply = connection_.request(w);
    protocol::Parser p = reply.parser();
    const protocol::RingLocation location = protocol::RingLocation::read(p);
    return memory_.ring(location);
  }

  // Subscriber role: subscribes to `channel` and returns its ring as this client maps it
  // (ring read-only, reader table read-write), plus the slot it was given.
  struct Subscribed {
    RingRef ring;
    uint32_t slot = 0;
  };
  Subscribed subscribe(std::string_view channel) {
    protocol::Writer w = connection_.next_request(protocol::Type::kSubscribe);
    w.u8(0).u64(0).u32(1).str(channel);
    const OwnedFrame reply = connection_.request(w);
    protocol::Parser p = reply.parser();
    p.u8();
    if (p.u32() != 1) throw std::runtime_error("subscribe gave no attachment");
    const protocol::Attachment a = protocol::Attachment::read(p);
    return {memory_.ring(a.ring), a.slot};
  }

  // The ring of `channel` found through the directory, if this client maps its arenas.
  std::optional<RingRef> find(std::string_view channel) {
    std::optional<RingRef> found;
    for_each_channel(memory_, [&](const DirectoryEntry& e) {
      if (e.name == channel) found = e.ring;
    });
    return found;
  }

  BusMemory& memory() { return memory_; }
  ControlConnection& connection() { return connection_; }

 private:
  BusMemory memory_;  // before connection_, which hands it grants
  ControlConnection connection_;
};

}  // namespace shmbus::test
