#include "local_imports.hpp"

#include <chrono>

namespace shmbus::bridge {

using namespace std::chrono_literals;

namespace {

uint64_t unix_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

}  // namespace

LocalImports::LocalImports(BridgeShared& shared, const ConnectOptions& local,
                           std::function<void()> before_reset)
    : shared_(shared), bus_(Bus::connect(local)), before_reset_(std::move(before_reset)) {}

Channel* LocalImports::channel(const std::string& name) {
  auto it = channels_.find(name);
  if (it != channels_.end()) return &it->second;
  if (channels_.size() >= kMaxOpenImportChannels) {
    before_reset_();
    channels_.clear();
  }
  try {
    return &channels_.emplace(name, bus_.channel(name)).first->second;
  } catch (const Error& e) {
    if (e.code() == Errc::kDaemonGone || e.code() == Errc::kNoDaemon) throw;
    shared_.drop(Drop::kLocalRefused, 1, e.what());
    return nullptr;
  }
}

PublishStatus LocalImports::publish(Channel& channel, std::span<const std::byte> payload,
                                    uint16_t origin, bool can_retry) {
  const PublishResult r = channel.try_publish(payload, 0ns, origin);
  if (r.ok()) {
    shared_.counters.imported.fetch_add(1, std::memory_order_relaxed);
  } else if (r.status == PublishStatus::kWouldBlock && can_retry) {
    // the caller reads it again
  } else if (r.status == PublishStatus::kTooLarge) {
    shared_.drop(Drop::kOversized, 1, [&] {
      return std::to_string(payload.size()) + " bytes exceed local channel '" +
             channel.name().substr(0, 128) + "' limit of " +
             std::to_string(channel.max_message_bytes()) +
             "; raise it with a [[channel]] rule in shmbusd.toml";
    });
  } else {
    shared_.drop(Drop::kLocalRefused, 1, [&] {
      return "back-pressure channel '" + channel.name().substr(0, 128) +
             "' is full; the bridge never waits";
    });
  }
  return r.status;
}

void LocalImports::note_lag(uint64_t publish_unix_ns) {
  const uint64_t now = unix_ns();
  const uint64_t lag = now > publish_unix_ns ? now - publish_unix_ns : 0;
  Counters& counters = shared_.counters;
  counters.lag_last.store(lag, std::memory_order_relaxed);
  uint64_t max = counters.lag_max.load(std::memory_order_relaxed);
  while (lag > max && !counters.lag_max.compare_exchange_weak(max, lag)) {
  }
}

}  // namespace shmbus::bridge
