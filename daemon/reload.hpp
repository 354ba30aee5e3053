// SIGHUP (systemctl reload shmbusd): what a new config file may change in a running daemon.
//
// Settings that only decide what happens from now on (limits, timeouts, [[channel]] rules
// for channels created later, who an [[access]] rule admits) change at once. Those the bus's
// shared memory was laid out by cannot: the arena size, the channel directory
// (max_channels), every doorbell's size (max_subscriptions_per_client), the doorbell arena
// (max_clients) and the access classes (the [[access]] patterns, one set of segments each).
// They keep their running values, and the reload names them.
//
// Thread safety: a pure function.
#pragma once

#include <string>
#include <vector>

#include "config.hpp"

namespace shmbus::daemon {

struct ReloadPlan {
  Config config;                          // what to run with from now on
  std::vector<std::string> changed;       // settings that change now
  std::vector<std::string> need_restart;  // settings that changed in the file but are kept
};

ReloadPlan plan_reload(const Config& running, const Config& loaded);

}  // namespace shmbus::daemon
