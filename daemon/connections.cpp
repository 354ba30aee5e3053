#include "connections.hpp"

#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <span>
#include <vector>

#include "doorbell.hpp"
#include "fences.hpp"
#include "futex.hpp"
#include "naming.hpp"
#include "shmbus/error.hpp"

namespace shmbus::daemon {

using namespace protocol;

namespace {

// The peer's uid, gid and supplementary groups as the kernel recorded them when it
// connected (SO_PEERGROUPS, Linux 4.13): what [[access]] rules are checked against.
PeerIdentity peer_identity(int fd, const ucred& cred) {
  PeerIdentity who;
  who.uid = cred.uid;
  who.gid = cred.gid;
  std::vector<gid_t> groups(64);
  for (int tries = 0; tries < 4; ++tries) {
    socklen_t len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) == 0) {
      groups.resize(len / sizeof(gid_t));
      who.groups.assign(groups.begin(), groups.end());
      break;
    }
    if (errno != ERANGE) break;  // no supplementary groups known: the primary gid still counts
    groups.resize(len / sizeof(gid_t) + 16);
  }
  return who;
}

}  // namespace

Connections::Connections(const Config& config, std::shared_ptr<spdlog::logger> log, EventLoop& loop,
                         Turn& turn, int listen_fd, layout::DirectoryHeader& directory,
                         ClientEvents& events)
    : config_(config),
      log_(std::move(log)),
      loop_(loop),
      turn_(turn),
      pace_output_(config.max_unread_reply_bytes >= 2 * uint64_t{protocol::kMaxFrameBytes}
                       ? config.max_unread_reply_bytes - protocol::kMaxFrameBytes
                       : config.max_unread_reply_bytes / 2),
      listen_fd_(listen_fd),
      directory_(directory),
      events_(events) {
  if (const std::error_code ec = loop_.add(listen_fd_, EPOLLIN, kListenToken))
    throw std::system_error(ec, "epoll_ctl");
}

Connections::~Connections() {
  for (auto& [id, c] : clients_) {
    if (c->fd >= 0) ::close(c->fd);
    if (c->doorbell != nullptr) {
      // A subscriber asleep on its doorbell would not notice the socket closing: ring its
      // control bit so it reads the socket, finds it closed and reports the daemon gone.
      full_fence();
      doorbell::ring_doorbell(c->doorbell, kControlBit, DoorbellGeometry(c->doorbell_bits));
    }
  }
}

Client* Connections::find(uint64_t id) {
  auto it = clients_.find(id);
  return it == clients_.end() ? nullptr : it->second.get();
}

std::string Connections::describe_client(uint64_t id) const {
  const Client* c = nullptr;
  if (auto it = clients_.find(id); it != clients_.end()) c = it->second.get();
  for (const auto& [token, d] : departing_)
    if (c == nullptr && d.client->id == id) c = d.client.get();
  if (c == nullptr) return "client " + std::to_string(id);
  return "client " + std::to_string(id) + " (pid " + std::to_string(c->cred.pid) + ", '" + c->name +
         "')";
}

void Connections::accept_clients() {
  for (;;) {
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        pause_accepting(errno);
        return;
      }
      if (errno != EAGAIN && errno != EWOULDBLOCK) log_->warn("accept: {}", std::strerror(errno));
      return;
    }
    auto c = std::make_unique<Client>();
    c->id = next_client_id_++;
    c->fd = fd;
    c->connected_at = Clock::now();
    socklen_t len = sizeof(c->cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c->cred, &len) != 0) {
      // Without credentials no [[access]] rule can be checked: refuse rather than guess.
      log_->warn("SO_PEERCRED: {}; refusing the client", std::strerror(errno));
      ::close(fd);
      continue;
    }
    c->identity = peer_identity(fd, c->cred);
    if (const std::string why = refusal(*c); !why.empty()) {
      refuse(fd, *c, why);
      continue;
    }
    if (const std::error_code ec = loop_.add(fd, EPOLLIN | EPOLLRDHUP, c->id)) {
      log_->warn("epoll_ctl: {}", ec.message());
      ::close(fd);
      continue;
    }
    directory_.clients.fetch_add(1, std::memory_order_relaxed);
    ++by_user_[c->cred.uid].live;
    clients_.emplace(c->id, std::move(c));
  }
}

std::string Connections::refusal(const Client& c) const {
  const std::string in_file = " in [limits] of " + config_.source;
  if (clients_.size() >= config_.max_clients)
    return "shmbusd has max_clients = " + std::to_string(config_.max_clients) +
           " clients connected; raise max_clients" + in_file;
  // Departing clients keep their doorbells: the doorbell arena holds 2 * max_clients.
  if (clients_.size() + departing_.size() >= 2 * uint64_t{config_.max_clients})
    return "shmbusd has " + std::to_string(clients_.size()) + " clients connected and " +
           std::to_string(departing_.size()) +
           " that closed without goodbye and whose processes still run, twice max_clients = " +
           std::to_string(config_.max_clients) + in_file +
           "; end those processes, or raise max_clients";
  const uint32_t limit = config_.connections_per_user();
  auto it = by_user_.find(c.cred.uid);
  if (it == by_user_.end() || it->second.live + it->second.departing < limit) return {};
  const std::string key =
      config_.max_connections_per_user != 0
          ? "max_connections_per_user = " + std::to_string(limit)
          : "max_connections_per_user = 0 (max_clients = " + std::to_string(limit) + ")";
  return "user " + std::to_string(c.cred.uid) + " has " + std::to_string(it->second.live) +
         " connections open and " + std::to_string(it->second.departing) +
         " closed without goodbye whose processes still run; " + key + in_file +
         "; end those processes, or raise it";
}

void Connections::refuse(int fd, const Client& c, const std::string& why) {
  log_->warn("refusing a client of pid {}: {}", c.cred.pid, why);
  send_refusal(fd, why);
  ::close(fd);
}

void Connections::send_refusal(int fd, const std::string& why) {
  // Request 0, which the client library reports as the refusal; the socket takes a frame
  // this small whatever the client read, and if not, the close says enough.
  Writer w(Type::kError, 0);
  w.u16(static_cast<uint16_t>(Errc::kLimit)).str(why.substr(0, kMaxErrorBytes));
  const auto& frame = w.frame();
  [[maybe_unused]] ssize_t r = ::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

void Connections::check_deadlines(Clock::time_point now) {
  for (auto& [id, owned] : clients_) {
    Client& c = *owned;
    if (c.doomed) continue;
    if (!c.greeted && now - c.connected_at >= config_.hello_timeout) {
      const std::string why =
          "shmbusd closed this connection: it said no HELLO within "
          "hello_timeout_ms = " +
          std::to_string(config_.hello_timeout.count()) + " in [limits] of " + config_.source;
      log_->info("{}: {}", describe_client(id), why);
      if (c.out.empty()) send_refusal(c.fd, why);
      doom(c, "said no HELLO");
    } else if (!c.out.empty() && now - c.out_waiting_since >= config_.unread_reply_timeout) {
      log_->warn(
          "{} read none of its {} of unread control messages for unread_reply_timeout_ms = {} "
          "([limits] of {}); closing it",
          describe_client(id), human_bytes(c.out.size()), config_.unread_reply_timeout.count(),
          config_.source);
      doom(c, "not reading its replies");
    }
  }
  reap_doomed();
}

void Connections::forget_user_connection(uint32_t uid, bool departing) {
  auto it = by_user_.find(uid);
  if (it == by_user_.end()) return;
  --(departing ? it->second.departing : it->second.live);
  if (it->second.live == 0 && it->second.departing == 0) by_user_.erase(it);
}

void Connections::pause_accepting(int error) {
  // The listening socket is level-triggered: left in epoll, the waiting connection would
  // wake us again at once, forever. Unwatch it until a descriptor is freed or a tick passes.
  if (accept_paused_) return;
  if (const std::error_code ec = loop_.modify(listen_fd_, 0, kListenToken)) {
    // Still watched: the waiting connection wakes the loop again, which retries.
    log_->warn("cannot accept clients ({}) nor unwatch the listening socket: {}",
               std::strerror(error), ec.message());
    return;
  }
  accept_paused_ = true;
  rlimit limit{};
  getrlimit(RLIMIT_NOFILE, &limit);
  log_->warn(
      "cannot accept clients: {} ({} clients connected, open file limit {}); new "
      "clients wait until one disconnects. Raise the limit (LimitNOFILE= in the service, "
      "ulimit -n) or lower max_clients in [limits] of {}",
      std::strerror(error), clients_.size(), limit.rlim_cur, config_.source);
}

void Connections::resume_accepting() {
  if (!accept_paused_) return;
  if (const std::error_code ec = loop_.modify(listen_fd_, EPOLLIN, kListenToken)) {
    // Still paused: retried when a client leaves and on every tick.
    log_->warn("cannot watch the listening socket again: {}; new clients wait", ec.message());
    return;
  }
  accept_paused_ = false;
}

void Connections::on_client_event(uint64_t id, uint32_t events) {
  Client* c = find(id);
  if (c == nullptr) return;  // closed while handling an earlier event of the batch
  if (events & EPOLLOUT) flush(*c);
  if (!clients_.count(id)) return;
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
    read_from(*c, (events & (EPOLLHUP | EPOLLERR)) != 0);
}

void Connections::read_from(Client& c, bool hung_up) {
  const uint64_t id = c.id;
  std::byte buf[64 * 1024];
  // A paused client is read only to find the end of a connection that hung up: what it
  // sent before is bounded by its socket buffer.
  while (!c.paused || hung_up) {
    const ssize_t n = ::recv(c.fd, buf, sizeof(buf), 0);
    if (n == 0) {
      close_client(id, "disconnected");
      return;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      close_client(id, std::strerror(errno));
      return;
    }
    try {
      c.in.feed(std::span<const std::byte>(buf, static_cast<size_t>(n)));
    } catch (const ProtocolError& e) {
      drop_malformed(c, e);
      return;
    }
    if (!handle_frames(c, false)) return;
  }
}

bool Connections::handle_frames(Client& c, bool at_least_one) {
  const uint64_t id = c.id;
  try {
    std::span<const std::byte> body;
    for (bool first = true; !c.job && !c.doomed && c.out.size() < pace_output_ &&
                            (!turn_.spent() || (first && at_least_one)) && c.in.next(body);
         first = false) {
      events_.dispatch(c, Frame::parse(body));
      if (!clients_.count(id)) return false;
    }
  } catch (const ProtocolError& e) {
    drop_malformed(c, e);
    return false;
  }
  if (c.doomed) return false;
  update_state(c);
  return clients_.count(id) != 0 && !c.doomed;
}

void Connections::drop_malformed(Client& c, const ProtocolError& e) {
  log_->warn("client {} (pid {}, '{}') sent a malformed message: {}; closing its connection", c.id,
             c.cred.pid, c.name, e.what());
  close_client(c.id, "protocol error");
}

void Connections::update_state(Client& c) {
  if (c.doomed) return;
  const bool output_full = c.out.size() >= pace_output_;
  const bool frames = c.in.has_frame();
  // Nothing more is read while work waits: the client's frames would pile up in `in`, or
  // its replies in `out`.
  c.paused = c.job != nullptr || frames || output_full;
  if (!output_full && c.job && !c.queued_for_job) {
    c.queued_for_job = true;
    waiting_jobs_.push_back(c.id);
  } else if (!output_full && !c.job && frames && !c.queued_for_frames) {
    c.queued_for_frames = true;
    waiting_frames_.push_back(c.id);
  }
  update_interest(c);
}

void Connections::update_interest(Client& c) {
  const bool want_write = !c.out.empty();
  const bool want_read = !c.paused;
  if (want_write == c.want_write && want_read == c.want_read) return;
  const uint32_t events = (want_read ? EPOLLIN | EPOLLRDHUP : 0u) | (want_write ? EPOLLOUT : 0u);
  if (const std::error_code ec = loop_.modify(c.fd, events, c.id)) {
    // Either way the client would hang: its output never sent, its requests never read, or
    // (EPOLLOUT left on) the loop woken for it without end.
    log_->warn(
        "client {} (pid {}, '{}'): cannot change what its socket is watched for: {}; "
        "closing it",
        c.id, c.cred.pid, c.name, ec.message());
    doom(c, "dropped on an epoll error");
    return;
  }
  c.want_write = want_write;
  c.want_read = want_read;
}

uint64_t Connections::unread_bytes() const {
  uint64_t bytes = 0;
  for (const auto& [id, c] : clients_) bytes += c->out.size();
  return bytes;
}

size_t Connections::output_room(const Client& c) const {
  return c.out.size() < pace_output_ ? pace_output_ - c.out.size() : 0;
}

bool Connections::has_work() const {
  return !waiting_frames_.empty() || !waiting_jobs_.empty();
}

template <typename Work>
void Connections::serve(std::deque<uint64_t>& queue, bool Client::*queued, bool with_job,
                        Work&& work) {
  // Each client in turn, one unit each, so one that sent thousands of requests cannot keep
  // another from being answered; at least one unit a turn.
  bool served = false;
  for (size_t n = queue.size(); n > 0 && !(served && turn_.spent()); --n) {
    const uint64_t id = queue.front();
    queue.pop_front();
    Client* c = find(id);
    if (c == nullptr) continue;
    c->*queued = false;
    if (c->doomed || (c->job != nullptr) != with_job || c->out.size() >= pace_output_) {
      update_state(*c);  // queued again where it belongs, or paused for its output
      continue;
    }
    served = true;
    try {
      work(*c);
    } catch (const ProtocolError& e) {
      drop_malformed(*c, e);
      continue;
    }
    if (clients_.count(id) && !c->doomed) update_state(*c);
  }
  reap_doomed();
}

void Connections::serve_waiting_frames() {
  serve(waiting_frames_, &Client::queued_for_frames, false, [&](Client& c) {
    std::span<const std::byte> body;
    if (c.in.next(body)) events_.dispatch(c, Frame::parse(body));
  });
}

void Connections::continue_jobs() {
  serve(waiting_jobs_, &Client::queued_for_job, true, [&](Client& c) {
    const uint64_t id = c.id;
    events_.resume(c);
    // Answered: the frames that waited behind it are handled now, as far as the turn goes.
    if (clients_.count(id) && !c.doomed && !c.job) handle_frames(c, false);
  });
}

void Connections::send(Client& c, Writer& w) {
  if (c.doomed) return;
  if (barrier_due_) {
    // Reader slots were linked to rings that publishers use: make the links visible to
    // them before the subscriber, told by this reply, relies on them (ring.hpp).
    process_wide_barrier();
    barrier_due_ = false;
  }
  if (queue(c, w.frame())) flush(c);
}

void Connections::send_grant(Client& c, const ArenaGrant& grant, int fd) {
  if (c.doomed) return;
  Writer w(Type::kArenaGrant, 0);
  grant.write(w);
  const size_t at = c.out.size();
  if (!queue(c, w.frame())) return;
  c.out_fds.emplace_back(at, fd);
  flush(c);
}

bool Connections::queue(Client& c, const std::vector<std::byte>& frame) {
  if (c.out.empty()) c.out_waiting_since = Clock::now();
  c.out.insert(c.out.end(), frame.begin(), frame.end());
  // Replies stay below this (requests wait while less than a frame is left): what passes it
  // is events a client that does not read its socket lets pile up, which would otherwise pin
  // daemon memory without bound.
  if (c.out.size() > config_.max_unread_reply_bytes) {
    log_->warn(
        "{} left {} of control messages unread, more than max_unread_reply_bytes = {} in "
        "[limits] of {}; closing it",
        describe_client(c.id), human_bytes(c.out.size()),
        human_bytes(config_.max_unread_reply_bytes), config_.source);
    doom(c, "not reading its socket");
    return false;
  }
  return true;
}

void Connections::doom(Client& c, const char* reason) {
  if (c.doomed) return;
  // Closed after the current event: callers up the stack still use `c` and may be
  // iterating over the sets closing it would change.
  c.doomed = true;
  c.out.clear();
  c.out_fds.clear();
  doomed_.emplace_back(c.id, reason);
}

void Connections::reap_doomed() {
  while (!doomed_.empty()) {
    const auto [id, reason] = doomed_.back();
    doomed_.pop_back();
    close_client(id, reason);
  }
}

void Connections::flush(Client& c) {
  size_t sent = 0;
  while (sent < c.out.size()) {
    // Up to the next frame that carries a descriptor, or from it to the one after: each
    // descriptor rides on its own frame's first byte, so the client finds it queued by the
    // time it parses that frame.
    int fd = -1;
    size_t end = c.out.size();
    if (!c.out_fds.empty()) {
      if (c.out_fds.front().first == sent) {
        fd = c.out_fds.front().second;
        if (c.out_fds.size() > 1) end = c.out_fds[1].first;
      } else {
        end = c.out_fds.front().first;
      }
    }
    iovec iov{c.out.data() + sent, end - sent};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    if (fd >= 0) {
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      cmsghdr* cm = CMSG_FIRSTHDR(&msg);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    }
    const ssize_t n = ::sendmsg(c.fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      c.out.clear();  // the peer is gone; EPOLLIN/HUP will close it
      c.out_fds.clear();
      return;
    }
    if (fd >= 0) c.out_fds.pop_front();  // it went with the first byte sent
    sent += static_cast<size_t>(n);
    c.out_waiting_since = Clock::now();
  }
  c.out.erase(c.out.begin(), c.out.begin() + static_cast<std::ptrdiff_t>(sent));
  for (auto& [offset, fd] : c.out_fds) offset -= sent;
  if (sent > 0 && c.event_queued && c.doorbell != nullptr) {
    // Tell a subscriber that events wait on its socket. Rung after the bytes are in the
    // socket, not when they are queued: a socket buffer fills after a few hundred events,
    // and a bell rung for bytes still queued here would be taken too early. Replies need
    // no bell: the client is waiting for them.
    full_fence();
    doorbell::ring_doorbell(c.doorbell, kControlBit, DoorbellGeometry(c.doorbell_bits));
    c.event_queued = !c.out.empty();
  }
  // Output drained below the pace: a job or frames paused for it may go on.
  update_state(c);
}

void Connections::close_client(uint64_t id, const char* reason) {
  auto it = clients_.find(id);
  if (it == clients_.end()) return;
  std::unique_ptr<Client> owned = std::move(it->second);
  clients_.erase(it);
  Client& c = *owned;
  c.job.reset();  // a request being answered ends with its connection
  // Closing the descriptor unwatches it anyway: a failure here costs nothing but a note.
  if (const std::error_code ec = loop_.remove(c.fd))
    log_->debug("epoll_ctl DEL of client {}: {}", id, ec.message());
  ::close(c.fd);
  c.fd = -1;
  resume_accepting();  // a descriptor is free again
  directory_.clients.fetch_sub(1, std::memory_order_relaxed);
  forget_user_connection(c.cred.uid, false);
  // A goodbye vouches that nothing is left half-written; a client that never published or
  // subscribed holds nothing to wait for. Waiting on their pids would cost a descriptor
  // per connection, which a loop of bare connects could exhaust.
  // (Its publisher id marks frames only in channels it opened.)
  const bool holds_nothing = c.open_channels.empty() && c.attached.empty() &&
                             c.returned_slots.empty() && !c.doorbell_block;
  if (c.said_bye || holds_nothing) {
    log_->debug("client {} (pid {}, '{}') {}", id, c.cred.pid, c.name, reason);
    events_.finish_client(c);
    return;
  }
  // No goodbye: crashed, or dropped by us while it may still run. Its slots, doorbell,
  // holds and unfinished frames are released only once the process has exited.
  UniqueFd pidfd(c.cred.pid > 0 ? static_cast<int>(syscall(SYS_pidfd_open, c.cred.pid, 0)) : -1);
  if (pidfd.get() < 0) {
    // ESRCH: already gone (and reaped). Otherwise we cannot tell when it exits.
    if (c.cred.pid > 0 && errno != ESRCH)
      log_->warn("cannot watch pid {} of client {} ({}); releasing its resources now", c.cred.pid,
                 id, std::strerror(errno));
    events_.repair_and_finish(c);
    return;
  }
  const uint64_t token = kDepartingBit | next_departing_++;
  if (const std::error_code ec = loop_.add(pidfd.get(), EPOLLIN, token)) {
    // Unwatched, its exit would go unseen and what it holds would never be released.
    log_->warn("cannot watch pid {} of client {} ({}); releasing its resources now", c.cred.pid, id,
               ec.message());
    events_.repair_and_finish(c);
    return;
  }
  if (c.doorbell != nullptr) {
    // A live subscriber asleep on its doorbell: make it read the socket and see it closed.
    full_fence();
    doorbell::ring_doorbell(c.doorbell, kControlBit, DoorbellGeometry(c.doorbell_bits));
  }
  log_->info(
      "client {} (pid {}, '{}') {} without goodbye; releasing what it held when the "
      "process exits",
      id, c.cred.pid, c.name, reason);
  ++by_user_[c.cred.uid].departing;
  departing_[token] = Departing{std::move(pidfd), std::move(owned)};
}

void Connections::on_departed(uint64_t token) {
  auto it = departing_.find(token);
  if (it == departing_.end()) return;
  pollfd exited{it->second.pidfd.get(), POLLIN, 0};
  if (::poll(&exited, 1, 0) != 1) return;  // spurious: still running
  Departing d = std::move(it->second);
  departing_.erase(it);
  // Closing the pidfd unwatches it anyway: a failure here costs nothing but a note.
  if (const std::error_code ec = loop_.remove(d.pidfd.get()))
    log_->debug("epoll_ctl DEL of pid {}'s pidfd: {}", d.client->cred.pid, ec.message());
  d.pidfd.reset();
  forget_user_connection(d.client->cred.uid, true);
  events_.repair_and_finish(*d.client);
}

}  // namespace shmbus::daemon
