// One control connection as the daemon sees it: the socket and its buffers, what HELLO
// made of it, the channels it publishes in and its subscription (doorbell, reader slots).
// (Not client.hpp: libbus/src/client.hpp is the client library's side of the connection,
// and both directories are on the include path of the daemon tests.)
//
// Thread safety: the run() thread only. Connections owns every Client, from accept until
// its connection closes or, without a goodbye, until its process exits.
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "arena.hpp"
#include "clock.hpp"
#include "config.hpp"
#include "layout.hpp"
#include "protocol.hpp"

namespace shmbus::daemon {

inline constexpr uint32_t kControlBit = 0;  // doorbell bit 0: "events wait on your socket"

struct Client;

// A request answered over several event-loop turns (see turn.hpp): SUBSCRIBE or PSUBSCRIBE
// over many channels, a long PATTERNS list, an OPEN_CHANNEL that waits for its new channel
// to be matched against the patterns. Its client's later frames wait until it is answered.
class RequestJob {
 public:
  explicit RequestJob(uint32_t request) : request_(request) {}
  virtual ~RequestJob() = default;
  uint32_t request() const { return request_; }  // the id its replies carry
  // Works on the request until the turn is spent (at least one unit) or the client's
  // unread output is as large as it may grow; true once the last reply frame is queued.
  // Throws shmbus::Error for the handlers to answer.
  virtual bool resume(Client& c) = 0;

 private:
  const uint32_t request_;
};

// A subscription's reader slot in one ring, and why it is there.
struct Attachment {
  uint32_t slot = 0;
  uint32_t bit = 0;
  bool by_name = false;               // the subscription holds the channel itself
  std::vector<std::string> patterns;  // patterns of the subscription counted for it
  bool needed() const { return by_name || !patterns.empty(); }
  uint32_t receivers() const { return (by_name ? 1 : 0) + static_cast<uint32_t>(patterns.size()); }
};

struct Client {
  // The connection: kept by Connections.
  uint64_t id = 0;
  int fd = -1;
  ucred cred{};
  PeerIdentity identity;           // uid, gid and supplementary groups, from the socket at accept
  Clock::time_point connected_at;  // for hello_timeout_ms
  protocol::FrameAssembler in;
  std::vector<std::byte> out;  // bytes not yet written to the socket
  // Since when `out` waits without the socket taking any of it (for unread_reply_timeout_ms):
  // when it stopped being empty, or the socket last took bytes.
  Clock::time_point out_waiting_since;
  // Descriptors that go with frames in `out`: (offset in `out` of the frame's first byte,
  // descriptor). Each rides on its frame's first byte (SCM_RIGHTS). The descriptors belong to
  // the registry's arenas, which outlive every client.
  std::deque<std::pair<size_t, int>> out_fds;
  bool want_write = false;
  bool want_read = true;
  bool doomed = false;        // to be closed once the current event is handled
  bool event_queued = false;  // `out` holds an event the client has not been rung for
  // Work waits (frames in `in`, `job`, or output the client must read first): its socket
  // is not read meanwhile, so neither grows without bound.
  bool paused = false;
  bool queued_for_frames = false;  // in Connections' queue of clients with frames to handle
  bool queued_for_job = false;     // in Connections' queue of clients with a job to resume

  // The session: set by the request handlers.
  std::string name;
  protocol::Role role = protocol::Role::kPublisher;  // said in HELLO
  // Arenas granted on this connection, and how: a grant goes out once, before the first
  // frame that refers to the arena (kept by Access).
  std::unordered_map<uint32_t, protocol::GrantAccess> granted;
  bool greeted = false;
  bool said_bye = false;
  std::unique_ptr<RequestJob> job;  // the request being answered over several turns
  uint16_t publisher_id = 0;
  std::unordered_map<uint32_t, uint32_t> open_channels;  // channel id -> handles

  // Kept by the reclaim warnings.
  bool warned_holding = false;  // logged as holding reclaimed rings (until it lets go)

  // Subscriptions (a client that asked for a doorbell in HELLO): kept by Subscriptions.
  std::optional<Arena::Block> doorbell_block;
  // In the doorbell arena: publishers set bits in it, the client clears them.
  layout::DoorbellHeader* doorbell = nullptr;
  uint32_t doorbell_bits = 0;
  std::vector<uint32_t> free_bits;
  uint32_t next_bit = kControlBit + 1;
  std::unordered_set<std::string> channels;
  std::set<std::string> patterns;
  std::unordered_map<uint32_t, Attachment> attached;  // channel id -> slot
  // Slots the client was told to give back (unsubscribe, detach): it frees them itself when
  // it next reads; if it dies first or keeps one past slot_return_timeout_ms, the daemon
  // does (by owner token, so never someone else's slot).
  struct ReturnedSlot {
    uint32_t channel_id = 0;
    uint32_t slot = 0;
    Clock::time_point since;  // when the client was told
  };
  std::vector<ReturnedSlot> returned_slots;
};

}  // namespace shmbus::daemon
