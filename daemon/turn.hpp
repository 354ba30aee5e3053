// The event loop's turn: how long it may work before it looks at its sockets again.
//
// Work that could take longer than a client may wait - matching patterns against every
// channel, answering a request about thousands of channels, matching a new channel against
// thousands of patterns - checks spent() after each unit (one glob match, one channel) and
// goes on in a later turn, so every client is served within a few turns whatever the others
// ask. A unit is bounded on its own: a glob match costs O(pattern x name), both at most
// 1 KiB (glob.hpp).
//
// Thread safety: the run() thread only.
#pragma once

#include <algorithm>
#include <chrono>

#include "clock.hpp"

namespace shmbus::daemon {

class Turn {
 public:
  static constexpr std::chrono::microseconds kBudget{2000};

  // A turn starts when the loop has its events.
  void begin() { deadline_ = Clock::now() + kBudget; }
  bool spent() const { return Clock::now() >= deadline_; }

  // Within its scope, the turn is spent after `share` more at most (a fair part of it for
  // one kind of work); the turn's own end is restored after.
  class Share {
   public:
    Share(Turn& turn, std::chrono::microseconds share) : turn_(turn), saved_(turn.deadline_) {
      turn_.deadline_ = std::min(saved_, Clock::now() + share);
    }
    ~Share() { turn_.deadline_ = saved_; }
    Share(const Share&) = delete;
    Share& operator=(const Share&) = delete;

   private:
    Turn& turn_;
    const Clock::time_point saved_;
  };

 private:
  Clock::time_point deadline_ = Clock::time_point::max();  // never spent outside the loop
};

}  // namespace shmbus::daemon
