#include "key_slot.hpp"

#include <array>

namespace shmbus::bridge {

namespace {

// One table entry per leading byte: the CRC of that byte shifted through the register,
// so the loop below costs a lookup per byte instead of eight conditional shifts.
constexpr std::array<uint16_t, 256> make_table() {
  std::array<uint16_t, 256> table{};
  for (uint32_t byte = 0; byte < 256; ++byte) {
    uint16_t crc = static_cast<uint16_t>(byte << 8);
    for (int bit = 0; bit < 8; ++bit)
      crc = static_cast<uint16_t>((crc & 0x8000) != 0 ? (crc << 1) ^ 0x1021 : crc << 1);
    table[byte] = crc;
  }
  return table;
}
constexpr std::array<uint16_t, 256> kTable = make_table();

}  // namespace

uint16_t crc16_xmodem(std::string_view bytes) {
  uint16_t crc = 0;
  for (const char c : bytes)
    crc = static_cast<uint16_t>((crc << 8) ^ kTable[((crc >> 8) ^ static_cast<uint8_t>(c)) & 0xff]);
  return crc;
}

std::string_view hash_tag_part(std::string_view name) {
  const size_t open = name.find('{');
  if (open == std::string_view::npos) return name;
  const size_t close = name.find('}', open + 1);
  // No closing brace, or "{}": the whole name is hashed.
  if (close == std::string_view::npos || close == open + 1) return name;
  return name.substr(open + 1, close - open - 1);
}

uint16_t key_slot(std::string_view name) {
  return static_cast<uint16_t>(crc16_xmodem(hash_tag_part(name)) % kClusterSlots);
}

}  // namespace shmbus::bridge
