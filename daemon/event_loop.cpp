#include "event_loop.hpp"

#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <initializer_list>
#include <utility>

#include "sys_error.hpp"

namespace shmbus::daemon {

namespace {

std::error_code control(int epoll_fd, int op, int fd, uint32_t events, uint64_t token) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = token;
  if (epoll_ctl(epoll_fd, op, fd, op == EPOLL_CTL_DEL ? nullptr : &ev) == 0) return {};
  return {errno, std::generic_category()};
}

}  // namespace

EventLoop::EventLoop(std::chrono::nanoseconds timer_period)
    : epoll_fd_(check_sys([] { return epoll_create1(EPOLL_CLOEXEC); }, "epoll_create1")),
      stop_fd_(check_sys([] { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }, "eventfd")),
      timer_fd_(
          check_sys([] { return timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK); },
                    "timerfd_create")),
      reload_fd_(check_sys([] { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }, "eventfd")) {
  const timespec every{static_cast<time_t>(timer_period.count() / 1'000'000'000),
                       static_cast<long>(timer_period.count() % 1'000'000'000)};
  const itimerspec timer{every, every};
  check_sys([&] { return timerfd_settime(timer_fd_.get(), 0, &timer, nullptr); },
            "timerfd_settime");
  for (auto [fd, token] :
       {std::pair{stop_fd_.get(), kStopToken}, std::pair{timer_fd_.get(), kTimerToken},
        std::pair{reload_fd_.get(), kReloadToken}})
    if (const std::error_code ec = add(fd, EPOLLIN, token))
      throw_sys_error(ec.value(), "epoll_ctl");
}

std::error_code EventLoop::add(int fd, uint32_t events, uint64_t token) {
  return control(epoll_fd_.get(), EPOLL_CTL_ADD, fd, events, token);
}

std::error_code EventLoop::modify(int fd, uint32_t events, uint64_t token) {
  return control(epoll_fd_.get(), EPOLL_CTL_MOD, fd, events, token);
}

std::error_code EventLoop::remove(int fd) {
  return control(epoll_fd_.get(), EPOLL_CTL_DEL, fd, 0, 0);
}

std::span<const epoll_event> EventLoop::wait(std::span<epoll_event> buffer, int timeout_ms) {
  for (;;) {
    const int n =
        epoll_wait(epoll_fd_.get(), buffer.data(), static_cast<int>(buffer.size()), timeout_ms);
    if (n >= 0) return buffer.first(static_cast<size_t>(n));
    if (errno != EINTR) throw_sys_error(errno, "epoll_wait");
  }
}

void EventLoop::drain_timer() {
  uint64_t expirations;
  [[maybe_unused]] ssize_t r = ::read(timer_fd_.get(), &expirations, sizeof(expirations));
}

void EventLoop::stop() {
  const uint64_t one = 1;
  // write() is async-signal-safe; the eventfd wakes epoll_wait.
  [[maybe_unused]] ssize_t r = ::write(stop_fd_.get(), &one, sizeof(one));
}

void EventLoop::reload() {
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t r = ::write(reload_fd_.get(), &one, sizeof(one));
}

void EventLoop::drain_reload() {
  uint64_t requests;  // SIGHUPs that came together are one reload
  [[maybe_unused]] ssize_t r = ::read(reload_fd_.get(), &requests, sizeof(requests));
}

}  // namespace shmbus::daemon
