// The daemon's event loop: one epoll set whose sources are known by tokens, plus the two
// sources the loop itself owns, a periodic timer and stop and reload eventfds.
//
// Registration returns the epoll_ctl error instead of throwing or logging: what a failure
// means depends on the source (a client is closed, the listening socket is retried), so
// the caller decides.
//
// Thread safety: everything runs on the run() thread, except stop() and reload(), which any
// thread or a signal handler may call.
#pragma once

#include <sys/epoll.h>

#include <chrono>
#include <cstdint>
#include <span>
#include <system_error>

#include "unique_fd.hpp"

namespace shmbus::daemon {

// epoll tokens: fixed ones for the daemon's own fds, client ids for connections, and the
// top bit for departing clients (their pidfd). Never raw fds: a number closed and reused
// within one epoll batch would be mistaken for another source.
inline constexpr uint64_t kStopToken = 1;
inline constexpr uint64_t kListenToken = 2;
inline constexpr uint64_t kTimerToken = 3;
inline constexpr uint64_t kReloadToken = 4;
inline constexpr uint64_t kFirstClientId = 16;
inline constexpr uint64_t kDepartingBit = uint64_t{1} << 63;

class EventLoop {
 public:
  // Creates the epoll set and the timer (firing every `timer_period`) and stop eventfd it
  // watches. Throws std::system_error.
  explicit EventLoop(std::chrono::nanoseconds timer_period);
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // epoll_ctl ADD / MOD / DEL; the error is epoll_ctl's errno, empty on success.
  [[nodiscard]] std::error_code add(int fd, uint32_t events, uint64_t token);
  [[nodiscard]] std::error_code modify(int fd, uint32_t events, uint64_t token);
  [[nodiscard]] std::error_code remove(int fd);

  // Waits until some source is ready, or `timeout_ms` (-1: forever, 0: returns at once),
  // and returns their events, a prefix of `buffer`. Throws std::system_error if epoll
  // itself fails (EINTR is retried).
  std::span<const epoll_event> wait(std::span<epoll_event> buffer, int timeout_ms = -1);
  // Consumes the timer's expirations; until then the level-triggered timer stays ready.
  void drain_timer();
  // Makes wait() report kStopToken. Async-signal-safe.
  void stop();
  // Makes wait() report kReloadToken until drain_reload(). Async-signal-safe.
  void reload();
  void drain_reload();

 private:
  UniqueFd epoll_fd_;   // used on the run() thread only
  UniqueFd stop_fd_;    // written by stop() from any thread; read by nobody (one stop is enough)
  UniqueFd timer_fd_;   // read on the run() thread
  UniqueFd reload_fd_;  // written by reload() from any thread; read on the run() thread
};

}  // namespace shmbus::daemon
