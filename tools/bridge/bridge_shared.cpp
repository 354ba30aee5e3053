#include "bridge_shared.hpp"

#include <sys/eventfd.h>

#include <cerrno>
#include <system_error>

namespace shmbus::bridge {

BridgeShared::BridgeShared(BridgeConfig config_in, std::shared_ptr<spdlog::logger> logger,
                           uint64_t nonce)
    : config(std::move(config_in)),
      log(logger ? std::move(logger) : spdlog::default_logger()),
      heartbeat_channel(config.redis_prefix + std::string(kStatsChannelPrefix) +
                        "heartbeat:" + std::to_string(config.host_id) + ":" +
                        std::to_string(getpid()) + ":" + std::to_string(nonce)),
      wake_fd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
  if (wake_fd < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
}

BridgeShared::~BridgeShared() {
  if (wake_fd >= 0) close(wake_fd);
}

}  // namespace shmbus::bridge
