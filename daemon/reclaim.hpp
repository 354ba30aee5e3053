// Idle-channel reclaim: a channel nobody publishes in or holds by name for idle_ttl leaves
// the directory and its name is free again. Its ring (memory and id) is freed only once
// every reader slot in it is let go, which a subscription does when it next reads; one
// that never reads is named in the log.
//
// Thread safety: the run() thread only.
#pragma once

#include <spdlog/logger.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

#include "clock.hpp"
#include "config.hpp"
#include "connections.hpp"
#include "registry.hpp"
#include "subscriptions.hpp"

namespace shmbus::daemon {

class Reclaimer {
 public:
  Reclaimer(const Config& config, std::shared_ptr<spdlog::logger> log, Registry& registry,
            Connections& connections, Subscriptions& subscriptions);

  // On each maintenance tick: reclaims the channels idle for idle_ttl, checks a batch of
  // rings for corruption, takes back reader slots not given back in time, frees the rings
  // their users let go, and names clients that hold reclaimed rings for too long.
  void on_tick(Clock::time_point now);
  // A client found `ch`'s ring contradicting itself: walk it (at most once a second per
  // channel) and quarantine it if it is corrupt.
  void check_reported(ChannelState& ch, const std::string& reporter);
  // Takes `ch` out of service as corrupt (logged once, with `why`): its subscribers are told
  // to let go of it and, holding the channel by name or by a pattern, are given a new ring
  // for it; its publishers see the descriptor and open the channel again. The rest of the
  // bus runs on.
  void quarantine(ChannelState& ch, const std::string& why);
  // Who keeps rings reclaimed before `reclaimed_before` from being freed: "client 17 (pid
  // 42, 'worker') holds 3; ..."; empty if none is held.
  std::string describe_holders(Clock::time_point reclaimed_before) const;

 private:
  std::unordered_map<uint64_t, uint32_t> holders(Clock::time_point reclaimed_before) const;
  void warn_about_holders(Clock::time_point now);
  // Checks the next kHealthChecksPerTick live rings (round robin) for what can be checked
  // in constant time: the configuration line and I1.
  void check_health();

  const Config& config_;  // the daemon's, outlives the reclaimer
  const std::shared_ptr<spdlog::logger> log_;
  Registry& registry_;
  Connections& connections_;
  Subscriptions& subscriptions_;
  // Owned by the run() thread.
  uint32_t health_cursor_ = 0;  // the next channel id check_health() looks at
  std::unordered_map<uint32_t, Clock::time_point> last_walk_;  // by channel id (reports)
};

}  // namespace shmbus::daemon
