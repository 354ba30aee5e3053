#include "harness.hpp"

#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>

#include "doorbell.hpp"  // cpu_relax

namespace shmbus::compare {

int64_t mono_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

namespace {

// Shared (not FUTEX_PRIVATE) futexes: the page is mapped by several processes.
long futex(std::atomic<uint32_t>* word, int op, uint32_t value, const timespec* timeout) {
  return syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), op, value, timeout, nullptr, 0);
}

}  // namespace

// set/add and wait_at_least pair like Dekker's: the writer stores the value then reads
// `sleepers`; a waiter announces itself in `sleepers` then re-reads the value. With seq_cst
// on all four, at least one of them sees the other, so a wake is never missed (and
// FUTEX_WAIT itself re-checks the value).
void Signal::set(uint32_t v) {
  value.store(v, std::memory_order_seq_cst);
  if (sleepers.load(std::memory_order_seq_cst) != 0) futex(&value, FUTEX_WAKE, INT_MAX, nullptr);
}

void Signal::add(uint32_t n) {
  value.fetch_add(n, std::memory_order_seq_cst);
  if (sleepers.load(std::memory_order_seq_cst) != 0) futex(&value, FUTEX_WAKE, INT_MAX, nullptr);
}

bool Signal::wait_at_least(uint32_t target, int64_t spin_ns, int64_t deadline_ns) {
  if (get() >= target) return true;
  if (spin_ns > 0) {
    const int64_t spin_end = std::min(mono_ns() + spin_ns, deadline_ns);
    for (uint32_t i = 1;; ++i) {
      if (get() >= target) return true;
      if ((i & 63) == 0 && mono_ns() >= spin_end) break;
      cpu_relax();
    }
  }
  for (;;) {
    const int64_t left = deadline_ns - mono_ns();
    if (left <= 0) return get() >= target;
    sleepers.fetch_add(1, std::memory_order_seq_cst);
    const uint32_t seen = value.load(std::memory_order_seq_cst);
    if (seen < target) {
      // Sleep in slices so a deadline is kept even if a wake were lost.
      const int64_t slice = std::min<int64_t>(left, 100'000'000);
      const timespec ts{static_cast<time_t>(slice / 1'000'000'000),
                        static_cast<long>(slice % 1'000'000'000)};
      futex(&value, FUTEX_WAIT, seen, &ts);
    }
    sleepers.fetch_sub(1, std::memory_order_seq_cst);
    if (get() >= target) return true;
  }
}

ControlPage& map_inherited_control_page() {
  void* p = mmap(nullptr, sizeof(ControlPage), PROT_READ | PROT_WRITE, MAP_SHARED, kControlFd, 0);
  if (p == MAP_FAILED)
    throw Failure(std::string("cannot map the control page: ") + std::strerror(errno));
  return *static_cast<ControlPage*>(p);
}

}  // namespace shmbus::compare
