#include "client.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <thread>

#include "shmbus/error.hpp"

namespace shmbus {

using namespace protocol;

namespace {

// A daemon that does not answer a control request within this is treated as gone.
constexpr int kReplyTimeoutMs = 30'000;

}  // namespace

std::string program_name() {
  std::ifstream comm("/proc/self/comm");
  std::string name;
  std::getline(comm, name);
  return name.empty() ? "libshmbus" : name;
}

// ---- ControlConnection --------------------------------------------------------------------

ControlConnection::ControlConnection(const Endpoint& endpoint, Role role, GrantHandler on_grant)
    : endpoint_(endpoint), on_grant_(std::move(on_grant)) {
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw Error(Errc::kSystem, std::string("socket: ") + std::strerror(errno));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, endpoint_.socket_path.c_str(), endpoint_.socket_path.size() + 1);
  int rc;
  do {
    rc = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    throw Error(Errc::kNoDaemon,
                "no shmbusd answers on " + endpoint_.socket_path + " (" + std::strerror(err) +
                    "); start one with 'shmbusd --bus " + endpoint_.bus +
                    (endpoint_.socket_path.rfind(std::string(kDefaultRuntimeDir), 0) == 0
                         ? std::string()
                         : " --socket " + endpoint_.socket_path) +
                    "', or point SHMBUS_SOCKET / SHMBUS_BUS at a running bus");
  }
  try {
    hello(role);
  } catch (...) {
    // No destructor runs for a constructor that throws: a refused client must not keep
    // the socket (or descriptors that came before the refusal).
    close_all();
    throw;
  }
}

void ControlConnection::hello(Role role) {
  Writer hello = next_request(Type::kHello);
  hello.u32(kProtocolMagic)
      .u16(kMinProtocolVersion)
      .u16(kProtocolVersion)
      .str(endpoint_.client_name.empty() ? program_name() : endpoint_.client_name.substr(0, 256))
      .u8(static_cast<uint8_t>(role));
  const OwnedFrame reply = request(hello);
  if (reply.type != Type::kWelcome)
    throw Error(Errc::kProtocol,
                std::string("shmbusd answered HELLO with ") + type_name(reply.type));
  Parser p = reply.parser();
  welcome_.version = p.u16();
  welcome_.publisher_id = p.u16();
  welcome_.client_id = p.u64();
  welcome_.bus = std::string(p.str(256, "bus name"));
  welcome_.doorbell_bits = p.u32();
  welcome_.doorbell_offset = p.u64();
  p.end();
  if (welcome_.bus != endpoint_.bus) endpoint_.bus = welcome_.bus;  // the socket decides
}

ControlConnection::~ControlConnection() {
  close_all();
}

void ControlConnection::close_all() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  for (int fd : received_fds_) ::close(fd);
  received_fds_.clear();
}

bool ControlConnection::take_grant(const Frame& f) {
  if (f.type != Type::kArenaGrant) return false;
  Parser p(f.fields);
  const ArenaGrant grant = ArenaGrant::read(p);
  p.end();
  if (received_fds_.empty())
    throw Error(Errc::kProtocol, "shmbusd granted arena " + std::to_string(grant.arena_id) +
                                     " without a descriptor");
  const int fd = received_fds_.front();
  received_fds_.pop_front();
  if (on_grant_) {
    on_grant_(grant, fd);
  } else {
    ::close(fd);
  }
  return true;
}

Writer ControlConnection::next_request(Type type) {
  if (next_request_id_ == 0) next_request_id_ = 1;  // 0 marks events
  return Writer(type, next_request_id_++);
}

void ControlConnection::throw_gone(const std::string& why) const {
  throw Error(Errc::kDaemonGone, "shmbusd on " + endpoint_.socket_path + " " + why +
                                     "; start it again: clients reconnect by themselves "
                                     "(ReconnectOptions)");
}

void ControlConnection::send_all(const std::vector<std::byte>& frame) {
  size_t sent = 0;
  while (sent < frame.size()) {
    const ssize_t n = ::send(fd_, frame.data() + sent, frame.size() - sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE || errno == ECONNRESET) throw_if_refused();
      throw_gone(std::string("cannot be written to (") + std::strerror(errno) + ")");
    }
    sent += static_cast<size_t>(n);
  }
}

void ControlConnection::throw_if_refused() {
  // The daemon may have refused us (a limit, a timeout) and closed before reading what we
  // sent: its reason still waits in our receive queue, as an error for request 0.
  try {
    while (receive(false, Type::kHello)) {
    }
  } catch (const Error&) {
    // Closed: what arrived before is in in_.
  }
  std::span<const std::byte> body;
  try {
    while (in_.next(body)) {
      const Frame f = Frame::parse(body);
      if (f.request != 0 || f.type != Type::kError) continue;
      Parser p(f.fields);
      const auto code = static_cast<Errc>(p.u16());
      throw Error(code, std::string(p.str(kMaxErrorBytes, "error")));
    }
  } catch (const ProtocolError&) {
    // Nothing readable: report the broken connection itself.
  }
}

bool ControlConnection::receive(bool wait, Type waiting_for) {
  pollfd pfd{fd_, POLLIN, 0};
  int ready;
  do {
    ready = ::poll(&pfd, 1, wait ? kReplyTimeoutMs : 0);
  } while (ready < 0 && errno == EINTR);
  if (ready == 0) {
    if (wait)
      throw_gone(std::string("did not answer ") + type_name(waiting_for) + " within " +
                 std::to_string(kReplyTimeoutMs / 1000) + " s");
    return false;
  }
  std::byte buf[64 * 1024];
  // Room for a few descriptors: the kernel delivers those of one sendmsg with the first of
  // its bytes we read, and the daemon sends one per grant frame.
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)];
  iovec iov{buf, sizeof(buf)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  ssize_t n;
  do {
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    n = ::recvmsg(fd_, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n >= 0) {
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        received_fds_.push_back(fd);
      }
    }
    if (msg.msg_flags & MSG_CTRUNC)
      throw Error(Errc::kProtocol, "shmbusd sent more descriptors at once than expected");
  }
  if (n == 0) throw_gone("closed the connection (stopped or restarted?)");
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
    throw_gone(std::string("connection failed (") + std::strerror(errno) + ")");
  }
  try {
    in_.feed(std::span<const std::byte>(buf, static_cast<size_t>(n)));
  } catch (const ProtocolError& e) {
    throw Error(Errc::kProtocol, std::string("shmbusd sent a malformed message: ") + e.what());
  }
  return true;
}

OwnedFrame ControlConnection::request(Writer& request) {
  const auto& frame = request.frame();
  Parser header(std::span<const std::byte>(frame).subspan(4, 6));
  const auto type = static_cast<Type>(header.u16());
  const uint32_t id = header.u32();
  send_all(frame);
  return next_reply(id, type);
}

OwnedFrame ControlConnection::next_reply(uint32_t id, Type type) {
  for (;;) {
    std::span<const std::byte> body;
    try {
      while (in_.next(body)) {
        const Frame f = Frame::parse(body);
        if (take_grant(f)) continue;
        OwnedFrame owned{f.type, f.request, {f.fields.begin(), f.fields.end()}};
        if (f.request == 0 && f.type == Type::kError) {
          // Refused before HELLO was read (e.g. max_clients): say why, not just "closed".
          Parser p = owned.parser();
          const auto code = static_cast<Errc>(p.u16());
          throw Error(code, std::string(p.str(kMaxErrorBytes, "error")));
        }
        if (f.request == 0) {
          events_.push_back(std::move(owned));
          continue;
        }
        if (f.request != id)
          throw Error(Errc::kProtocol, "shmbusd answered request " + std::to_string(f.request) +
                                           " while " + std::to_string(id) + " was pending");
        if (owned.type == Type::kError) {
          Parser p = owned.parser();
          const auto code = static_cast<Errc>(p.u16());
          throw Error(code, std::string(p.str(kMaxErrorBytes, "error")));
        }
        return owned;
      }
    } catch (const ProtocolError& e) {
      throw Error(Errc::kProtocol, std::string("shmbusd sent a malformed reply: ") + e.what());
    }
    receive(true, type);
  }
}

void ControlConnection::poll_events() {
  try {
    while (receive(false, Type::kPing)) {
    }
    std::span<const std::byte> body;
    while (in_.next(body)) {
      const Frame f = Frame::parse(body);
      if (take_grant(f)) continue;
      if (f.request != 0)
        throw Error(Errc::kProtocol,
                    "unexpected reply " + std::to_string(f.request) + " with no request pending");
      events_.push_back(OwnedFrame{f.type, 0, {f.fields.begin(), f.fields.end()}});
    }
  } catch (const ProtocolError& e) {
    throw Error(Errc::kProtocol, std::string("shmbusd sent a malformed event: ") + e.what());
  }
}

void ControlConnection::goodbye() {
  Writer bye = next_request(Type::kBye);
  request(bye);
}

// ---- BusMemory ----------------------------------------------------------------------------

void BusMemory::adopt(const ArenaGrant& grant, int fd) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (arenas_[grant.arena_id]) {
    ::close(fd);
    return;
  }
  const auto access =
      grant.access == GrantAccess::kReadOnly ? Arena::Access::kReadOnly : Arena::Access::kReadWrite;
  try {
    arenas_[grant.arena_id] = std::make_unique<Arena>(Arena::attach(fd, access, grant.label));
  } catch (const std::exception& e) {
    throw Error(Errc::kSystem, "cannot map the shared memory of bus '" + bus_ + "': " + e.what());
  }
  const Arena& arena = *arenas_[grant.arena_id];
  if (arena.id() != grant.arena_id)
    throw Error(Errc::kProtocol, "shmbusd granted arena " + std::to_string(grant.arena_id) +
                                     " whose header says it is arena " +
                                     std::to_string(arena.id()));
  table_.add(grant.arena_id, arena.base(), arena.size());
}

std::byte* BusMemory::base(uint32_t arena_id) const {
  std::byte* mapped = arena_id < 256 ? table_.base(arena_id) : nullptr;
  if (mapped == nullptr)
    throw Error(Errc::kProtocol, "shmbusd referred to arena " + std::to_string(arena_id) +
                                     " of bus '" + bus_ + "' without granting it");
  return mapped;
}

const std::atomic<uint32_t>* BusMemory::life_word() const {
  std::byte* control = table_.base(layout::kControlArena);
  if (control == nullptr || table_.size(layout::kControlArena) < layout::kPageSize) return nullptr;
  return &reinterpret_cast<const layout::DaemonLife*>(control + layout::kDaemonLifeOffset)
              ->futex_word;
}

std::pair<int32_t, uint64_t> BusMemory::daemon_identity() const {
  std::byte* control = table_.base(layout::kControlArena);
  if (control == nullptr || table_.size(layout::kControlArena) <
                                layout::kDirectoryOffset + sizeof(layout::DirectoryHeader))
    return {0, 0};
  const auto* directory =
      reinterpret_cast<const layout::DirectoryHeader*>(control + layout::kDirectoryOffset);
  return {directory->daemon_pid, directory->started_unix_ns};
}

bool BusMemory::writable(uint32_t arena_id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return arena_id < arenas_.size() && arenas_[arena_id] &&
         arenas_[arena_id]->access() == Arena::Access::kReadWrite;
}

uint64_t BusMemory::size(uint32_t arena_id) const {
  base(arena_id);  // throws if not granted
  return table_.size(arena_id);
}

RingRef BusMemory::ring(const RingLocation& location) const {
  auto within = [&](uint32_t arena_id, uint64_t offset, uint64_t bytes) {
    const uint64_t arena_bytes = size(arena_id);
    return offset >= layout::kPageSize && offset <= arena_bytes && bytes <= arena_bytes - offset;
  };
  if (!within(location.ring_arena, location.ring_offset, location.ring_bytes) ||
      !within(location.readers_arena, location.readers_offset, location.readers_bytes))
    throw Error(Errc::kProtocol, "shmbusd gave a ring location outside its arenas");
  const RingGeometry geometry{location.capacity, location.max_payload,
                              (location.flags & layout::kRingBackPressure) != 0,
                              location.reader_capacity, location.channel_id};
  try {
    return RingRef::open(base(location.ring_arena) + location.ring_offset, location.ring_bytes,
                         base(location.readers_arena) + location.readers_offset,
                         location.readers_bytes, geometry);
  } catch (const std::exception& e) {
    throw Error(Errc::kCorrupt,
                std::string("channel ring is not usable: ") + e.what() +
                    " (some process may have written into it; shmbusd replaces such a ring)");
  }
}

}  // namespace shmbus

namespace shmbus {

ClientCore::ClientCore(const Endpoint& endpoint_in, ReconnectOptions reconnect_options)
    : endpoint(endpoint_in), reconnect(std::move(reconnect_options)) {
  connect_locked();
}

ClientCore::~ClientCore() {
  if (!connection || !broken.empty()) return;
  try {
    connection->goodbye();
  } catch (const std::exception&) {
    // The daemon is gone: nobody to tell.
  }
}

void ClientCore::connect_locked() {
  connection.reset();  // it holds a handler into the memory it was made with
  auto fresh_memory = std::make_shared<BusMemory>(endpoint.bus);
  auto fresh = std::make_unique<ControlConnection>(endpoint, protocol::Role::kPublisher,
                                                   fresh_memory->grant_handler());
  fresh_memory->set_doorbell_bits(fresh->welcome().doorbell_bits);
  if (fresh_memory->life_word() == nullptr)
    throw Error(Errc::kProtocol, "shmbusd did not grant the bus's control memory");
  memory = std::move(fresh_memory);
  connection = std::move(fresh);
  ++generation;
  broken.clear();
}

bool ClientCore::ensure_link_locked(Clock::time_point deadline) {
  if (broken.empty() && memory->daemon_alive()) return true;
  const auto before = memory->daemon_identity();
  const std::string why =
      !broken.empty() ? broken : daemon_description(endpoint, before.first) + " is gone";
  if (broken.empty()) broken = why;
  reconnect.lost(why, Clock::now());
  if (!reconnect.options().enabled)
    throw Error(Errc::kDaemonGone, why + "; reconnecting is off (ReconnectOptions::enabled)");
  for (;;) {
    const auto now = Clock::now();
    if (reconnect.due(now)) {
      try {
        connect_locked();
        const auto after = memory->daemon_identity();
        const bool new_daemon = after != before;
        reconnect.reconnected(
            daemon_description(endpoint, after.first) + " on " + endpoint.socket_path, new_daemon,
            Clock::now());
        return true;
      } catch (const Error& e) {
        // Tried again after the backoff. What a daemon that answered refused is the
        // caller's to hear, at each try.
        broken = e.what();
        reconnect.failed(Clock::now());
        if (!worth_retrying(e)) throw;
      }
    }
    const auto wake = std::min(reconnect.next_try(), deadline);
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_until(wake);
  }
}

void ClientCore::mark_broken_locked(const std::string& why) {
  if (broken.empty()) broken = why;
}

std::string daemon_description(const Endpoint& endpoint, int32_t pid) {
  return "shmbusd (pid " + std::to_string(pid) + ") of bus '" + endpoint.bus + "'";
}

Error ClientCore::gone_error() {
  std::lock_guard<std::mutex> lock(mutex);
  return gone_error_locked();
}

void ClientCore::report_events() noexcept {
  std::vector<LinkEvent> events;
  try {
    std::lock_guard<std::mutex> lock(mutex);
    events = reconnect.take_events();
  } catch (const std::exception&) {
    return;
  }
  for (const LinkEvent& event : events) reconnect.deliver(event);
}

Error ClientCore::gone_error_locked() const {
  const auto waited =
      std::chrono::duration_cast<std::chrono::milliseconds>(reconnect.options().wait).count();
  return Error(Errc::kDaemonGone, broken + "; still no daemon on " + endpoint.socket_path +
                                      " after " + std::to_string(waited) +
                                      " ms (ReconnectOptions::wait); start shmbusd (systemctl "
                                      "start shmbusd), it reconnects by itself meanwhile");
}

}  // namespace shmbus
