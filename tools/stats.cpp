// shmbus stats [--watch]: per-channel counters read from the bus's shared memory.
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <unordered_map>

#include "commands.hpp"
#include "shmbus/stats.hpp"
#include "shmbus/subscription.hpp"

namespace shmbus::cli {

namespace {

using Clock = std::chrono::steady_clock;

// Channel names can be up to 1024 bytes; past this width the cell is cut with "...".
constexpr size_t kMaxNameColumn = 48;

// The bus name for the header. StatsReader does not report it, so this repeats the
// library's documented fallback ($SHMBUS_BUS, then "default").
std::string display_bus_name(const ConnectOptions& connect) {
  if (!connect.bus.empty()) return connect.bus;
  const char* env = std::getenv("SHMBUS_BUS");
  return env != nullptr && *env != '\0' ? env : "default";
}

std::string format_number(const char* format, double value) {
  char text[48];
  std::snprintf(text, sizeof(text), format, value);
  return text;
}

std::string format_rate(double per_second) {
  return format_number(per_second < 10 ? "%.1f" : "%.0f", per_second);
}

std::string clock_time_now() {
  const time_t now = time(nullptr);
  tm local{};
  localtime_r(&now, &local);
  char text[16];
  std::strftime(text, sizeof(text), "%H:%M:%S", &local);
  return text;
}

std::string name_cell(std::string_view channel) {
  std::string cell = escaped(channel);
  if (cell.size() > kMaxNameColumn) cell = cell.substr(0, kMaxNameColumn - 3) + "...";
  return cell;
}

// A plain text table: the first column left-aligned, the others right-aligned.
std::string render_table(const std::vector<std::vector<std::string>>& rows) {
  if (rows.empty()) return {};
  std::vector<size_t> widths(rows.front().size(), 0);
  for (const auto& row : rows)
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      const std::string padding(widths[i] - row[i].size(), ' ');
      if (i == 0) {
        line += row[i] + padding;
      } else {
        line += "  " + padding + row[i];
      }
    }
    out += line + '\n';
  }
  return out;
}

Json channel_json(const ChannelStats& c) {
  Json j;
  j["channel"] = c.channel;
  j["published"] = c.published;
  j["payload_bytes"] = c.payload_bytes;
  j["subscribers"] = c.subscribers;
  j["receivers"] = c.receivers;
  j["lost"] = c.lost;
  j["delivered"] = c.delivered;
  j["last_publish_unix_ns"] = c.last_publish_unix_ns;
  j["ring_bytes"] = c.ring_bytes;
  j["max_message_bytes"] = c.max_message_bytes;
  j["back_pressure"] = c.back_pressure;
  j["repaired_frames"] = c.repaired_frames;
  return j;
}

// shmbus-bridge publishes its counters as one JSON object on "__shmbus:bridge:<host id>",
// a small ring that keeps the latest reports; the newest of each is summed up here.
constexpr std::string_view kBridgeStatsPattern = "__shmbus:bridge:*";

std::string bridge_section(const GlobalOptions& global, StatsReader& reader) {
  std::string out;
  for (const auto& c : reader.read(kBridgeStatsPattern).channels) {
    auto sub = Subscription::open(global.connect);
    sub.subscribe({c.channel}, StartAt::earliest());
    std::string latest;
    while (auto m = sub.next(std::chrono::nanoseconds(0))) latest = std::string(m->text());
    if (latest.empty()) continue;
    const Json j = Json::parse(latest, nullptr, false);
    if (j.is_discarded() || !j.is_object()) continue;
    uint64_t dropped = 0;
    std::string reasons;
    const Json by_reason = j.value("dropped", Json::object());
    for (const auto& [reason, n] : by_reason.items()) {
      if (!n.is_number_unsigned() || n.get<uint64_t>() == 0) continue;
      dropped += n.get<uint64_t>();
      reasons += (reasons.empty() ? " (" : ", ") + reason + " " + std::to_string(n.get<uint64_t>());
    }
    if (!reasons.empty()) reasons += ")";
    out += "bridge host " + std::to_string(j.value("host_id", 0)) + " -> " +
           j.value("redis", std::string("?")) + ": " +
           (j.value("connected", false) ? "connected" : "DISCONNECTED") + ", exported " +
           std::to_string(j.value("exported", uint64_t{0})) + ", imported " +
           std::to_string(j.value("imported", uint64_t{0})) + ", dropped " +
           std::to_string(dropped) + reasons + ", lost in transit " +
           std::to_string(j.value("lost_in_transit", uint64_t{0})) + ", reconnects " +
           std::to_string(j.value("reconnects", uint64_t{0})) + ", queue " +
           std::to_string(j.value("queue_depth", uint64_t{0})) + ", lag " +
           std::to_string(j.value("lag_last_us", uint64_t{0})) + " us (max " +
           std::to_string(j.value("lag_max_us", uint64_t{0})) + " us)\n";
  }
  return out;
}

int print_snapshot(const GlobalOptions& global, const StatsOptions& options) {
  StatsReader reader = StatsReader::open(global.connect);
  BusStats stats = reader.read(options.pattern);
  std::sort(stats.channels.begin(), stats.channels.end(),
            [](const ChannelStats& a, const ChannelStats& b) { return a.channel < b.channel; });
  if (global.style == OutputStyle::kJson) {
    Json channels = Json::array();
    for (const auto& c : stats.channels) channels.push_back(channel_json(c));
    write_stdout(json_line(channels));
    flush_stdout();
    return 0;
  }
  // One snapshot has no rates: those need two samples (see --watch).
  const uint64_t now = unix_now_ns();
  std::vector<std::vector<std::string>> rows = {
      {"CHANNEL", "PUBLISHED", "BYTES", "SUBS", "RECEIVERS", "LOST", "LAST PUBLISH", "RING"}};
  for (const auto& c : stats.channels)
    rows.push_back({name_cell(c.channel), std::to_string(c.published),
                    human_bytes(c.payload_bytes), std::to_string(c.subscribers),
                    std::to_string(c.receivers), std::to_string(c.lost),
                    age_since(c.last_publish_unix_ns, now), human_bytes(c.ring_bytes)});
  std::string out = "bus '" + display_bus_name(global.connect) + "', daemon pid " +
                    std::to_string(stats.daemon_pid) + ", " +
                    std::to_string(stats.channels.size()) + " channel(s)\n";
  out += stats.channels.empty() ? "(no channels)\n" : render_table(rows);
  if (options.pattern.empty()) out += bridge_section(global, reader);
  write_stdout(out);
  flush_stdout();
  return 0;
}

// One channel's activity between two samples.
struct ChannelActivity {
  const ChannelStats* now = nullptr;
  double messages_per_second = 0;
  double bytes_per_second = 0;
  uint64_t lost_in_interval = 0;
};

// Counters only grow while a channel lives; a smaller value means the channel was recreated
// (or, for `lost`, a subscriber left), and the interval then counts from zero.
uint64_t growth(uint64_t now, uint64_t before) { return now >= before ? now - before : now; }

class Watch {
 public:
  Watch(const GlobalOptions& global, const StatsOptions& options)
      : global_(global), options_(options), reader_(StatsReader::open(global.connect)) {}

  int run() {
    install_stop_handlers();
    take_sample();
    const auto interval = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(options_.interval_seconds));
    auto next_refresh = Clock::now() + interval;
    for (uint64_t refreshes = 0;
         options_.iterations == 0 || refreshes < options_.iterations; ++refreshes) {
      sleep_until_or_stopped(next_refresh);
      if (stop_requested()) break;
      next_refresh += interval;
      const Sample before = take_sample();
      const std::vector<ChannelActivity> activity = compare(before);
      write_stdout(global_.style == OutputStyle::kJson ? render_json(before, activity)
                                                       : render_screen(activity));
      flush_stdout();
    }
    return 0;
  }

 private:
  struct Sample {
    Clock::time_point at;
    BusStats stats;
  };

  // Replaces the current sample with a new one; returns the previous.
  Sample take_sample() {
    Sample previous = std::move(current_);
    current_.at = Clock::now();
    current_.stats = reader_.read(options_.pattern);
    return previous;
  }

  std::vector<ChannelActivity> compare(const Sample& before) const {
    std::unordered_map<std::string_view, const ChannelStats*> previous;
    for (const auto& c : before.stats.channels) previous.emplace(c.channel, &c);
    const double seconds = std::chrono::duration<double>(current_.at - before.at).count();
    std::vector<ChannelActivity> activity;
    for (const auto& c : current_.stats.channels) {
      static const ChannelStats kNew{};  // a channel created during the interval
      const auto found = previous.find(c.channel);
      const ChannelStats& old = found != previous.end() ? *found->second : kNew;
      ChannelActivity a;
      a.now = &c;
      if (seconds > 0) {
        a.messages_per_second = static_cast<double>(growth(c.published, old.published)) / seconds;
        a.bytes_per_second =
            static_cast<double>(growth(c.payload_bytes, old.payload_bytes)) / seconds;
      }
      a.lost_in_interval = c.lost >= old.lost ? c.lost - old.lost : 0;
      activity.push_back(a);
    }
    std::sort(activity.begin(), activity.end(),
              [](const ChannelActivity& a, const ChannelActivity& b) {
                if (a.messages_per_second != b.messages_per_second)
                  return a.messages_per_second > b.messages_per_second;
                return a.now->channel < b.now->channel;
              });
    return activity;
  }

  std::string render_screen(const std::vector<ChannelActivity>& activity) {
    double messages_per_second = 0, bytes_per_second = 0;
    uint64_t subscribers = 0, lost_in_interval = 0, lost = 0;
    for (const auto& a : activity) {
      messages_per_second += a.messages_per_second;
      bytes_per_second += a.bytes_per_second;
      subscribers += a.now->subscribers;
      lost_in_interval += a.lost_in_interval;
      lost += a.now->lost;
    }
    std::string out;
    if (global_.style == OutputStyle::kTty) {
      out += "\x1b[H\x1b[2J";  // home and clear: a top-like view in place
    } else if (printed_any_) {
      out += '\n';  // separates refreshes in a log
    }
    printed_any_ = true;
    out += "bus '" + display_bus_name(global_.connect) + "'  daemon pid " +
           std::to_string(current_.stats.daemon_pid) + "  " +
           std::to_string(activity.size()) + " channel(s)  " + format_rate(messages_per_second) +
           " msg/s  " + format_number("%.2f", bytes_per_second / 1e6) + " MB/s  " +
           std::to_string(subscribers) + " subs  lost +" + std::to_string(lost_in_interval) +
           "/" + std::to_string(lost) + "  " + clock_time_now() + '\n';
    const uint64_t now = unix_now_ns();
    std::vector<std::vector<std::string>> rows = {
        {"CHANNEL", "MSG/S", "MB/S", "SUBS", "LOST +INT/TOTAL", "PUBLISHED", "LAST"}};
    const size_t shown = std::min<size_t>(activity.size(), options_.top);
    for (size_t i = 0; i < shown; ++i) {
      const ChannelActivity& a = activity[i];
      rows.push_back({name_cell(a.now->channel), format_rate(a.messages_per_second),
                      format_number("%.2f", a.bytes_per_second / 1e6),
                      std::to_string(a.now->subscribers),
                      "+" + std::to_string(a.lost_in_interval) + "/" +
                          std::to_string(a.now->lost),
                      std::to_string(a.now->published),
                      age_since(a.now->last_publish_unix_ns, now)});
    }
    out += activity.empty() ? "(no channels)\n" : render_table(rows);
    if (shown < activity.size())
      out += "(" + std::to_string(activity.size() - shown) + " more channel(s); see --top)\n";
    return out;
  }

  std::string render_json(const Sample& before,
                          const std::vector<ChannelActivity>& activity) const {
    Json refresh;
    refresh["time_unix_ns"] = unix_now_ns();
    refresh["bus"] = display_bus_name(global_.connect);
    refresh["daemon_pid"] = current_.stats.daemon_pid;
    refresh["interval_seconds"] = std::chrono::duration<double>(current_.at - before.at).count();
    Json channels = Json::array();
    for (const auto& a : activity) {  // every channel: --top limits the screen only
      Json c = channel_json(*a.now);
      c["msg_per_sec"] = a.messages_per_second;
      c["bytes_per_sec"] = a.bytes_per_second;
      c["lost_in_interval"] = a.lost_in_interval;
      channels.push_back(std::move(c));
    }
    refresh["channels"] = std::move(channels);
    return json_line(refresh);
  }

  const GlobalOptions& global_;
  const StatsOptions& options_;
  StatsReader reader_;
  Sample current_;
  bool printed_any_ = false;
};

}  // namespace

int run_stats(const GlobalOptions& global, const StatsOptions& options) {
  if (!options.watch) return print_snapshot(global, options);
  return Watch(global, options).run();
}

}  // namespace shmbus::cli
