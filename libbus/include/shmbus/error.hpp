// Errors of libshmbus.
//
// Control operations (connect, subscribe, opening a channel) throw shmbus::Error; the hot
// path (Channel::try_publish, Subscription::next) returns values instead. Every message
// names the limit or the resource involved and the way out, e.g.
//   message of 1048576 bytes exceeds channel 'video:cam1' limit of 32736 bytes (ring 64 KiB);
//   raise it with a [[channel]] rule in shmbusd.toml
//
// Thread safety: plain values.
#pragma once

#include <stdexcept>
#include <string>

// What libshmbus.so exports: the classes below marked SHMBUS_CXX_API and the C API of
// shmbus.h. Everything else in the library is compiled hidden (-fvisibility=hidden), so a
// program cannot come to depend on internals.
#if defined(__GNUC__)
#define SHMBUS_CXX_API __attribute__((visibility("default")))
#else
#define SHMBUS_CXX_API
#endif

namespace shmbus {

enum class Errc {
  kNoDaemon = 1,     // nothing answers on the control socket
  kDaemonGone,       // the daemon closed the connection
  kProtocol,         // the peer sent something this version cannot read
  kInvalidArgument,  // a bad channel name, pattern, bus name or option
  kTooLarge,         // a message larger than the channel's limit
  kLimit,            // a daemon limit (memory, channels, subscriptions) refused it
  kWouldBlock,       // a back-pressure channel is full and no wait was allowed
  kTimedOut,         // a back-pressure channel stayed full for the whole wait
  kSystem,           // a system call failed (errno in the message)
  kCorrupt,          // a channel's shared memory contradicts itself: some process wrote
                     // garbage into it (the daemon replaces such a ring)
  kPermission,       // an [[access]] rule of the daemon does not let this user do that
};

class SHMBUS_CXX_API Error : public std::runtime_error {
 public:
  Error(Errc code, const std::string& message) : std::runtime_error(message), code_(code) {}
  Errc code() const noexcept { return code_; }

 private:
  Errc code_;
};

}  // namespace shmbus
