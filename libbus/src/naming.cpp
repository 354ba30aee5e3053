#include "naming.hpp"

#include <sys/un.h>

#include <cstdlib>

#include "layout.hpp"
#include "protocol.hpp"

namespace shmbus {

static_assert(kMaxChannelNameBytes == layout::kMaxChannelName);

Endpoint resolve_endpoint(const ConnectOptions& options) {
  Endpoint e;
  e.bus = options.bus;
  if (e.bus.empty()) {
    const char* env = std::getenv("SHMBUS_BUS");
    e.bus = env != nullptr && *env != '\0' ? env : std::string(kDefaultBus);
  }
  validate_bus_name(e.bus);
  e.client_name = options.client_name;
  e.socket_path = options.socket_path;
  if (e.socket_path.empty()) {
    const char* env = std::getenv("SHMBUS_SOCKET");
    e.socket_path = env != nullptr && *env != '\0'
                        ? std::string(env)
                        : std::string(kDefaultRuntimeDir) + "/" + e.bus + ".sock";
  }
  if (e.socket_path.size() >= sizeof(sockaddr_un::sun_path))
    throw Error(Errc::kInvalidArgument,
                "socket path '" + e.socket_path + "' is " + std::to_string(e.socket_path.size()) +
                    " bytes; Unix sockets allow at most " +
                    std::to_string(sizeof(sockaddr_un::sun_path) - 1) + "; choose a shorter path");
  return e;
}

void validate_bus_name(std::string_view bus) {
  bool ok = !bus.empty() && bus.size() <= 64 && bus.front() != '.';
  for (char c : bus)
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '_' || c == '-' || c == '.');
  if (!ok)
    throw Error(Errc::kInvalidArgument,
                "invalid bus name " + printable(bus) +
                    ": use 1 to 64 characters of A-Z a-z 0-9 _ - . (not starting with '.')");
}

void validate_channel_name(std::string_view channel) {
  if (channel.empty())
    throw Error(Errc::kInvalidArgument, "channel name is empty; names are 1 to 1024 bytes");
  if (channel.size() > kMaxChannelNameBytes)
    throw Error(Errc::kInvalidArgument,
                "channel name " + printable(channel, 32) + " is " + std::to_string(channel.size()) +
                    " bytes; the limit is " + std::to_string(kMaxChannelNameBytes) + " bytes");
}

void validate_pattern(std::string_view pattern) {
  if (pattern.empty())
    throw Error(Errc::kInvalidArgument, "pattern is empty; patterns are 1 to 1024 bytes");
  if (pattern.size() > protocol::kMaxPatternBytes)
    throw Error(Errc::kInvalidArgument, "pattern " + printable(pattern, 32) + " is " +
                                            std::to_string(pattern.size()) +
                                            " bytes; the limit is " +
                                            std::to_string(protocol::kMaxPatternBytes) + " bytes");
}

std::string bus_lock_path(std::string_view bus, std::string_view socket_path) {
  const size_t slash = socket_path.rfind('/');
  const std::string dir =
      slash == std::string_view::npos ? "." : std::string(socket_path.substr(0, slash));
  return (dir.empty() ? std::string("/") : dir + "/") + std::string(bus) + ".lock";
}

std::string printable(std::string_view name, std::size_t max_bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "'";
  for (std::size_t i = 0; i < name.size() && i < max_bytes; ++i) {
    const auto c = static_cast<unsigned char>(name[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  out += name.size() > max_bytes ? "'..." : "'";
  return out;
}

std::string human_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  uint64_t value = bytes;
  while (value >= 1024 && value % 1024 == 0 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  return std::to_string(value) + " " + units[unit];
}

}  // namespace shmbus
