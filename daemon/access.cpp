#include "access.hpp"

#include <pwd.h>
#include <unistd.h>

#include <vector>

#include "naming.hpp"
#include "shmbus/error.hpp"

namespace shmbus::daemon {

using protocol::GrantAccess;
using protocol::Role;

Access::Access(const Config& config, Registry& registry, Connections& connections)
    : config_(config),
      registry_(registry),
      connections_(connections),
      daemon_uid_(static_cast<uint32_t>(geteuid())) {}

bool Access::may_publish(const Client& c, uint32_t access_class) const {
  return config_.may_publish(access_class, c.identity, daemon_uid_);
}

bool Access::may_subscribe(const Client& c, uint32_t access_class) const {
  return config_.may_subscribe(access_class, c.identity, daemon_uid_);
}

std::string Access::who(const Client& c) const {
  std::vector<char> buffer(16384);
  passwd entry{};
  passwd* found = nullptr;
  std::string name;
  if (getpwuid_r(c.identity.uid, &entry, buffer.data(), buffer.size(), &found) == 0 && found)
    name =
        "user '" + std::string(found->pw_name) + "' (uid " + std::to_string(c.identity.uid) + ")";
  else
    name = "uid " + std::to_string(c.identity.uid);
  return name;
}

namespace {

std::string admitted(const std::vector<Principal>& list) {
  if (list.empty()) return "nobody";
  std::string out;
  for (const Principal& p : list) out += (out.empty() ? "" : ", ") + p.text;
  return out;
}

}  // namespace

void Access::check_publish(const Client& c, std::string_view channel) const {
  const uint32_t access_class = config_.access_class_of(channel);
  if (!may_publish(c, access_class)) refuse(c, channel, access_class, "publish");
}

void Access::check_subscribe(const Client& c, std::string_view channel) const {
  const uint32_t access_class = config_.access_class_of(channel);
  if (!may_subscribe(c, access_class)) refuse(c, channel, access_class, "subscribe");
}

void Access::refuse(const Client& c, std::string_view channel, uint32_t access_class,
                    const char* verb) const {
  const AccessRule& rule = config_.access[access_class - 1];
  const auto& admits = std::string_view(verb) == "publish" ? rule.publish : rule.subscribe;
  throw Error(Errc::kPermission,
              "NOPERM " + who(c) + " may not " + verb + " to channel " + printable(channel) +
                  ": access[" + std::to_string(access_class) + "] (pattern '" + rule.pattern +
                  "') in " + config_.source + " lets " + verb + ": " + admitted(admits));
}

void Access::grant(Client& c, uint32_t arena_id, GrantAccess access) {
  auto [it, fresh] = c.granted.emplace(arena_id, access);
  if (!fresh) return;  // a connection's role asks for each arena one way only
  Arena& arena = registry_.arena(arena_id);
  const int fd = access == GrantAccess::kReadWrite ? arena.read_write_fd() : arena.read_only_fd();
  connections_.send_grant(c, protocol::ArenaGrant{arena_id, access, arena.name()}, fd);
}

void Access::grant_basics(Client& c) {
  grant(c, layout::kControlArena, GrantAccess::kReadOnly);
  if (c.role != Role::kObserver) grant(c, layout::kDoorbellArena, GrantAccess::kReadWrite);
}

void Access::grant_ring(Client& c, const ChannelState& ch) {
  // A publisher writes frames and reads gating positions; a subscriber reads frames and
  // writes its position; an observer writes nothing.
  const bool publishes = c.role == Role::kPublisher;
  const bool subscribes = c.role == Role::kSubscriber;
  grant(c, ch.ring_arena, publishes ? GrantAccess::kReadWrite : GrantAccess::kReadOnly);
  grant(c, ch.readers.arena_id, subscribes ? GrantAccess::kReadWrite : GrantAccess::kReadOnly);
}

void Access::grant_readable(Client& c) {
  for (uint32_t id = layout::kFirstClassArena; id < registry_.arena_count(); ++id) {
    const Registry::ArenaInfo& info = registry_.arena_info(id);
    if ((info.kind == Registry::ArenaKind::kRings || info.kind == Registry::ArenaKind::kReaders) &&
        may_subscribe(c, info.access_class))
      grant(c, id, GrantAccess::kReadOnly);
  }
}

}  // namespace shmbus::daemon
