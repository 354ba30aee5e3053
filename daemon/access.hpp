// Access: who may use which channels, and what each client maps.
//
// Who: the [[access]] rules of shmbusd.toml (Config::may_publish / may_subscribe) against
// the credentials the kernel gives for the client's socket (SO_PEERCRED, SO_PEERGROUPS).
// What: a client maps only the arenas it is granted, as descriptors sent over its socket,
// read-only unless its role writes there: a subscriber maps rings read-only and its reader
// tables read-write, a publisher the reverse, an observer (stats) everything it may read
// read-only. Arenas hold one access class each, so a grant never gives more than the rules.
//
// Thread safety: the run() thread only.
#pragma once

#include <cstdint>
#include <string>

#include "client_state.hpp"
#include "config.hpp"
#include "connections.hpp"
#include "registry.hpp"

namespace shmbus::daemon {

class Access {
 public:
  Access(const Config& config, Registry& registry, Connections& connections);

  bool may_publish(const Client& c, uint32_t access_class) const;
  bool may_subscribe(const Client& c, uint32_t access_class) const;
  // Throws Error(kPermission) naming the user, the channel, the rule and who it admits.
  void check_publish(const Client& c, std::string_view channel) const;
  void check_subscribe(const Client& c, std::string_view channel) const;

  // Grants what every client of `c`'s role maps from the start: the control arena
  // (read-only) and, for publishers and subscribers, the doorbell arena.
  void grant_basics(Client& c);
  // Grants the arenas of `ch`'s ring and reader table as `c`'s role needs them; call before
  // sending `c` anything that locates the ring.
  void grant_ring(Client& c, const ChannelState& ch);
  // Grants, read-only, every ring and reader arena of the classes `c` may subscribe to.
  void grant_readable(Client& c);

 private:
  void grant(Client& c, uint32_t arena_id, protocol::GrantAccess access);
  // Throws the NOPERM error for `verb` ("publish", "subscribe") on `channel`.
  [[noreturn]] void refuse(const Client& c, std::string_view channel, uint32_t access_class,
                           const char* verb) const;
  std::string who(const Client& c) const;

  const Config& config_;  // the daemon's, outlives this
  Registry& registry_;
  Connections& connections_;
  const uint32_t daemon_uid_;
};

}  // namespace shmbus::daemon
