// Maps keyed by std::string that are looked up by std::string_view without building a
// string: per-message lookups by channel name (the publish cache, the bridge's routes and
// echo ledger) then cost no allocation.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace shmbus {

struct StringHash {
  using is_transparent = void;  // find() by string_view or const char*
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

template <typename Value>
using StringMap = std::unordered_map<std::string, Value, StringHash, std::equal_to<>>;

}  // namespace shmbus
