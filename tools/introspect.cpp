// shmbus channels / numsub / numpat / ping: Redis PUBSUB and PING.
#include <chrono>
#include <cstdio>

#include "commands.hpp"

namespace shmbus::cli {

int run_channels(const GlobalOptions& global, const std::string& pattern) {
  Bus bus = Bus::connect(global.connect);
  const std::vector<std::string> names = bus.channels(pattern);
  if (global.style == OutputStyle::kJson) {
    write_stdout(json_line(Json(names)));
  } else {
    std::vector<ReplyElement> reply;
    for (const auto& name : names) reply.push_back(ReplyElement::bulk(name));
    write_stdout(format_array(reply, global.style));
  }
  flush_stdout();
  return 0;
}

int run_numsub(const GlobalOptions& global, const std::vector<std::string>& channels) {
  Bus bus = Bus::connect(global.connect);
  const std::vector<NumSub> counts = bus.numsub(channels);
  if (global.style == OutputStyle::kJson) {
    Json object = Json::object();
    for (const auto& c : counts) object[c.channel] = c.subscribers;
    write_stdout(json_line(object));
  } else {
    std::vector<ReplyElement> reply;
    for (const auto& c : counts) {
      reply.push_back(ReplyElement::bulk(c.channel));
      reply.push_back(ReplyElement::integer(c.subscribers));
    }
    write_stdout(format_array(reply, global.style));
  }
  flush_stdout();
  return 0;
}

int run_numpat(const GlobalOptions& global) {
  Bus bus = Bus::connect(global.connect);
  const uint64_t patterns = bus.numpat();
  write_stdout(global.style == OutputStyle::kJson ? json_line(Json(patterns))
                                                  : format_integer(patterns, global.style));
  flush_stdout();
  return 0;
}

int run_ping(const GlobalOptions& global) {
  Bus bus = Bus::connect(global.connect);
  const std::chrono::nanoseconds round_trip = bus.ping();
  const double micros = static_cast<double>(round_trip.count()) / 1000.0;
  if (global.style == OutputStyle::kJson) {
    Json reply;
    reply["pong"] = true;
    reply["rtt_us"] = micros;
    write_stdout(json_line(reply));
  } else {
    char line[64];
    std::snprintf(line, sizeof(line), "PONG (%.0f us)\n", micros);
    write_stdout(line);
  }
  flush_stdout();
  return 0;
}

}  // namespace shmbus::cli
