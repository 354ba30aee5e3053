// shmbus pub / sub / psub.
#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <limits>
#include <optional>
#include <set>

#include "commands.hpp"
#include "shmbus/subscription.hpp"

namespace shmbus::cli {

namespace {

using Clock = std::chrono::steady_clock;

// Spreads messages evenly: message i is due at start + i / rate. Aiming at absolute times
// (not sleeping 1/rate after each message) keeps the average exact: a late wake-up is made
// up by the next messages going out at once.
class Pacer {
 public:
  explicit Pacer(double rate) : rate_(rate) {}

  void wait_turn(uint64_t index) const {
    if (rate_ <= 0) return;
    const auto due =
        start_ + std::chrono::duration_cast<Clock::duration>(
                     std::chrono::duration<double>(static_cast<double>(index) / rate_));
    if (Clock::now() < due) sleep_until_or_stopped(due);
  }

 private:
  double rate_;
  Clock::time_point start_ = Clock::now();
};

void print_publish_summary(uint64_t messages, double seconds, uint64_t receivers,
                           OutputStyle style) {
  const double per_second = seconds > 0 ? static_cast<double>(messages) / seconds : 0;
  if (style == OutputStyle::kJson) {
    Json summary;
    summary["messages"] = messages;
    summary["seconds"] = seconds;
    summary["msg_per_sec"] = per_second;
    summary["receivers"] = receivers;
    write_stdout(json_line(summary));
  } else {
    char line[160];
    std::snprintf(line, sizeof(line),
                  "%llu messages in %.3f s (%.0f msg/s), %llu receivers in total\n",
                  static_cast<unsigned long long>(messages), seconds, per_second,
                  static_cast<unsigned long long>(receivers));
    write_stdout(line);
  }
  flush_stdout();
}

StartAt parse_start(const std::string& from) {
  if (from == "latest") return StartAt::latest();
  if (from == "earliest") return StartAt::earliest();
  uint64_t first = 0;
  const auto [end, error] = std::from_chars(from.data(), from.data() + from.size(), first);
  if (error != std::errc() || end != from.data() + from.size())
    throw std::invalid_argument("--from takes earliest, latest or a sequence number, not '" + from +
                                "'");
  // --from N starts with message N itself; the library resumes *after* a given sequence.
  return first == 0 ? StartAt::earliest() : StartAt::after(first - 1);
}

void print_confirmations(const std::vector<std::string>& names, bool patterns, OutputStyle style) {
  if (style == OutputStyle::kJson) return;  // JSON output carries messages only
  if (style == OutputStyle::kTty) write_stdout("Reading messages... (press Ctrl-C to quit)\n");
  // Redis confirms each name with the connection's subscription count after it.
  std::set<std::string_view> held;
  for (const auto& name : names) {
    held.insert(name);
    const ReplyElement reply[] = {ReplyElement::bulk(patterns ? "psubscribe" : "subscribe"),
                                  ReplyElement::bulk(name), ReplyElement::integer(held.size())};
    write_stdout(format_array(reply, style));
  }
  flush_stdout();
}

void print_message(const Message& m, OutputStyle style) {
  const bool pmessage = !m.pattern.empty();
  if (style == OutputStyle::kJson) {
    Json j;
    j["type"] = pmessage ? "pmessage" : "message";
    // JSON strings are UTF-8: other bytes (legal in names as in payloads) go as base64.
    if (pmessage) put_bytes(j, "pattern", m.pattern);
    put_bytes(j, "channel", m.channel);
    put_bytes(j, "payload", m.text());
    j["sequence"] = m.sequence;
    j["publish_unix_ns"] = m.publish_unix_ns;
    j["lost_before"] = m.lost_before;
    write_stdout(json_line(j));
  } else {
    if (m.lost_before > 0) {
      // stderr, so that stdout keeps redis-cli's exact shape.
      std::fflush(stdout);
      std::fprintf(stderr,
                   "shmbus: missed %llu message(s) on %s before sequence %llu (this "
                   "subscriber fell a ring behind)\n",
                   static_cast<unsigned long long>(m.lost_before), quoted(m.channel).c_str(),
                   static_cast<unsigned long long>(m.sequence));
    }
    std::vector<ReplyElement> reply;
    reply.push_back(ReplyElement::bulk(pmessage ? "pmessage" : "message"));
    if (pmessage) reply.push_back(ReplyElement::bulk(m.pattern));
    reply.push_back(ReplyElement::bulk(m.channel));
    reply.push_back(ReplyElement::bulk(m.text()));
    write_stdout(format_array(reply, style));
  }
  flush_stdout();  // scripts read the output line by line, as it happens
}

}  // namespace

int run_pub(const GlobalOptions& global, const PubOptions& options) {
  const bool from_stdin = options.message == "-";
  Bus bus = Bus::connect(global.connect);
  Channel channel = bus.channel(options.channel);

  if (!from_stdin && options.count == 0 && options.rate <= 0) {
    const uint32_t receivers = channel.publish(options.message);
    write_stdout(global.style == OutputStyle::kJson ? json_line(Json(receivers))
                                                    : format_integer(receivers, global.style));
    flush_stdout();
    return 0;
  }

  install_stop_handlers();
  // --rate without --count keeps publishing until Ctrl-C.
  const uint64_t limit = options.count > 0 ? options.count : std::numeric_limits<uint64_t>::max();
  const Pacer pacer(options.rate);
  const auto start = Clock::now();
  uint64_t sent = 0;
  uint64_t receivers = 0;
  if (from_stdin) {
    std::string line;
    while (!stop_requested() && std::getline(std::cin, line)) {
      pacer.wait_turn(sent);
      if (stop_requested()) break;
      receivers += channel.publish(line);
      ++sent;
    }
  } else {
    while (sent < limit && !stop_requested()) {
      pacer.wait_turn(sent);
      if (stop_requested()) break;
      receivers += channel.publish(options.message);
      ++sent;
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  print_publish_summary(sent, seconds, receivers, global.style);
  if (!from_stdin && options.count > 0 && sent < options.count) {
    std::fprintf(stderr, "shmbus: interrupted after %llu of %llu messages\n",
                 static_cast<unsigned long long>(sent),
                 static_cast<unsigned long long>(options.count));
    return 1;
  }
  return 0;
}

int run_sub(const GlobalOptions& global, const SubOptions& options) {
  const StartAt start = options.patterns ? StartAt::latest() : parse_start(options.from);
  install_stop_handlers();
  // Across a daemon restart the subscription reconnects and subscribes again by itself;
  // say so once, on stderr, so stdout stays the messages alone.
  ConnectOptions connect = global.connect;
  connect.reconnect.on_event = [](const LinkEvent& event) {
    if (event.kind != LinkEvent::Kind::kReconnected) return;
    std::fprintf(
        stderr, "shmbus: reconnected after %.0f ms to %s%s\n",
        std::chrono::duration<double, std::milli>(event.down_for).count(), event.detail.c_str(),
        event.new_daemon ? " (a restarted daemon: messages published meanwhile may be missing)"
                         : "");
  };
  Subscription subscription = Subscription::open(connect);
  if (options.patterns)
    subscription.psubscribe(options.names);
  else
    subscription.subscribe(options.names, start);
  print_confirmations(options.names, options.patterns, global.style);

  // next() is called with a short timeout, not forever: a signal does not interrupt its
  // futex wait, so the loop must come back regularly to see the stop flag.
  constexpr auto kStopCheckInterval = std::chrono::milliseconds(200);
  const auto idle_limit = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(options.timeout_seconds));
  auto idle_deadline = Clock::now() + idle_limit;
  uint64_t received = 0;
  while (!stop_requested()) {
    std::chrono::nanoseconds wait = kStopCheckInterval;
    if (options.timeout_seconds > 0) {
      const auto now = Clock::now();
      if (now >= idle_deadline) break;
      wait = std::min<std::chrono::nanoseconds>(wait, idle_deadline - now);
    }
    const std::optional<Message> message = subscription.next(wait);
    if (!message) continue;
    print_message(*message, global.style);
    if (options.count > 0 && ++received >= options.count) break;
    idle_deadline = Clock::now() + idle_limit;
  }
  return 0;
}

}  // namespace shmbus::cli
