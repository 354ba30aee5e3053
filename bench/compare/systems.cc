// The registry: which systems this build compares, and why a peer is missing. meson defines
// SHMBUS_COMPARE_<PEER> for each peer it found and SHMBUS_COMPARE_<PEER>_MISSING (the reason)
// for each it did not.
#include "systems.hpp"

namespace shmbus::compare {
namespace {

// A peer meson did not find: listed all the same, so the report says why it is absent.
// (Unused in a build that found every peer.)
[[maybe_unused]] System missing(std::string id, std::string label, std::string reason) {
  System s;
  s.id = std::move(id);
  s.label = std::move(label);
  s.not_built = std::move(reason);
  return s;
}

}  // namespace

const std::vector<System>& all_systems() {
  static const std::vector<System> systems = {
      shmbus_system(),
#ifdef SHMBUS_COMPARE_ICEORYX
      iceoryx_system(),
#else
      missing("iceoryx", "iceoryx", SHMBUS_COMPARE_ICEORYX_MISSING),
#endif
#ifdef SHMBUS_COMPARE_REDIS
      redis_system(),
#else
      missing("redis", "Redis", SHMBUS_COMPARE_REDIS_MISSING),
#endif
#ifdef SHMBUS_COMPARE_ZEROMQ
      zeromq_system(),
#else
      missing("zeromq", "ZeroMQ", SHMBUS_COMPARE_ZEROMQ_MISSING),
#endif
      uds_system(),
  };
  return systems;
}

const System* find_system(const std::string& id) {
  for (const auto& s : all_systems())
    if (s.id == id) return &s;
  return nullptr;
}

}  // namespace shmbus::compare
