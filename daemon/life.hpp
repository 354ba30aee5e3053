// The daemon's life word (layout::DaemonLife): a robust mutex the serving thread holds while
// it serves, so that clients learn from shared memory alone that the daemon is gone.
//
// Thread safety: hold() and release() are called by the serving thread (the one whose
// death the kernel must report), nothing else touches the mutex.
#pragma once

#include <pthread.h>

#include "layout.hpp"

namespace shmbus::daemon {

class LifeLock {
 public:
  // `life`: the DaemonLife in the control arena, mapped read-write by this daemon.
  explicit LifeLock(layout::DaemonLife* life);
  ~LifeLock();
  LifeLock(const LifeLock&) = delete;
  LifeLock& operator=(const LifeLock&) = delete;

  // Takes the mutex on the calling thread; from here the thread's end, however it comes,
  // marks the word dead.
  void hold();
  // A clean stop: unlocks (the word reads 0, "no daemon"). No-op unless held.
  void release();

 private:
  pthread_mutex_t* mutex_;
  bool held_ = false;  // by the serving thread
};

}  // namespace shmbus::daemon
