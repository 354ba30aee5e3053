// The event loop's turn: how long it may work before it looks at its sockets again.
//
// Work that could take longer than a client may wait - matching patterns against every
// channel, answering a request about thousands of channels, matching a new channel against
// thousands of patterns - checks spent() after each unit (one glob match, one channel) and
// goes on in a later turn, so every client is served within a few turns whatever the others
// ask. A unit is bounded on its own: a glob match costs O(pattern x name), both at most
// 1 KiB (glob.hpp).
//
// Most units cost less than reading the clock (~25 ns through the vDSO; a glob match that
// fails at its first byte takes a few), and reading it after each one made matching 10,000
// patterns against a new channel 2.7x slower (bench/scale_bench section 2). Loops of such
// units call spent_after(work) instead, which reads the clock once per kWorkPerClockRead
// steps of work: a turn overruns by at most that many steps (a few microseconds).
//
// Thread safety: the run() thread only.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>

#include "clock.hpp"

namespace shmbus::daemon {

class Turn {
 public:
  static constexpr std::chrono::microseconds kBudget{2000};

  // A turn starts when the loop has its events.
  void begin() {
    deadline_ = Clock::now() + kBudget;
    work_since_clock_read_ = 0;
  }
  bool spent() const { return Clock::now() >= deadline_; }

  // spent(), asked after a unit of at most `work` steps (glob_match_work()); reads the clock
  // only when kWorkPerClockRead steps have accumulated since it last did. A unit that alone
  // exceeds that reads it every time.
  static constexpr size_t kWorkPerClockRead = 4096;
  bool spent_after(size_t work) {
    work_since_clock_read_ += work;
    if (work_since_clock_read_ < kWorkPerClockRead) return false;
    work_since_clock_read_ = 0;
    return spent();
  }

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
  size_t work_since_clock_read_ = 0;                       // steps charged, unchecked
};

}  // namespace shmbus::daemon
