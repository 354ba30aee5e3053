#include "byte_size.hpp"

#include <limits>

namespace shmbus {
namespace {

constexpr uint64_t kKiB = uint64_t{1} << 10;
constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

}  // namespace

std::optional<uint64_t> parse_byte_size(std::string_view text, bool& overflow) {
  overflow = false;
  size_t i = 0;
  uint64_t number = 0;
  for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
    const uint64_t digit = static_cast<uint64_t>(text[i] - '0');
    if (number > (std::numeric_limits<uint64_t>::max() - digit) / 10) overflow = true;
    number = number * 10 + digit;
  }
  if (i == 0) return std::nullopt;
  std::string_view unit = text.substr(i);
  if (!unit.empty() && unit.front() == ' ') unit.remove_prefix(1);
  uint64_t scale = 0;
  if (unit == "B")
    scale = 1;
  else if (unit == "KiB")
    scale = kKiB;
  else if (unit == "MiB")
    scale = kMiB;
  else if (unit == "GiB")
    scale = kGiB;
  else
    return std::nullopt;
  if (overflow || number > std::numeric_limits<uint64_t>::max() / scale) {
    overflow = true;
    return std::nullopt;
  }
  return number * scale;
}

}  // namespace shmbus
