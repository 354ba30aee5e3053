#include "reload.hpp"

#include <algorithm>

namespace shmbus::daemon {

namespace {

std::vector<std::string> access_patterns(const Config& config) {
  std::vector<std::string> patterns;
  for (const AccessRule& rule : config.access) patterns.push_back(rule.pattern);
  return patterns;
}

}  // namespace

ReloadPlan plan_reload(const Config& running, const Config& loaded) {
  ReloadPlan plan;
  plan.config = loaded;
  Config& next = plan.config;

  // Kept as they run: the shared memory was laid out by them.
  auto keep = [&](const char* name, auto Config::*field) {
    if (!(running.*field == loaded.*field)) {
      plan.need_restart.push_back(name);
      next.*field = running.*field;
    }
  };
  keep("bus.arena_bytes", &Config::arena_bytes);
  keep("limits.max_channels", &Config::max_channels);
  keep("limits.max_subscriptions_per_client", &Config::max_subscriptions_per_client);
  keep("limits.max_clients", &Config::max_clients);
  if (access_patterns(running) != access_patterns(loaded)) {
    plan.need_restart.push_back("[[access]] patterns");
    next.access = running.access;
  }

  // Changed at once.
  auto note = [&](const char* name, auto Config::*field) {
    if (!(running.*field == next.*field)) plan.changed.push_back(name);
  };
  note("bus.idle_ttl_seconds", &Config::idle_ttl);
  note("[defaults]", &Config::defaults);
  note("limits.max_shared_memory", &Config::max_shared_memory);
  note("limits.max_connections_per_user", &Config::max_connections_per_user);
  note("limits.max_channels_per_user", &Config::max_channels_per_user);
  note("limits.max_shared_memory_per_user", &Config::max_shared_memory_per_user);
  note("limits.max_unread_reply_bytes", &Config::max_unread_reply_bytes);
  note("limits.unread_reply_timeout_ms", &Config::unread_reply_timeout);
  note("limits.hello_timeout_ms", &Config::hello_timeout);
  note("limits.slot_return_timeout_ms", &Config::slot_return_timeout);
  note("[[channel]] rules", &Config::rules);
  note("[[access]] publishers and subscribers", &Config::access);
  return plan;
}

}  // namespace shmbus::daemon
