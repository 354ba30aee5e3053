#include "echo_ledger.hpp"

#include <iterator>

namespace shmbus::bridge {

uint64_t payload_hash(std::string_view s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ULL;
  return h ^ s.size();
}

void EchoLedger::remember(std::string_view channel, std::string_view payload,
                          uint64_t heartbeats_sent) {
  auto it = pending_.find(channel);
  if (it == pending_.end()) it = pending_.emplace(std::string(channel), std::deque<Entry>()).first;
  it->second.push_back({payload_hash(payload), heartbeats_sent});
}

bool EchoLedger::recognise(std::string_view channel, std::string_view payload) {
  auto it = pending_.find(channel);
  if (it == pending_.end()) return false;
  const uint64_t hash = payload_hash(payload);
  auto& pending = it->second;
  for (size_t i = 0; i < pending.size(); ++i) {
    if (pending[i].hash != hash) continue;
    // An emptied list stays until the next heartbeat sweeps it: the next raw export on the
    // channel reuses it instead of a new key string and deque.
    pending.erase(pending.begin(), pending.begin() + static_cast<std::ptrdiff_t>(i) + 1);
    return true;
  }
  return false;
}

void EchoLedger::heartbeat_returned(uint64_t n) {
  for (auto it = pending_.begin(); it != pending_.end();) {
    auto& pending = it->second;
    while (!pending.empty() && pending.front().heartbeat < n) pending.pop_front();
    it = pending.empty() ? pending_.erase(it) : std::next(it);
  }
}

void EchoLedger::forget_channels(const std::function<bool(const std::string&)>& gone) {
  std::erase_if(pending_, [&](const auto& entry) { return gone(entry.first); });
}

}  // namespace shmbus::bridge
