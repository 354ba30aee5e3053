#include "server.hpp"

#include <fcntl.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "arena.hpp"
#include "client_state.hpp"
#include "connections.hpp"
#include "doorbell.hpp"
#include "event_loop.hpp"
#include "fences.hpp"
#include "futex.hpp"
#include "glob.hpp"
#include "layout.hpp"
#include "naming.hpp"
#include "protocol.hpp"
#include "reclaim.hpp"
#include "registry.hpp"
#include "repair.hpp"
#include "ring.hpp"
#include "shmbus/error.hpp"
#include "subscriptions.hpp"
#include "sys_error.hpp"

namespace shmbus::daemon {

using namespace protocol;
using layout::DoorbellHeader;
using layout::ShmRef;

namespace {

constexpr uint32_t kMaxClientNameBytes = 256;
constexpr auto kTick = std::chrono::seconds(1);

[[noreturn]] void refuse(Errc code, const std::string& message) {
  throw Error(code, message);
}

// A u32 count and that many strings of at most `max_bytes`.
std::vector<std::string> read_names(Parser& p, uint32_t max_bytes, const char* what) {
  const uint32_t n = p.count(kMaxNamesPerRequest, 4, what);
  std::vector<std::string> names;
  names.reserve(n);
  for (uint32_t i = 0; i < n; ++i) names.emplace_back(p.str(max_bytes, what));
  return names;
}

// One daemon per bus: a flock on /dev/shm/shmbus.<bus>.lock, which holds the daemon's pid
// for the message another daemon of the bus then gives.
class BusLock {
 public:
  // Throws std::runtime_error fit for the user, e.g. when another daemon holds it.
  BusLock(const std::string& bus, spdlog::logger& log);
  ~BusLock();
  BusLock(const BusLock&) = delete;
  BusLock& operator=(const BusLock&) = delete;

 private:
  std::string path_;
  int fd_ = -1;  // its flock is the lock
};

// The control socket clients connect to: created at its path (and unlinked at exit), or
// adopted as it is from systemd socket activation.
class ListeningSocket {
 public:
  // Adopts `inherited_fd` if it is not -1, else listens at `path`. Throws
  // std::runtime_error fit for the user.
  ListeningSocket(int inherited_fd, std::string path);
  ~ListeningSocket();
  ListeningSocket(const ListeningSocket&) = delete;
  ListeningSocket& operator=(const ListeningSocket&) = delete;

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }  // what clients reach

 private:
  void adopt(int fd);
  void create();
  void close();

  std::string path_;
  int fd_ = -1;
  bool created_ = false;  // the file is ours to unlink; a .socket unit keeps its own
};

}  // namespace

struct Daemon::Impl final : ClientEvents {
  explicit Impl(DaemonOptions options);

  void run();
  void stop();
  void report_status();
  void on_tick();

  // ---- ClientEvents ----
  void dispatch(Client& c, const Frame& f) override;
  void finish_client(Client& c) override;
  void repair_and_finish(Client& c) override;

  // ---- requests ----
  void on_hello(Client& c, const Frame& f);
  void on_open_channel(Client& c, const Frame& f);
  void on_close_channel(Client& c, const Frame& f);
  void on_subscribe(Client& c, const Frame& f);
  void on_psubscribe(Client& c, const Frame& f);
  void on_unsubscribe(Client& c, const Frame& f, bool patterns);
  void on_patterns(Client& c, const Frame& f);
  void reply_error(Client& c, uint32_t request, Errc code, const std::string& message);
  void check_subscription_limit(const Client& c, size_t adding, const char* kind);

  // ---- registry ----
  // The registry's find_or_create, with a new channel matched against the patterns.
  Registry::Found find_or_create(std::string_view name, const ChannelSettings* requested);
  void send_subscribed(Client& c, uint32_t request,
                       const std::vector<protocol::Attachment>& attachments, Errc error_code,
                       const std::string& error);

  DaemonOptions options;
  std::shared_ptr<spdlog::logger> log;
  Endpoint endpoint;
  // Taken first and released last, after the bus's shared memory is unlinked: a daemon
  // started meanwhile could otherwise have its new segments removed by this one.
  BusLock lock;
  Registry registry;
  EventLoop loop;
  ListeningSocket listener;
  Connections connections;
  Subscriptions subscriptions;
  CrashRepair repair;
  Reclaimer reclaimer;
  std::vector<uint16_t> free_publisher_ids;
  uint32_t next_publisher_id = 1;
  Clock::time_point last_maintenance = Clock::now();
};

// ---- setup --------------------------------------------------------------------------------

namespace {

// The timer runs at the status interval when a supervisor wants reports more often than
// the 1 s maintenance tick (a watchdog of under 2 s); maintenance still runs each second.
std::chrono::nanoseconds timer_period(std::chrono::milliseconds status_interval) {
  return std::clamp<std::chrono::milliseconds>(status_interval, std::chrono::milliseconds(10),
                                               kTick);
}

}  // namespace

Daemon::Impl::Impl(DaemonOptions opts)
    : options(std::move(opts)),
      log(options.logger ? options.logger : spdlog::default_logger()),
      endpoint(resolve_endpoint(ConnectOptions{options.bus, options.socket_path, {}})),
      lock(endpoint.bus, *log),
      registry(options.config, endpoint.bus, log,
               [this] { return reclaimer.describe_holders(Clock::now()); }),
      loop(timer_period(options.status_interval)),
      listener(std::exchange(options.listen_fd, -1), endpoint.socket_path),
      connections(options.config, log, loop, listener.fd(), registry.directory(), *this),
      subscriptions(options.config, log, registry, connections),
      repair(log, registry),
      reclaimer(options.config, log, registry, connections, subscriptions) {
  endpoint.socket_path = listener.path();
  log->info("bus '{}' ready on {} (arenas of {}, shared memory limit {}, config: {})", endpoint.bus,
            endpoint.socket_path, human_bytes(options.config.arena_bytes),
            human_bytes(options.config.max_shared_memory), options.config.source);
}

BusLock::BusLock(const std::string& bus, spdlog::logger& log) : path_(bus_lock_path(bus)) {
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0)
    throw std::runtime_error("cannot open lock file " + path_ + ": " + std::strerror(errno) +
                             " (is /dev/shm mounted and writable?)");
  if (flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char pid[32] = {};
    [[maybe_unused]] ssize_t n = pread(fd_, pid, sizeof(pid) - 1, 0);
    ::close(fd_);
    if (err == EWOULDBLOCK)
      throw std::runtime_error("another shmbusd already serves bus '" + bus + "'" +
                               (pid[0] ? " (pid " + std::string(pid) + ")" : std::string()) +
                               "; stop it first, or start this one with another --bus NAME");
    throw std::runtime_error("cannot lock " + path_ + ": " + std::strerror(err));
  }
  const std::string pid = std::to_string(getpid());
  if (ftruncate(fd_, 0) != 0 || pwrite(fd_, pid.data(), pid.size(), 0) < 0)
    log.warn("could not record the pid in {}: {}", path_, std::strerror(errno));
}

BusLock::~BusLock() {
  ::unlink(path_.c_str());
  ::close(fd_);  // releases the flock
}

ListeningSocket::ListeningSocket(int inherited_fd, std::string path) : path_(std::move(path)) {
  try {
    if (inherited_fd >= 0)
      adopt(inherited_fd);
    else
      create();
  } catch (...) {
    close();  // a throwing constructor gets no destructor
    throw;
  }
}

ListeningSocket::~ListeningSocket() {
  close();
}

void ListeningSocket::close() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  if (created_) {
    ::unlink(path_.c_str());
    created_ = false;
  }
}

void ListeningSocket::adopt(int fd) {
  // Accept only what a .socket unit with ListenStream=/path gives: a listening Unix stream
  // socket. Anything else is a unit file mistake worth a clear error.
  int type = 0, domain = 0, listening = 0;
  socklen_t len = sizeof(int);
  getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len);
  len = sizeof(int);
  getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len);
  len = sizeof(int);
  getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len);
  if (type != SOCK_STREAM || domain != AF_UNIX || !listening) {
    ::close(fd);
    throw std::runtime_error(
        "the socket passed by systemd (LISTEN_FDS) is not a listening Unix stream socket; "
        "use ListenStream=/run/shmbus/<bus>.sock in the .socket unit");
  }
  fd_ = fd;
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  sockaddr_un addr{};
  socklen_t addr_len = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &addr_len) == 0 && addr.sun_path[0] != 0)
    path_ = addr.sun_path;  // what clients reach, whatever --socket said
  created_ = false;         // the .socket unit owns the file
}

void ListeningSocket::create() {
  const std::filesystem::path path(path_);
  if (path.has_parent_path() && !std::filesystem::exists(path.parent_path())) {
    std::error_code ec;
    std::filesystem::create_directories(path.parent_path(), ec);
    if (ec)
      throw std::runtime_error("cannot create " + path.parent_path().string() + ": " +
                               ec.message() +
                               "; run as root (or via systemd), or pass --socket PATH in a "
                               "directory you own (e.g. $XDG_RUNTIME_DIR/shmbus.sock)");
  }
  fd_ = check_sys([] { return socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0); },
                  "socket");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
  // We hold the bus lock: a socket file already there belongs to a daemon that died.
  ::unlink(path_.c_str());
  if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
    throw std::runtime_error("cannot listen on " + path_ + ": " + std::strerror(errno) +
                             (errno == EACCES ? "; run as root, or pass --socket PATH in a "
                                                "directory you own"
                                              : ""));
  created_ = true;
  // The same users who may map the bus's shared memory (arenas are 0660, in the daemon's
  // group) may connect: under systemd, members of the shmbus group.
  ::chmod(path_.c_str(), 0660);
  check_sys([&] { return ::listen(fd_, 256); }, "listen");
}

// ---- event loop ---------------------------------------------------------------------------

void Daemon::Impl::run() {
  epoll_event buffer[64];
  for (;;) {
    for (const epoll_event& event : loop.wait(buffer)) {
      const uint64_t token = event.data.u64;
      if (token == kStopToken) {
        log->info("stopping: {} client(s), {} channel(s)", connections.clients().size(),
                  registry.live_channels());
        return;
      }
      if (token == kListenToken) {
        connections.accept_clients();
      } else if (token == kTimerToken) {
        loop.drain_timer();
        if (Clock::now() - last_maintenance >= kTick - std::chrono::milliseconds(5)) {
          last_maintenance = Clock::now();
          on_tick();
        }
        report_status();
      } else if (token & kDepartingBit) {
        connections.on_departed(token);
      } else {
        connections.on_client_event(token, event.events);
      }
      connections.reap_doomed();
    }
  }
}

void Daemon::Impl::stop() {
  loop.stop();
}

void Daemon::Impl::repair_and_finish(Client& c) {
  std::vector<uint32_t> held;
  for (auto& [channel_id, handles] : c.open_channels) held.push_back(channel_id);
  repair.repair_publisher(c.publisher_id, held);
  finish_client(c);
}

void Daemon::Impl::finish_client(Client& c) {
  subscriptions.release(c);
  for (auto& [channel_id, handles] : c.open_channels)
    if (ChannelState* ch = registry.find_live(channel_id)) ch->publisher_holds -= handles;
  c.open_channels.clear();
  if (c.publisher_id != 0) free_publisher_ids.push_back(c.publisher_id);
  c.publisher_id = 0;
}

// ---- requests -----------------------------------------------------------------------------

void Daemon::Impl::reply_error(Client& c, uint32_t request, Errc code, const std::string& message) {
  Writer w(Type::kError, request);
  w.u16(static_cast<uint16_t>(code)).str(message.substr(0, kMaxErrorBytes));
  connections.send(c, w);
}

void Daemon::Impl::dispatch(Client& c, const Frame& f) {
  if (!c.greeted && f.type != Type::kHello)
    throw ProtocolError(std::string("first message must be HELLO, got ") + type_name(f.type));
  // A goodbye vouches for the frames written so far; anything after it needs a new one.
  if (f.type != Type::kBye) c.said_bye = false;
  try {
    switch (f.type) {
      case Type::kHello:
        return on_hello(c, f);
      case Type::kOpenChannel:
        return on_open_channel(c, f);
      case Type::kCloseChannel:
        return on_close_channel(c, f);
      case Type::kSubscribe:
        return on_subscribe(c, f);
      case Type::kPsubscribe:
        return on_psubscribe(c, f);
      case Type::kUnsubscribe:
        return on_unsubscribe(c, f, false);
      case Type::kPunsubscribe:
        return on_unsubscribe(c, f, true);
      case Type::kPatterns:
        return on_patterns(c, f);
      case Type::kPing: {
        Parser p(f.fields);
        p.end();
        Writer w(Type::kPong, f.request);
        w.u64(unix_now_ns());
        return connections.send(c, w);
      }
      case Type::kBye: {
        Parser p(f.fields);
        p.end();
        c.said_bye = true;
        Writer w(Type::kOk, f.request);
        return connections.send(c, w);
      }
      default:
        throw ProtocolError(std::string("unexpected message type ") +
                            std::to_string(static_cast<unsigned>(f.type)) + " (" +
                            type_name(f.type) + ") from a client");
    }
  } catch (const Error& e) {
    reply_error(c, f.request, e.code(), e.what());
  }
}

void Daemon::Impl::on_hello(Client& c, const Frame& f) {
  Parser p(f.fields);
  const uint32_t magic = p.u32();
  const uint16_t min_version = p.u16();
  const uint16_t max_version = p.u16();
  const std::string name(p.str(kMaxClientNameBytes, "client name"));
  const bool wants_doorbell = p.u8() != 0;
  p.end();
  if (magic != kProtocolMagic) throw ProtocolError("HELLO without the shmbus magic");
  if (c.greeted) throw ProtocolError("second HELLO on one connection");
  // The highest version both speak: older clients keep working against a newer daemon.
  const uint16_t version = std::min(max_version, kProtocolVersion);
  if (version < min_version || version < kMinProtocolVersion) {
    reply_error(c, f.request, Errc::kProtocol,
                "client speaks protocol versions " + std::to_string(min_version) + ".." +
                    std::to_string(max_version) + ", this shmbusd speaks " +
                    std::to_string(kMinProtocolVersion) + ".." + std::to_string(kProtocolVersion) +
                    "; use matching libshmbus and shmbusd");
    return;
  }
  if (free_publisher_ids.empty() && next_publisher_id > 0xffff)
    refuse(Errc::kLimit, "all 65535 publisher ids are in use; close idle connections");
  c.greeted = true;
  c.name = name;
  if (!free_publisher_ids.empty()) {
    c.publisher_id = free_publisher_ids.back();
    free_publisher_ids.pop_back();
  } else {
    c.publisher_id = static_cast<uint16_t>(next_publisher_id++);
  }
  if (wants_doorbell) {
    const uint32_t bits = options.config.max_subscriptions_per_client + 1;
    const Registry::Doorbell doorbell = registry.allocate_doorbell(bits);
    c.doorbell_block = doorbell.block;
    c.doorbell_bits = bits;
    c.doorbell = doorbell.header;
  }
  log->debug("client {} hello: pid {} uid {} '{}' publisher id {}", c.id, c.cred.pid, c.cred.uid,
             c.name, c.publisher_id);
  Writer w(Type::kWelcome, f.request);
  w.u16(version)
      .u16(c.publisher_id)
      .u64(c.id)
      .str(endpoint.bus)
      .u64(registry.directory_offset())
      .u64(c.doorbell_block ? c.doorbell_block->offset : 0)
      .u32(c.doorbell_bits);
  connections.send(c, w);
}

Registry::Found Daemon::Impl::find_or_create(std::string_view name,
                                             const ChannelSettings* requested) {
  const Registry::Found found = registry.find_or_create(name, requested);
  if (found.created) subscriptions.match_new_channel(found.channel);
  return found;
}

void Daemon::Impl::send_subscribed(Client& c, uint32_t request,
                                   const std::vector<protocol::Attachment>& attachments,
                                   Errc error_code, const std::string& error) {
  // A pattern over 100,000 channels attaches them all at once: the reply goes in frames of
  // at most half the frame limit, the last one flagged final.
  size_t next = 0;
  do {
    size_t end = next, bytes = 64;
    while (end < attachments.size() && bytes < kMaxFrameBytes / 2)
      bytes += 64 + attachments[end++].channel.size();
    const bool final = end == attachments.size();
    Writer w(Type::kSubscribed, request);
    w.u8(final ? 1 : 0).u32(static_cast<uint32_t>(end - next));
    for (size_t i = next; i < end; ++i) attachments[i].write(w);
    if (final)
      w.u32(static_cast<uint32_t>(c.channels.size() + c.patterns.size()))
          .u16(error.empty() ? 0 : static_cast<uint16_t>(error_code))
          .str(error);
    connections.send(c, w);
    next = end;
  } while (next < attachments.size());
}

void Daemon::Impl::check_subscription_limit(const Client& c, size_t adding, const char* kind) {
  const uint32_t limit = options.config.max_subscriptions_per_client;
  const size_t held = c.channels.size() + c.patterns.size();
  if (held + adding > limit)
    refuse(Errc::kLimit,
           "subscribing to " + std::to_string(adding) + " more " + kind +
               "(s) would exceed max_subscriptions_per_client = " + std::to_string(limit) +
               " (this subscription holds " + std::to_string(held) + "); raise it in [limits] of " +
               options.config.source);
}

void Daemon::Impl::on_open_channel(Client& c, const Frame& f) {
  Parser p(f.fields);
  const std::string name(p.str(kMaxChannelNameBytes, "channel name"));
  const uint64_t ring_bytes = p.u64();
  const uint32_t max_message = p.u32();
  const uint8_t back_pressure = p.u8();  // 0: as configured, 1: off, 2: on
  p.end();
  validate_channel_name(name);
  ChannelSettings wanted = options.config.settings_for(name);
  const bool asked = ring_bytes != 0 || max_message != 0 || back_pressure != 0;
  if (ring_bytes != 0) wanted.ring_bytes = ring_bytes;
  if (max_message != 0) wanted.max_message_bytes = max_message;
  if (back_pressure != 0) wanted.back_pressure = back_pressure == 2;
  if (asked) wanted.rule = "requested by the client";
  const auto [ch, created] = find_or_create(name, asked ? &wanted : nullptr);
  if (!created && asked) {
    const RingRef& r = ch.ring;
    const bool differs = (ring_bytes != 0 && ring_bytes != r.capacity()) ||
                         (max_message != 0 && max_message != r.max_payload()) ||
                         (back_pressure != 0 && (back_pressure == 2) != r.back_pressure());
    if (differs)
      refuse(Errc::kInvalidArgument,
             "channel " + printable(name) + " exists with " + describe_settings(ch.settings) +
                 ", not the " + describe_settings(wanted) +
                 " asked for; open it without settings, or set them for all its users with a "
                 "[[channel]] rule");
  }
  ++c.open_channels[ch.id];
  ++ch.publisher_holds;
  Writer w(Type::kChannelOpened, f.request);
  RingLocation{ch.id, ch.arena_id, ch.block.offset, ch.block.bytes}.write(w);
  w.str(ch.settings.rule);
  connections.send(c, w);
}

void Daemon::Impl::on_close_channel(Client& c, const Frame& f) {
  Parser p(f.fields);
  const uint32_t channel_id = p.u32();
  p.end();
  auto it = c.open_channels.find(channel_id);
  if (it == c.open_channels.end())
    refuse(Errc::kInvalidArgument,
           "channel id " + std::to_string(channel_id) + " is not open on this connection");
  if (--it->second == 0) c.open_channels.erase(it);
  if (ChannelState* ch = registry.find_live(channel_id)) {
    --ch->publisher_holds;
    ch->last_active = Clock::now();
  }
  Writer w(Type::kOk, f.request);
  connections.send(c, w);
}

void Daemon::Impl::on_subscribe(Client& c, const Frame& f) {
  Parser p(f.fields);
  const auto start = static_cast<StartKind>(p.u8());
  const uint64_t after_sequence = p.u64();
  if (start > StartKind::kAfterSequence) throw ProtocolError("unknown start position");
  const std::vector<std::string> names = read_names(p, kMaxChannelNameBytes, "channel name");
  p.end();
  (void)after_sequence;  // the client seeks; the slot only has to sit at or before it
  for (const auto& name : names) validate_channel_name(name);
  size_t adding = 0;
  for (const auto& name : names) adding += c.channels.count(name) ? 0 : 1;
  check_subscription_limit(c, adding, "channel");

  std::vector<protocol::Attachment> reply;
  std::string error;
  Errc error_code = Errc::kLimit;
  for (const auto& name : names) {
    if (c.channels.count(name)) {
      // Already held: report the slot again so the client's view is complete.
      if (const ChannelState* ch = registry.find(name))
        reply.push_back(subscriptions.describe_held(c, *ch));
      continue;
    }
    try {
      ChannelState& ch = find_or_create(name, nullptr).channel;
      reply.push_back(subscriptions.subscribe_channel(c, ch, start));
    } catch (const Error& e) {
      error = e.what();
      error_code = e.code();
      break;  // what succeeded stands; the client learns both
    }
  }
  send_subscribed(c, f.request, reply, error_code, error);
}

void Daemon::Impl::on_psubscribe(Client& c, const Frame& f) {
  Parser p(f.fields);
  const std::vector<std::string> patterns = read_names(p, kMaxPatternBytes, "pattern");
  p.end();
  for (const auto& pattern : patterns) validate_pattern(pattern);
  size_t adding = 0;
  for (const auto& pattern : patterns) adding += c.patterns.count(pattern) ? 0 : 1;
  check_subscription_limit(c, adding, "pattern");
  if (c.doorbell == nullptr)
    throw ProtocolError("psubscribe on a connection that asked for no doorbell in HELLO");

  std::vector<protocol::Attachment> reply;
  std::string error;
  Errc error_code = Errc::kLimit;
  for (const auto& pattern : patterns) {
    Subscriptions::PatternSubscribed subscribed = subscriptions.subscribe_pattern(c, pattern);
    std::move(subscribed.attachments.begin(), subscribed.attachments.end(),
              std::back_inserter(reply));
    if (subscribed.error) {
      error = subscribed.error->what();
      error_code = subscribed.error->code();
    }
  }
  send_subscribed(c, f.request, reply, error_code, error);
}

void Daemon::Impl::on_patterns(Client& c, const Frame& f) {
  Parser p(f.fields);
  const std::string filter(p.str(kMaxPatternBytes, "pattern filter"));
  p.end();
  if (!filter.empty()) validate_pattern(filter);
  // Like send_subscribed: frames of at most half the frame limit, the last flagged final, so
  // 10,000 patterns of 1 KiB each still fit the protocol.
  const Subscriptions::PatternIndex& index = subscriptions.pattern_index();
  auto it = index.begin();
  do {
    std::vector<std::pair<const std::string*, uint32_t>> batch;
    size_t bytes = 64;
    for (; it != index.end() && bytes < kMaxFrameBytes / 2; ++it) {
      if (!filter.empty() && !glob_match(filter, it->first)) continue;
      batch.emplace_back(&it->first, static_cast<uint32_t>(it->second.size()));
      bytes += 8 + it->first.size();
    }
    Writer w(Type::kPatternList, f.request);
    w.u8(it == index.end() ? 1 : 0).u32(static_cast<uint32_t>(batch.size()));
    for (const auto& [pattern, subscribers] : batch) w.str(*pattern).u32(subscribers);
    connections.send(c, w);
  } while (it != index.end());
}

void Daemon::Impl::on_unsubscribe(Client& c, const Frame& f, bool patterns) {
  Parser p(f.fields);
  std::vector<std::string> names = read_names(p, patterns ? kMaxPatternBytes : kMaxChannelNameBytes,
                                              patterns ? "pattern" : "channel name");
  p.end();
  if (names.empty()) {  // all, as a bare Redis UNSUBSCRIBE / PUNSUBSCRIBE
    if (patterns)
      names.assign(c.patterns.begin(), c.patterns.end());
    else
      names.assign(c.channels.begin(), c.channels.end());
  }
  std::vector<uint32_t> detached;
  for (const auto& name : names) {
    if (patterns) {
      const std::vector<uint32_t> ids = subscriptions.unsubscribe_pattern(c, name);
      detached.insert(detached.end(), ids.begin(), ids.end());
    } else if (const std::optional<uint32_t> id = subscriptions.unsubscribe_channel(c, name)) {
      detached.push_back(*id);
    }
  }
  Writer w(Type::kUnsubscribed, f.request);
  w.u32(static_cast<uint32_t>(detached.size()));
  for (uint32_t id : detached) w.u32(id);
  w.u32(static_cast<uint32_t>(c.channels.size() + c.patterns.size()));
  connections.send(c, w);
}

void Daemon::Impl::on_tick() {
  reclaimer.on_tick(Clock::now());
  repair.retry_stalled_rings();
  // Try again each second: other processes may have freed descriptors.
  connections.resume_accepting();
}

void Daemon::Impl::report_status() {
  if (!options.on_status) return;
  DaemonStatus status;
  status.clients = connections.clients().size();
  status.channels = registry.live_channels();
  status.patterns = subscriptions.pattern_index().size();
  status.reserved_bytes = registry.reserved_bytes();
  options.on_status(status);
}

// ---- Daemon -------------------------------------------------------------------------------

Daemon::Daemon(DaemonOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Daemon::~Daemon() = default;
void Daemon::run() {
  impl_->run();
}
void Daemon::stop() {
  impl_->stop();
}
const std::string& Daemon::bus() const {
  return impl_->endpoint.bus;
}
const std::string& Daemon::socket_path() const {
  return impl_->endpoint.socket_path;
}

}  // namespace shmbus::daemon
