// How a Bus or Subscription paces its tries to reach the daemon again after a loss
// (ReconnectOptions), and how it reports losses and reconnects (LinkEvent, LinkStats).
//
// Thread safety: one per Bus or Subscription, used under its owner's rules (a Bus guards
// it with ClientCore::mutex; a Subscription is used by one thread at a time).
#pragma once

#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "shmbus/bus.hpp"

namespace shmbus {

// Whether a failed try to reach the daemon is worth repeating: nothing answered, or it went
// away again. Anything else is what a daemon that answered refused.
inline bool worth_retrying(const Error& e) {
  return e.code() == Errc::kNoDaemon || e.code() == Errc::kDaemonGone || e.code() == Errc::kSystem;
}

class Reconnect {
 public:
  using Clock = std::chrono::steady_clock;

  explicit Reconnect(ReconnectOptions options);

  const ReconnectOptions& options() const { return options_; }
  const LinkStats& stats() const { return stats_; }
  bool connected() const { return stats_.connected; }

  // The daemon was found gone at `now`: counts the loss, queues its event, and makes the
  // first try due at once. Does nothing if already lost.
  void lost(const std::string& why, Clock::time_point now);
  // Whether a try is due at `now`, and when the next one is.
  bool due(Clock::time_point now) const { return now >= next_try_; }
  Clock::time_point next_try() const { return next_try_; }
  // A try failed at `now`: the next waits the current delay (drawn between half and all
  // of it), which then doubles, up to options().max_delay.
  void failed(Clock::time_point now);
  // A try succeeded: counts it and queues its event.
  void reconnected(const std::string& detail, bool new_daemon, Clock::time_point now);

  // The events queued since the last call. The owner hands them to deliver() once it holds
  // no lock and is between steps, so a callback may use the Bus or read link_stats().
  std::vector<LinkEvent> take_events() { return std::exchange(events_, {}); }
  // Calls options().on_event (if any); what it throws is not the link's business.
  void deliver(const LinkEvent& event) const;

 private:
  std::vector<LinkEvent> events_;

  ReconnectOptions options_;
  LinkStats stats_;
  uint64_t attempts_ = 0;  // tries since the loss
  std::chrono::nanoseconds delay_{0};
  Clock::time_point lost_at_{};
  Clock::time_point next_try_{};
  std::minstd_rand random_;
};

}  // namespace shmbus
