// Names shared by the daemon and its clients: which socket a bus answers on, what its
// shared-memory segments are called, and what a valid bus or channel name is.
//
// Thread safety: pure functions (resolve_endpoint reads the environment).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "shmbus/bus.hpp"

namespace shmbus {

inline constexpr std::string_view kDefaultBus = "default";
inline constexpr std::string_view kDefaultRuntimeDir = "/run/shmbus";

struct Endpoint {
  std::string bus;
  std::string socket_path;
  std::string client_name;  // for the daemon's log; the program name if not given
};

// Fills what `options` leaves empty: bus from $SHMBUS_BUS or "default", socket from
// $SHMBUS_SOCKET or /run/shmbus/<bus>.sock. Throws Error(kInvalidArgument) on a bad bus
// name or a socket path longer than a sockaddr_un holds.
Endpoint resolve_endpoint(const ConnectOptions& options);

// Bus names become parts of file names: 1..64 bytes of [A-Za-z0-9_.-], not starting with '.'.
void validate_bus_name(std::string_view bus);
// Channel names: 1..1024 bytes, any bytes. Throws Error(kInvalidArgument) naming the limit.
void validate_channel_name(std::string_view channel);
void validate_pattern(std::string_view pattern);

// Lock file that one daemon per bus holds: "<bus>.lock" in the directory of its control
// socket (the daemon's own directory: /run/shmbus under systemd).
std::string bus_lock_path(std::string_view bus, std::string_view socket_path);

// Printable form of a binary-safe name for messages and logs: quotes, escapes bytes outside
// printable ASCII as \xNN, and cuts after `max_bytes` bytes with "...".
std::string printable(std::string_view name, std::size_t max_bytes = 128);

// "64 KiB", "1 GiB", "1000 B": exact units only, so a limit reads back as configured.
std::string human_bytes(uint64_t bytes);

}  // namespace shmbus
