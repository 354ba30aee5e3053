#include "notifier.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "fences.hpp"
#include "shmbus/error.hpp"

namespace shmbus {

Notifier::Notifier() : event_fd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  if (event_fd_ < 0) throw Error(Errc::kSystem, std::string("eventfd: ") + std::strerror(errno));
}

Notifier::~Notifier() {
  unwatch();
  ::close(event_fd_);
}

void Notifier::watch(layout::DoorbellHeader* doorbell, const DoorbellGeometry& geometry,
                     uint32_t wake_bit, std::chrono::nanoseconds period,
                     std::function<bool()> stop_waiting) {
  unwatch();
  doorbell_ = doorbell;
  geometry_ = geometry;
  wake_bit_ = wake_bit;
  stop_.store(false);
  armed_ = true;  // armed from the start: if news already waits, the fd turns readable
  helper_ =
      std::thread([this, bell = Waiter(doorbell, geometry), period,
                   stop_waiting = std::move(stop_waiting)] { loop(bell, period, stop_waiting); });
}

void Notifier::wake_at(std::chrono::steady_clock::time_point at) {
  unwatch();
  stop_.store(false);
  helper_ = std::thread([this, at] {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (cv_.wait_until(lock, at, [&] { return stop_.load(); })) return;
    }
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t r = ::write(event_fd_, &one, sizeof(one));
  });
}

void Notifier::unwatch() {
  if (!helper_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true);
    armed_ = true;
  }
  cv_.notify_all();
  if (doorbell_ != nullptr) {
    full_fence();
    doorbell::ring_doorbell(doorbell_, wake_bit_, geometry_);  // wakes the futex wait
  }
  helper_.join();
  doorbell_ = nullptr;
}

void Notifier::clear() {
  uint64_t count;
  [[maybe_unused]] ssize_t r = ::read(event_fd_, &count, sizeof(count));
}

void Notifier::rearm() {
  clear();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    armed_ = true;
  }
  cv_.notify_one();
}

void Notifier::loop(Waiter bell, std::chrono::nanoseconds period,
                    std::function<bool()> stop_waiting) {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [&] { return armed_; });
    }
    if (stop_.load()) return;
    const auto look_at = std::chrono::steady_clock::now() + period;
    bell.park_until(
        [&] {
          return stop_.load() || bell.any_ready() || stop_waiting() ||
                 std::chrono::steady_clock::now() >= look_at;
        },
        std::chrono::steady_clock::now(), true);
    if (stop_.load()) return;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      armed_ = false;
    }
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t r = ::write(event_fd_, &one, sizeof(one));
  }
}

}  // namespace shmbus
