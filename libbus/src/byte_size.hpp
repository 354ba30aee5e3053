// Byte sizes as configuration files write them ("512B", "64KiB", "1 MiB"), shared by
// shmbusd.toml and shmbus-bridge.toml so both accept the same forms.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace shmbus {

// Digits, at most one space, a case-sensitive binary unit (B, KiB, MiB, GiB). nullopt for
// anything else; `overflow` tells a well-formed but too large value apart.
std::optional<uint64_t> parse_byte_size(std::string_view text, bool& overflow);

}  // namespace shmbus
