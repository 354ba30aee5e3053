// Redis Cluster's hash slot of a key or shard channel: CRC16 (XMODEM: polynomial 0x1021,
// initial value 0, no reflection) of the name modulo 16384, where a name holding a
// non-empty `{...}` hashes only what is between its first `{` and the next `}`.
// The rule and the polynomial are the cluster specification's
// (https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/, "Hash tags");
// tests/cluster_units_test.cc checks names against a real server's CLUSTER KEYSLOT.
#pragma once

#include <cstdint>
#include <string_view>

namespace shmbus::bridge {

inline constexpr uint32_t kClusterSlots = 16384;

// CRC16-XMODEM of `bytes`.
uint16_t crc16_xmodem(std::string_view bytes);

// What the slot is computed from: the hash tag if `name` has a non-empty one, else `name`.
std::string_view hash_tag_part(std::string_view name);

// The slot (0..16383) Redis Cluster assigns `name`.
uint16_t key_slot(std::string_view name);

}  // namespace shmbus::bridge
