// Subscription::fd(): an eventfd that a helper thread makes readable when the
// subscription's doorbell rings, so an event loop can poll one descriptor instead of
// waiting on a futex.
//
// Thread safety: the owning thread calls everything here; the helper thread only waits on
// the doorbell and writes the eventfd. `armed_` and `stop_` carry the hand-over between the
// two (guarded by `mutex_` / atomic).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "doorbell.hpp"

namespace shmbus {

class Notifier {
 public:
  // Creates the eventfd (throws Error(kSystem)); no thread runs until watch().
  Notifier();
  ~Notifier();
  Notifier(const Notifier&) = delete;
  Notifier& operator=(const Notifier&) = delete;

  int fd() const { return event_fd_; }

  // Starts the helper on `doorbell`, armed: the fd turns readable at once if a bit is
  // already set. It also turns readable once `period` passes without news (so the owner
  // gets to look for bits a hostile publisher withheld), and when `stop_waiting()` says so.
  // `wake_bit` is rung to wake the helper when it must stop.
  void watch(layout::DoorbellHeader* doorbell, const DoorbellGeometry& geometry, uint32_t wake_bit,
             std::chrono::nanoseconds period, std::function<bool()> stop_waiting);
  // While there is no doorbell to watch (the daemon is gone): the fd turns readable at
  // `at`, when the owner's next reconnect try is due.
  void wake_at(std::chrono::steady_clock::time_point at);
  // Stops the helper (if any); the fd stays open.
  void unwatch();
  // Clears the fd's readability and arms the helper for the next ring.
  void rearm();
  // Clears the fd's readability only.
  void clear();

 private:
  void loop(Waiter bell, std::chrono::nanoseconds period, std::function<bool()> stop_waiting);

  int event_fd_ = -1;
  layout::DoorbellHeader* doorbell_ = nullptr;  // watched, or null
  DoorbellGeometry geometry_;
  uint32_t wake_bit_ = 0;
  std::thread helper_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool armed_ = false;  // guarded by mutex_: the owner wants to hear of the next ring
  std::atomic<bool> stop_{false};
};

}  // namespace shmbus
