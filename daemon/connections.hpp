// The control connections: accepting clients, reading their frames, buffering what the
// daemon sends them, and closing them, or keeping a client that ended without a goodbye
// until its process exits (watched by pidfd).
//
// Thread safety: the run() thread only.
#pragma once

#include <spdlog/logger.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "client_state.hpp"
#include "clock.hpp"
#include "config.hpp"
#include "event_loop.hpp"
#include "layout.hpp"
#include "protocol.hpp"
#include "turn.hpp"
#include "unique_fd.hpp"

namespace shmbus::daemon {

// What the connections hand on to the request handlers.
class ClientEvents {
 public:
  // A frame from `c`. Throws ProtocolError to have the connection closed; may doom `c`
  // (through Connections::send) but not close it.
  virtual void dispatch(Client& c, const protocol::Frame& f) = 0;
  // Goes on with `c.job`, a request answered over several turns, resetting it once
  // answered; may doom `c` but not close it.
  virtual void resume(Client& c) = 0;
  // `c` is gone and nothing it wrote is left half-done (it said goodbye, or held nothing):
  // release what it holds.
  virtual void finish_client(Client& c) = 0;
  // `c` ended without a goodbye and its process has exited (or cannot be watched): repair
  // the frames it left unfinished, then release what it holds.
  virtual void repair_and_finish(Client& c) = 0;

 protected:
  ~ClientEvents() = default;
};

class Connections {
 public:
  // Watches `listen_fd` (kListenToken); throws std::system_error if it cannot.
  Connections(const Config& config, std::shared_ptr<spdlog::logger> log, EventLoop& loop,
              Turn& turn, int listen_fd, layout::DirectoryHeader& directory, ClientEvents& events);
  // Closes every connection and pidfd; subscribers are rung so they notice.
  ~Connections();
  Connections(const Connections&) = delete;
  Connections& operator=(const Connections&) = delete;

  // Event-loop entry points: kListenToken, a client id, a kDepartingBit token.
  void accept_clients();
  void on_client_event(uint64_t id, uint32_t events);
  void on_departed(uint64_t token);
  // Closes the clients doomed while handling the last event.
  void reap_doomed();
  // Work left for later turns: clients whose frames wait (the turn was spent, or they sent
  // several), and requests answered over several turns. Each serves clients in turn until
  // the turn is spent, at least one.
  bool has_work() const;
  void serve_waiting_frames();
  void continue_jobs();
  // Watches the listening socket again if it was paused for want of descriptors.
  void resume_accepting();
  // On each tick: closes the clients that said no HELLO within hello_timeout_ms, and those
  // that read none of their waiting output for unread_reply_timeout_ms.
  void check_deadlines(Clock::time_point now);

  // Queues `w` for `c` and writes what the socket takes. A client that lets too much
  // pile up is doomed: closed after the current event, never under the caller.
  void send(Client& c, protocol::Writer& w);
  // Queues a grant of an arena for `c`, its descriptor `fd` riding on the frame's first
  // byte. `fd` stays the caller's (an arena's): it is never closed here.
  void send_grant(Client& c, const protocol::ArenaGrant& grant, int fd);
  // Control messages queued for the connected clients and not yet taken by their sockets.
  uint64_t unread_bytes() const;
  // How many more bytes of replies `c` may be sent before its requests wait for it to
  // read (0: none now; a request answered over several turns goes on once it has read).
  size_t output_room(const Client& c) const;
  // Reader slots were linked to rings that publishers may use: the next send() first
  // makes the links visible to them (ring.hpp).
  void barrier_before_next_send() { barrier_due_ = true; }

  // A connected client (doomed ones included) or nullptr.
  Client* find(uint64_t id);
  const std::unordered_map<uint64_t, std::unique_ptr<Client>>& clients() const { return clients_; }
  // Calls `fn` with every client, connected or departing (fn must not close any).
  template <typename Fn>
  void for_each_client(Fn&& fn) {
    for (auto& [id, c] : clients_) fn(*c);
    for (auto& [token, d] : departing_) fn(*d.client);
  }
  // "client 17 (pid 42, 'worker')", for connected and departing clients alike.
  std::string describe_client(uint64_t id) const;

 private:
  // Reads what `c` sent and handles its frames; a paused client only if it `hung_up`.
  void read_from(Client& c, bool hung_up);
  // Handles `c`'s complete frames until one starts a job, its output is full or the turn
  // is spent (after one frame if `at_least_one`); false if `c` was closed or doomed.
  bool handle_frames(Client& c, bool at_least_one);
  void drop_malformed(Client& c, const protocol::ProtocolError& e);
  // After `c`'s input, job or output changed: pauses or resumes reading it, queues its
  // waiting work, and watches its socket for what it needs.
  void update_state(Client& c);
  void update_interest(Client& c);
  // Serves the clients in `queue` (each flagged by `queued`, and with a job or without as
  // `with_job` says) with `work` in turn, until the turn is spent.
  template <typename Work>
  void serve(std::deque<uint64_t>& queue, bool Client::*queued, bool with_job, Work&& work);
  void flush(Client& c);
  // Appends a finished frame to `c`'s output; false (and `c` doomed) past the output limit.
  bool queue(Client& c, const std::vector<std::byte>& frame);
  void doom(Client& c, const char* reason);
  void close_client(uint64_t id, const char* reason);
  void pause_accepting(int error);
  // Why a new connection of `c`'s user may not be served (max_clients, the doorbells of
  // departing clients, max_connections_per_user), or empty.
  std::string refusal(const Client& c) const;
  // Sends `why` as an error frame on a connection never served, and closes it.
  void refuse(int fd, const Client& c, const std::string& why);
  // Sends `why` as an error frame for request 0, without waiting: a connection about to be
  // closed learns why.
  static void send_refusal(int fd, const std::string& why);
  // A client of `uid` stops counting (its connection closed, or its process exited).
  void forget_user_connection(uint32_t uid, bool departing);

  const Config& config_;  // the daemon's, outlives the connections
  const std::shared_ptr<spdlog::logger> log_;
  EventLoop& loop_;
  Turn& turn_;
  // Requests wait while a client's unread output is at least this, so that a reply frame
  // still fits below max_unread_reply_bytes.
  const size_t pace_output_;
  const int listen_fd_;  // owned by the daemon (server.cpp), which outlives the connections
  layout::DirectoryHeader& directory_;  // in shared memory: its client count is ours to keep
  ClientEvents& events_;

  // Owned by the run() thread, like everything below.
  std::unordered_map<uint64_t, std::unique_ptr<Client>> clients_;
  uint64_t next_client_id_ = kFirstClientId;
  std::vector<std::pair<uint64_t, const char*>> doomed_;  // client id, why it is closed
  // Clients with frames to handle or a job to resume, in the order they are served; an id
  // may be stale (its client closed), a client is in each at most once (Client::queued_*).
  std::deque<uint64_t> waiting_frames_;
  std::deque<uint64_t> waiting_jobs_;
  // Clients whose connection ended without a goodbye, until their process exits: its
  // slots, doorbell, channel holds and unfinished frames are released or repaired only then,
  // since a live process may still read and write them.
  struct Departing {
    UniqueFd pidfd;
    std::unique_ptr<Client> client;
  };
  std::unordered_map<uint64_t, Departing> departing_;  // by token
  // Connections by user (uid), live and departing, for max_connections_per_user.
  struct UserConnections {
    uint32_t live = 0;
    uint32_t departing = 0;
  };
  std::unordered_map<uint32_t, UserConnections> by_user_;
  uint64_t next_departing_ = 1;
  bool barrier_due_ = false;
  bool accept_paused_ = false;  // out of file descriptors: the listening socket is unwatched
};

}  // namespace shmbus::daemon
