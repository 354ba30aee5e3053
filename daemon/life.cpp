#include "life.hpp"

#include <cstddef>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

namespace shmbus::daemon {

// Clients read the mutex's futex word as layout::DaemonLife::futex_word: glibc's
// pthread_mutex_t must keep it first, and fit the cache line set aside for it.
static_assert(sizeof(pthread_mutex_t) <= sizeof(layout::DaemonLife));
static_assert(offsetof(pthread_mutex_t, __data.__lock) == 0);

LifeLock::LifeLock(layout::DaemonLife* life)
    : mutex_(new (static_cast<void*>(life)) pthread_mutex_t) {
  pthread_mutexattr_t attributes;
  pthread_mutexattr_init(&attributes);
  pthread_mutexattr_setpshared(&attributes, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attributes, PTHREAD_MUTEX_ROBUST);
  const int error = pthread_mutex_init(mutex_, &attributes);
  pthread_mutexattr_destroy(&attributes);
  if (error != 0)
    throw std::runtime_error(std::string("cannot set up the daemon's life word: ") +
                             std::strerror(error));
}

LifeLock::~LifeLock() {
  release();
  pthread_mutex_destroy(mutex_);
}

void LifeLock::hold() {
  if (held_) return;
  // Fresh and never shared with another locker: it cannot be held, nor left dead.
  const int error = pthread_mutex_lock(mutex_);
  if (error != 0)
    throw std::runtime_error(std::string("cannot take the daemon's life word: ") +
                             std::strerror(error));
  held_ = true;
}

void LifeLock::release() {
  if (!held_) return;
  held_ = false;
  // EPERM from any thread but the holder, e.g. the daemon's destructor after run() threw on
  // its own thread: that thread's end has marked the word dead already.
  pthread_mutex_unlock(mutex_);
}

}  // namespace shmbus::daemon
