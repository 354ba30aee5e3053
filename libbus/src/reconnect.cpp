#include "reconnect.hpp"

#include <algorithm>
#include <exception>

namespace shmbus {

Reconnect::Reconnect(ReconnectOptions options)
    : options_(std::move(options)), random_(std::random_device{}()) {
  // At least a millisecond: a zero delay would make a waiting caller spin on connect().
  options_.first_delay =
      std::max<std::chrono::nanoseconds>(options_.first_delay, std::chrono::milliseconds(1));
  options_.max_delay = std::max(options_.max_delay, options_.first_delay);
}

void Reconnect::lost(const std::string& why, Clock::time_point now) {
  if (!stats_.connected) return;
  stats_.connected = false;
  ++stats_.losses;
  attempts_ = 0;
  delay_ = options_.first_delay;
  lost_at_ = now;
  next_try_ = now;
  LinkEvent event;
  event.kind = LinkEvent::Kind::kLost;
  event.detail = why;
  events_.push_back(std::move(event));
}

void Reconnect::failed(Clock::time_point now) {
  ++attempts_;
  // Equal jitter: between half and all of the delay, so clients that lost the same daemon
  // spread their tries without any of them waiting much less than the delay.
  const auto half = delay_ / 2;
  std::uniform_int_distribution<int64_t> jitter(0, std::max<int64_t>(half.count(), 0));
  next_try_ = now + half + std::chrono::nanoseconds(jitter(random_));
  delay_ = std::min(delay_ * 2, options_.max_delay);
}

void Reconnect::reconnected(const std::string& detail, bool new_daemon, Clock::time_point now) {
  stats_.connected = true;
  ++stats_.reconnects;
  LinkEvent event;
  event.kind = LinkEvent::Kind::kReconnected;
  event.detail = detail;
  event.attempts = attempts_ + 1;
  event.down_for = now - lost_at_;
  event.new_daemon = new_daemon;
  events_.push_back(std::move(event));
}

void Reconnect::deliver(const LinkEvent& event) const {
  if (!options_.on_event) return;
  try {
    options_.on_event(event);
  } catch (const std::exception&) {
    // A callback's failure is not the link's: it must not stop the reconnect.
  }
}

}  // namespace shmbus
