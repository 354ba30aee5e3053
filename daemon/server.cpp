#include "server.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>

#include "access.hpp"
#include "clock.hpp"
#include "connections.hpp"
#include "event_loop.hpp"
#include "life.hpp"
#include "naming.hpp"
#include "publisher_ids.hpp"
#include "reclaim.hpp"
#include "registry.hpp"
#include "reload.hpp"
#include "repair.hpp"
#include "requests.hpp"
#include "subscriptions.hpp"
#include "sys_error.hpp"
#include "turn.hpp"
#include "unique_fd.hpp"

namespace shmbus::daemon {

namespace {

constexpr auto kTick = std::chrono::seconds(1);

// One daemon per bus: a flock on <bus>.lock in the control socket's directory (under
// systemd the service's RuntimeDirectory, /run/shmbus, which only the service user may
// write), holding the daemon's pid for the message another daemon of the bus then gives.
// It is opened without following a symlink and used only if it is a regular file of ours:
// nothing another user can create or link there decides whether the bus starts.
class BusLock {
 public:
  // Throws std::runtime_error fit for the user, e.g. when another daemon holds it.
  BusLock(const std::string& bus, const std::string& socket_path, spdlog::logger& log);
  ~BusLock();
  BusLock(const BusLock&) = delete;
  BusLock& operator=(const BusLock&) = delete;

 private:
  std::string path_;
  UniqueFd fd_;  // its flock is the lock
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

  int fd() const { return fd_.get(); }
  const std::string& path() const { return path_; }  // what clients reach

 private:
  void adopt(int fd);
  void create();

  std::string path_;
  UniqueFd fd_;
  bool created_ = false;  // the file is ours to unlink; a .socket unit keeps its own
};

}  // namespace

// The parts, in the order they are built; each is destroyed before those above it, which is
// the order shutdown needs. All of it belongs to the run() thread once built, but for
// stop(), which only writes the loop's eventfd.
struct Daemon::Impl {
  explicit Impl(DaemonOptions options);

  void run();
  void stop() { loop.stop(); }
  // Reads the config file again and applies what may change now (reload.hpp).
  void reload_config();
  void handle(const epoll_event& event);
  // What earlier turns left: waiting frames, pattern matching of new channels, jobs.
  void continue_work();
  void on_tick();
  void report_status();

  // Read-only once built, but for options.config, which reload_config() replaces between
  // turns (the parts hold references to it).
  DaemonOptions options;
  std::shared_ptr<spdlog::logger> log;
  Endpoint endpoint;
  // Taken first and released last, after the bus's shared memory is unlinked: a daemon
  // started meanwhile could otherwise have its new segments removed by this one.
  BusLock lock;
  Registry registry;
  // Held by the run() thread while it serves (layout::DaemonLife): how clients learn, from
  // shared memory, that this daemon is gone.
  LifeLock life;
  EventLoop loop;
  Turn turn;
  ListeningSocket listener;
  // Closed before the registry goes: closing a subscriber rings its doorbell, in an arena.
  Connections connections;
  Access access;
  Subscriptions subscriptions;
  PublisherIds publisher_ids;
  CrashRepair repair;
  Reclaimer reclaimer;
  // Built after the connections that hand it frames: none arrive before run().
  Requests requests;
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
      endpoint(resolve_endpoint(ConnectOptions{options.bus, options.socket_path, {}, {}})),
      lock(endpoint.bus, endpoint.socket_path, *log),
      registry(options.config, endpoint.bus, log,
               [this] { return reclaimer.describe_holders(Clock::now()); }),
      life(registry.arena(layout::kControlArena).at<layout::DaemonLife>(layout::kDaemonLifeOffset)),
      loop(timer_period(options.status_interval)),
      listener(std::exchange(options.listen_fd, -1), endpoint.socket_path),
      connections(options.config, log, loop, turn, listener.fd(), registry.directory(), requests),
      access(options.config, registry, connections),
      subscriptions(options.config, log, registry, connections, access, turn),
      repair(log, registry, publisher_ids),
      reclaimer(options.config, log, registry, connections, subscriptions),
      requests(options.config, endpoint.bus, log, registry, connections, subscriptions, repair,
               access, reclaimer, turn, publisher_ids) {
  endpoint.socket_path = listener.path();
  log->info("bus '{}' ready on {} (arenas of {}, shared memory limit {}, config: {})", endpoint.bus,
            endpoint.socket_path, human_bytes(options.config.arena_bytes),
            human_bytes(options.config.max_shared_memory), options.config.source);
}

BusLock::BusLock(const std::string& bus, const std::string& socket_path, spdlog::logger& log)
    : path_(bus_lock_path(bus, socket_path)) {
  const std::filesystem::path dir = std::filesystem::path(path_).parent_path();
  std::error_code ec;
  if (!dir.empty() && !std::filesystem::exists(dir, ec)) {
    std::filesystem::create_directories(dir, ec);
    if (ec)
      throw std::runtime_error("cannot create " + dir.string() + ": " + ec.message() +
                               "; run as root (or via systemd), or pass --socket PATH in a "
                               "directory you own (e.g. $XDG_RUNTIME_DIR/shmbus.sock)");
  }
  fd_.reset(::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600));
  if (fd_.get() < 0)
    throw std::runtime_error(
        "cannot open lock file " + path_ + ": " + std::strerror(errno) +
        (errno == ELOOP ? " (it is a symbolic link: remove it; the lock must be a plain file)"
                        : "") +
        "; the bus lock lives beside the control socket, in a directory shmbusd's user owns");
  struct stat st {};
  if (fstat(fd_.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid())
    throw std::runtime_error("lock file " + path_ + " is not a plain file of this user (uid " +
                             std::to_string(geteuid()) +
                             "): someone else made it; remove it, "
                             "and keep the control socket in a directory only shmbusd's user "
                             "may write (its RuntimeDirectory, or $XDG_RUNTIME_DIR)");
  if (struct stat dir_st{};
      stat(dir.empty() ? "." : dir.c_str(), &dir_st) == 0 && (dir_st.st_mode & S_IWOTH) != 0)
    log.warn(
        "the control socket's directory {} is writable by every user: another user may "
        "take the names shmbusd uses there; prefer a directory of its own",
        dir.string());
  // Failing, the descriptor is closed but the file left alone: it is the other daemon's.
  if (flock(fd_.get(), LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char pid[32] = {};
    [[maybe_unused]] ssize_t n = pread(fd_.get(), pid, sizeof(pid) - 1, 0);
    if (err == EWOULDBLOCK)
      throw std::runtime_error("another shmbusd already serves bus '" + bus + "'" +
                               (pid[0] ? " (pid " + std::string(pid) + ")" : std::string()) +
                               "; stop it first, or start this one with another --bus NAME");
    throw std::runtime_error("cannot lock " + path_ + ": " + std::strerror(err));
  }
  const std::string pid = std::to_string(getpid());
  if (ftruncate(fd_.get(), 0) != 0 || pwrite(fd_.get(), pid.data(), pid.size(), 0) < 0)
    log.warn("could not record the pid in {}: {}", path_, std::strerror(errno));
}

BusLock::~BusLock() {
  ::unlink(path_.c_str());
  fd_.reset();  // releases the flock
}

ListeningSocket::ListeningSocket(int inherited_fd, std::string path) : path_(std::move(path)) {
  if (inherited_fd >= 0)
    adopt(inherited_fd);
  else
    create();
}

ListeningSocket::~ListeningSocket() {
  if (created_) ::unlink(path_.c_str());
}

void ListeningSocket::adopt(int fd) {
  // Accept only what a .socket unit with ListenStream=/path gives: a listening Unix stream
  // socket. Anything else is a unit file mistake worth a clear error.
  fd_.reset(fd);  // ours from here, whatever it turns out to be
  int type = 0, domain = 0, listening = 0;
  socklen_t len = sizeof(int);
  getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len);
  len = sizeof(int);
  getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len);
  len = sizeof(int);
  getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len);
  if (type != SOCK_STREAM || domain != AF_UNIX || !listening)
    throw std::runtime_error(
        "the socket passed by systemd (LISTEN_FDS) is not a listening Unix stream socket; "
        "use ListenStream=/run/shmbus/<bus>.sock in the .socket unit");
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
  fd_.reset(check_sys([] { return socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0); },
                      "socket"));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
  // We hold the bus lock: a socket file already there belongs to a daemon that died.
  ::unlink(path_.c_str());
  if (bind(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
    throw std::runtime_error("cannot listen on " + path_ + ": " + std::strerror(errno) +
                             (errno == EACCES ? "; run as root, or pass --socket PATH in a "
                                                "directory you own"
                                              : ""));
  // Who may connect: the daemon's user and group (under systemd, members of the shmbus
  // group). What each may then map and do is the daemon's to decide ([[access]] rules).
  ::chmod(path_.c_str(), 0660);
  if (::listen(fd_.get(), 256) != 0) {
    const int err = errno;
    ::unlink(path_.c_str());  // the destructor will not: a throwing constructor gets none
    throw_sys_error(err, "listen");
  }
  created_ = true;
}

// ---- event loop ---------------------------------------------------------------------------

void Daemon::Impl::run() {
  life.hold();
  epoll_event buffer[64];
  for (;;) {
    // Work left from earlier turns: look at the sockets without waiting, then go on with it.
    const bool busy = connections.has_work() || subscriptions.has_pending_matches();
    const auto events = loop.wait(buffer, busy ? 0 : -1);
    turn.begin();
    for (const epoll_event& event : events) {
      if (event.data.u64 == kStopToken) {
        log->info("stopping: {} client(s), {} channel(s)", connections.clients().size(),
                  registry.live_channels());
        life.release();
        return;
      }
      handle(event);
      connections.reap_doomed();
    }
    continue_work();
  }
}

void Daemon::Impl::handle(const epoll_event& event) {
  const uint64_t token = event.data.u64;
  if (token == kListenToken) {
    connections.accept_clients();
  } else if (token == kReloadToken) {
    loop.drain_reload();
    reload_config();
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
}

void Daemon::Impl::reload_config() {
  if (options.config_path.empty()) {
    log->warn("reload: shmbusd was started without a config file (-c), nothing to read again");
    return;
  }
  Config loaded;
  try {
    loaded = load_config(options.config_path);
  } catch (const ConfigError& e) {
    log->error("reload failed, the running config stays: {}", e.what());
    return;
  }
  // Every part holds a reference to options.config: assigning it here, between turns on
  // the run() thread, changes what they all read from now on.
  ReloadPlan plan = plan_reload(options.config, loaded);
  options.config = std::move(plan.config);
  auto joined = [](const std::vector<std::string>& names) {
    std::string text;
    for (const auto& name : names) text += (text.empty() ? "" : ", ") + name;
    return text;
  };
  if (plan.changed.empty())
    log->info("reloaded {}: nothing that may change while running changed", options.config_path);
  else
    log->info(
        "reloaded {}: changed {} (channels that exist keep their rings; rules apply to "
        "channels created from now on, limits and access to requests from now on)",
        options.config_path, joined(plan.changed));
  if (!plan.need_restart.empty())
    log->warn(
        "reload: {} changed in {} but cannot while the bus runs (its shared memory is laid "
        "out by them); the running values stay until a restart (systemctl restart shmbusd: "
        "clients reconnect by themselves)",
        joined(plan.need_restart), options.config_path);
}

void Daemon::Impl::continue_work() {
  // Requests first (a PING waits at most a turn behind any job), then new channels'
  // pattern matching for at most half a turn (publishers opening them wait for it), then
  // the jobs. Each does at least one unit, so none starves whatever the others have.
  connections.serve_waiting_frames();
  if (subscriptions.has_pending_matches()) {
    Turn::Share half(turn, Turn::kBudget / 2);
    subscriptions.match_pending();
  }
  connections.continue_jobs();
  connections.reap_doomed();
}

void Daemon::Impl::on_tick() {
  connections.check_deadlines(Clock::now());
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
  status.unread_reply_bytes = connections.unread_bytes();
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
void Daemon::reload() {
  impl_->loop.reload();
}
const std::string& Daemon::bus() const {
  return impl_->endpoint.bus;
}
const std::string& Daemon::socket_path() const {
  return impl_->endpoint.socket_path;
}

}  // namespace shmbus::daemon
