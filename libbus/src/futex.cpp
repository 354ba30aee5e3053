#include "futex.hpp"

#include <linux/futex.h>
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <mutex>

#include "sys_error.hpp"

namespace shmbus {

static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t),
              "futex needs the atomic's address to be the 32-bit word itself");

FutexWaitResult futex_wait(std::atomic<uint32_t>* word, uint32_t expected,
                           std::chrono::nanoseconds timeout) {
  timespec ts{};
  timespec* tsp = nullptr;
  if (timeout.count() >= 0) {
    ts.tv_sec = static_cast<time_t>(timeout.count() / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(timeout.count() % 1'000'000'000);
    tsp = &ts;
  }
  // FUTEX_WAIT (not _PRIVATE): keyed by the shared page. The kernel re-checks *word ==
  // expected under its hash-bucket lock, which closes the lost-wakeup window.
  long rc = syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT, expected, tsp,
                    nullptr, 0);
  if (rc == 0) return FutexWaitResult::kWoken;
  switch (errno) {
    case EAGAIN: return FutexWaitResult::kValueChanged;
    case ETIMEDOUT: return FutexWaitResult::kTimedOut;
    case EINTR: return FutexWaitResult::kInterrupted;
    default: throw_sys_error(errno, "futex wait");
  }
}

int futex_wake_all(std::atomic<uint32_t>* word) {
  long rc = syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE, INT_MAX, nullptr,
                    nullptr, 0);
  if (rc < 0) throw_sys_error(errno, "futex wake");
  return static_cast<int>(rc);
}

void register_process_for_barriers() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) != 0)
      throw_sys_error(errno,
                      "membarrier register (Linux >= 4.16 with CONFIG_MEMBARRIER is required)");
  });
}

void process_wide_barrier() {
  if (syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) != 0)
    throw_sys_error(errno, "membarrier global expedited");
}

}  // namespace shmbus
