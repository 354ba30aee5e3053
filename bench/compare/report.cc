#include "report.hpp"

#include <algorithm>
#include <cmath>
#include <optional>

#include "bench_support.hpp"
#include "naming.hpp"

namespace shmbus::compare {
namespace {

using bench::with_commas;

struct Stat {
  double min = 0, median = 0, max = 0;
  size_t runs = 0;
};

const std::vector<Outcome>* outcomes_of(const Report& r, const std::string& key,
                                        const std::string& system) {
  const auto cell = r.outcomes.find(key);
  if (cell == r.outcomes.end()) return nullptr;
  const auto it = cell->second.find(system);
  return it == cell->second.end() ? nullptr : &it->second;
}

std::optional<Stat> stat_of(const std::vector<Outcome>* outcomes, const std::string& metric) {
  if (outcomes == nullptr) return std::nullopt;
  std::vector<double> values;
  for (const auto& o : *outcomes)
    if (o.ok && o.metrics.contains(metric)) values.push_back(o.metrics[metric].get<double>());
  if (values.empty()) return std::nullopt;
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  Stat s;
  s.min = values.front();
  s.max = values.back();
  s.median = n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
  s.runs = n;
  return s;
}

std::string printf_string(const char* format, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, format, value);
  return buffer;
}

enum class Unit { kNanoseconds, kRate, kCount };

std::string format(double v, Unit unit) {
  switch (unit) {
    case Unit::kNanoseconds:
      if (v < 1e3) return printf_string("%.0f ns", v);
      if (v < 1e4) return printf_string("%.2f µs", v / 1e3);
      if (v < 1e6) return printf_string("%.1f µs", v / 1e3);
      return printf_string("%.2f ms", v / 1e6);
    case Unit::kRate:
      if (v >= 1e6) return printf_string("%.2f M/s", v / 1e6);
      if (v >= 1e3) return printf_string("%.1f K/s", v / 1e3);
      return printf_string("%.0f /s", v);
    case Unit::kCount:
      return with_commas(static_cast<uint64_t>(std::llround(v)));
  }
  return {};
}

std::string format_ratio(double r) {
  if (r <= 0) return "0×";
  if (r < 0.1) {  // two significant digits, never an exponent: 0.0081×, 0.00012×
    const int decimals = static_cast<int>(std::floor(-std::log10(r))) + 2;
    char buffer[64];
    std::snprintf(buffer, sizeof buffer, "%.*f×", decimals, r);
    return buffer;
  }
  if (r < 10) return printf_string("%.2f×", r);
  return with_commas(static_cast<uint64_t>(std::llround(r))) + "×";
}

// One line of a table: a figure of one cell, for every system.
struct Row {
  std::string label;
  std::string key;
  std::string metric;
  Unit unit = Unit::kNanoseconds;
  bool lower_is_better = true;
  bool ratio = true;  // print shmbus's ratio to each peer
};

std::vector<Row> latency_rows(const Report& r, const std::string& mode) {
  std::vector<Row> rows;
  for (const auto& cell : r.cells) {
    if (cell.workload != Workload::kLatency || cell.mode != mode) continue;
    for (const auto& [name, metric] : {std::pair{"p50", "p50_ns"}, std::pair{"p90", "p90_ns"},
                                       std::pair{"p99", "p99_ns"}, std::pair{"p99.9", "p999_ns"}})
      rows.push_back({human_bytes(cell.bytes) + " " + name, cell.key, metric});
  }
  return rows;
}

std::string fan_label(const Cell& cell) {
  return std::to_string(cell.publishers) + " → " + std::to_string(cell.subscribers) + ", " +
         human_bytes(cell.bytes);
}

std::vector<Row> throughput_rows(const Report& r, bool losses) {
  std::vector<Row> rows;
  for (const auto& cell : r.cells) {
    if (cell.workload != Workload::kThroughput) continue;
    if (losses)
      rows.push_back({fan_label(cell), cell.key, "lost", Unit::kCount, true, false});
    else
      rows.push_back({fan_label(cell), cell.key, "deliveries_per_s", Unit::kRate, false});
  }
  return rows;
}

std::vector<Row> pattern_rows(const Report& r) {
  std::vector<Row> rows;
  for (const auto& cell : r.cells)
    if (cell.workload == Workload::kPatterns)
      rows.push_back({with_commas(cell.patterns) + " patterns", cell.key, "publishes_per_s",
                      Unit::kRate, false});
  return rows;
}

std::vector<Row> late_rows(const Report& r) {
  std::vector<Row> rows;
  for (const auto& cell : r.cells)
    if (cell.workload == Workload::kLate)
      rows.push_back({with_commas(cell.messages) + " published, then subscribed", cell.key,
                      "delivered", Unit::kCount, false, false});
  return rows;
}

std::vector<const SystemStatus*> columns(const Report& r) {
  std::vector<const SystemStatus*> out;
  for (const auto& s : r.systems)
    if (s.ran) out.push_back(&s);
  return out;
}

std::string first_error(const std::vector<Outcome>* outcomes) {
  if (outcomes)
    for (const auto& o : *outcomes)
      if (!o.ok) return o.error;
  return {};
}

class TablePrinter {
 public:
  TablePrinter(const Report& r, std::FILE* out) : r_(r), out_(out) {}

  std::string label_of(const std::string& key) const {
    for (const auto& cell : r_.cells)
      if (cell.key == key) return cell.label;
    return key;
  }

  // `absent`: what a system without outcomes shows (it does not support the workload).
  void print(const std::string& title, const std::string& explanation, const std::string& corner,
             const std::vector<Row>& rows, const std::string& absent = "—") {
    if (rows.empty()) return;
    std::vector<std::string> notes;
    std::fprintf(out_, "\n## %s\n\n%s\n\n| %s |", title.c_str(), explanation.c_str(), corner.c_str());
    const auto systems = columns(r_);
    for (const auto* s : systems) std::fprintf(out_, " %s |", s->system->label.c_str());
    std::fprintf(out_, "\n|---|");
    for (size_t i = 0; i < systems.size(); ++i) std::fprintf(out_, "---|");
    std::fprintf(out_, "\n");
    for (const auto& row : rows) {
      std::fprintf(out_, "| %s |", row.label.c_str());
      const auto shmbus = stat_of(outcomes_of(r_, row.key, "shmbus"), row.metric);
      for (const auto* s : systems) {
        const auto* outcomes = outcomes_of(r_, row.key, s->system->id);
        const auto stat = stat_of(outcomes, row.metric);
        std::string text;
        if (stat) {
          text = format(stat->median, row.unit);
          if (stat->max > stat->min)
            text += " [" + format(stat->min, row.unit) + "–" + format(stat->max, row.unit) + "]";
          if (row.ratio && s->system->id != "shmbus" && shmbus && stat->median > 0)
            text += " (" + format_ratio(shmbus->median / stat->median) + ")";
          if (outcomes && stat->runs < outcomes->size())
            text += " (" + std::to_string(stat->runs) + " of " + std::to_string(outcomes->size()) + " runs)";
        } else if (outcomes && !outcomes->empty()) {
          // One note per system and cell, however many of its rows failed.
          const std::string note = s->system->label + ", " + label_of(row.key) + ": " + first_error(outcomes);
          auto it = std::find(notes.begin(), notes.end(), note);
          if (it == notes.end()) it = notes.insert(notes.end(), note);
          text = "failed [" + std::to_string(it - notes.begin() + 1) + "]";
        } else {
          text = absent;
        }
        std::fprintf(out_, " %s |", text.c_str());
      }
      std::fprintf(out_, "\n");
    }
    for (size_t i = 0; i < notes.size(); ++i)
      std::fprintf(out_, "\n[%zu] %s\n", i + 1, notes[i].c_str());
  }

 private:
  const Report& r_;
  std::FILE* out_;
};

// ---- goals ------------------------------------------------------------------------------------

struct GoalCheck {
  std::string goal;
  std::vector<std::string> misses;
  std::vector<std::string> unchecked;
  size_t checked = 0;
};

// shmbus / peer against `limit` on every row (at most: lower is better; at least: higher).
GoalCheck check_ratio(const Report& r, std::string goal, const std::vector<Row>& rows,
                      const std::string& peer, double limit, bool at_most) {
  GoalCheck g{std::move(goal), {}, {}, 0};
  for (const auto& row : rows) {
    const auto s = stat_of(outcomes_of(r, row.key, "shmbus"), row.metric);
    const auto* peer_outcomes = outcomes_of(r, row.key, peer);
    if (!peer_outcomes) continue;  // the peer did not run: nothing to check against
    const auto p = stat_of(peer_outcomes, row.metric);
    if (!s || !p || p->median <= 0) {
      g.unchecked.push_back(row.label);
      continue;
    }
    ++g.checked;
    const double ratio = s->median / p->median;
    if (at_most ? ratio > limit : ratio < limit)
      g.misses.push_back(row.label + " " + format_ratio(ratio));
  }
  return g;
}

// shmbus better than every peer that has a figure, on every row of every workload.
GoalCheck check_ahead(const Report& r, const std::vector<std::pair<std::string, std::vector<Row>>>& tables) {
  GoalCheck g{"shmbus ahead of every peer on every workload", {}, {}, 0};
  for (const auto& [table, rows] : tables)
    for (const auto& row : rows) {
      const auto s = stat_of(outcomes_of(r, row.key, "shmbus"), row.metric);
      for (const auto* peer : columns(r)) {
        if (peer->system->id == "shmbus") continue;
        const auto p = stat_of(outcomes_of(r, row.key, peer->system->id), row.metric);
        if (!p) continue;
        if (!s) {
          g.unchecked.push_back(table + " " + row.label);
          continue;
        }
        ++g.checked;
        const bool ahead = row.lower_is_better ? s->median < p->median
                           : row.ratio        ? s->median > p->median
                                              : s->median >= p->median;  // counts: not behind
        if (!ahead)
          g.misses.push_back(table + " " + row.label + ": " + peer->system->label + " " +
                             format(p->median, row.unit) + " vs " + format(s->median, row.unit));
      }
    }
  return g;
}

std::string join(const std::vector<std::string>& items, const std::string& separator) {
  std::string out;
  for (const auto& i : items) out += (out.empty() ? "" : separator) + i;
  return out;
}

std::vector<Row> concat(std::vector<Row> a, const std::vector<Row>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

void print_goals(const Report& r, std::FILE* out) {
  const auto busy = latency_rows(r, "busy"), blocking = latency_rows(r, "blocking");
  const auto throughput = throughput_rows(r, false);
  std::vector<GoalCheck> goals = {
      check_ahead(r, {{"latency busy", busy},
                      {"latency blocking", blocking},
                      {"latency sparse", latency_rows(r, "sparse")},
                      {"throughput", throughput},
                      {"patterns", pattern_rows(r)},
                      {"late subscriber", late_rows(r)}}),
      check_ratio(r, "latency ≤ 0.25× iceoryx, busy-polling receivers", busy, "iceoryx", 0.25, true),
      check_ratio(r, "latency ≤ 0.1× iceoryx, blocking receivers", blocking, "iceoryx", 0.1, true),
      check_ratio(r, "throughput ≥ 20× iceoryx", throughput, "iceoryx", 20, false),
      check_ratio(r, "throughput ≥ 5× ZeroMQ", throughput, "zeromq", 5, false),
      check_ratio(r, "throughput ≥ 100× Redis", throughput, "redis", 100, false),
      check_ratio(r, "latency ≤ 0.01× Redis (100×)", concat(busy, blocking), "redis", 0.01, true),
  };
  std::fprintf(out, "\n## Goals (issue 4), on the medians\n\n| goal | verdict | misses |\n|---|---|---|\n");
  for (const auto& g : goals) {
    std::string verdict = g.checked == 0 ? "not checked (no figures to compare)"
                          : g.misses.empty()
                              ? "met (" + std::to_string(g.checked) + " of " + std::to_string(g.checked) + ")"
                              : "**missed** (" + std::to_string(g.misses.size()) + " of " +
                                    std::to_string(g.checked) + ")";
    std::string misses = join(g.misses, "; ");
    if (!g.unchecked.empty()) misses += (misses.empty() ? "" : "; ") + std::string("no figure: ") + join(g.unchecked, ", ");
    std::fprintf(out, "| %s | %s | %s |\n", g.goal.c_str(), verdict.c_str(), misses.c_str());
  }
}

std::string duration_text(double seconds) {
  const auto whole = static_cast<long>(std::lround(seconds));
  return whole >= 60 ? std::to_string(whole / 60) + " min " + std::to_string(whole % 60) + " s"
                     : std::to_string(whole) + " s";
}

}  // namespace

std::string workload_name(Workload w) {
  switch (w) {
    case Workload::kLatency: return "latency";
    case Workload::kThroughput: return "throughput";
    case Workload::kPatterns: return "patterns";
    case Workload::kLate: return "late";
  }
  return "?";
}

void print_report(const Report& r, std::FILE* out) {
  const Machine& m = r.machine;
  std::fprintf(out, "# shmbus compared with iceoryx, Redis, ZeroMQ and Unix sockets\n\n");
  std::fprintf(out, "Command: `%s`%s\n\n", r.command.c_str(),
               r.interrupted ? " (interrupted: partial results)" : "");
  std::fprintf(out, "Machine: %s, %d CPUs online, %s; %s; %s; %s memory; cpuidle %s.\n",
               m.cpu_model.c_str(), m.cpus_online, m.virtualization.c_str(), m.kernel.c_str(),
               m.os.c_str(), m.memory.c_str(), m.cpuidle.empty() ? "none" : m.cpuidle.c_str());
  std::fprintf(out, "Load average %s at the start, %s at the end; %d run%s of each figure in %s%s.\n\n",
               m.load_average.c_str(), r.load_average_at_end.c_str(), r.settings.runs,
               r.settings.runs == 1 ? "" : "s", duration_text(r.seconds).c_str(),
               r.settings.quick ? " (--quick: small counts, not for publishing)" : "");
  std::fprintf(out, "| system | version | status |\n|---|---|---|\n");
  for (const auto& s : r.systems)
    std::fprintf(out, "| %s | %s | %s |\n", s.system->label.c_str(),
                 s.version.empty() ? "—" : s.version.c_str(), s.status.c_str());
  std::fprintf(out,
               "\nFigures are the median of the runs [min–max of the runs]; (n×) is shmbus's median "
               "divided by that peer's: below 1 shmbus is faster for latencies, above 1 for rates.\n");

  TablePrinter table(r, out);
  const std::string how =
      "One-way, from the publisher's CLOCK_MONOTONIC stamp (taken before it loans or copies) to "
      "the receiver's clock reading after it has read the payload's first and last 8 bytes. ";
  table.print("One-way latency, busy-polling receiver",
              how + "The receiver polls without blocking. The sender sends the next message "
                    "when the receiver has acknowledged this one (through shared memory, outside "
                    "the system), spinning up to 50 µs for it, then sleeping.",
              "payload", latency_rows(r, "busy"));
  table.print("One-way latency, blocking receiver (ping-pong pace)",
              how + "The receiver uses the system's blocking receive; paced as above, so the "
                    "next message follows the acknowledgement at once, as in a request/response "
                    "exchange (a receiver that spins before it sleeps may not sleep at all).",
              "payload", latency_rows(r, "blocking"));
  table.print("One-way latency, blocking receiver, one message per millisecond",
              how + "Every receiver is asleep when its message comes: the cost of a wake-up.",
              "payload", latency_rows(r, "sparse"));
  table.print("Throughput: deliveries per second",
              "Every system in its lossless mode; publishers send for a fixed time after a warm-up; "
              "deliveries to all subscribers over the time from the first publisher's start to "
              "the last subscriber's last message. More processes than CPUs share them.",
              "publishers → subscribers", throughput_rows(r, false));
  table.print("Throughput: messages lost", "Sent × subscribers − delivered (median of runs).",
              "publishers → subscribers", throughput_rows(r, true));
  table.print("Publish rate with non-matching pattern subscriptions present",
              "One publisher, 64 B, no subscriber on its channel; another process holds the "
              "patterns (`nomatch:<i>:*`).",
              "pattern subscriptions", pattern_rows(r), "n/a (no pattern subscriptions)");
  table.print("A late subscriber: what it still gets",
              "Messages of 64 B published with no subscriber, then one subscribes asking for "
              "history: shmbus StartAt::earliest() (what the default 64 KiB ring holds), iceoryx "
              "historyRequest 16 (its maximum); the others keep none.",
              "", late_rows(r));
  print_goals(r, out);
}

nlohmann::json report_json(const Report& r) {
  nlohmann::json doc;
  doc["command"] = r.command;
  doc["machine"] = r.machine;
  doc["load_average_at_end"] = r.load_average_at_end;
  doc["seconds"] = r.seconds;
  doc["interrupted"] = r.interrupted;
  doc["settings"] = {{"quick", r.settings.quick}, {"runs", r.settings.runs}};
  for (const auto& s : r.systems)
    doc["systems"].push_back({{"id", s.system->id},
                              {"label", s.system->label},
                              {"ran", s.ran},
                              {"status", s.status},
                              {"version", s.version}});
  for (const auto& cell : r.cells) {
    nlohmann::json c = {{"key", cell.key},          {"workload", workload_name(cell.workload)},
                        {"label", cell.label},      {"mode", cell.mode},
                        {"bytes", cell.bytes},      {"publishers", cell.publishers},
                        {"subscribers", cell.subscribers}, {"patterns", cell.patterns},
                        {"messages", cell.messages}, {"results", nlohmann::json::object()}};
    for (const auto& s : r.systems) {
      const auto* outcomes = outcomes_of(r, cell.key, s.system->id);
      if (!outcomes) continue;
      nlohmann::json runs = nlohmann::json::array(), summary = nlohmann::json::object();
      for (const auto& o : *outcomes) runs.push_back(o.ok ? o.metrics : nlohmann::json{{"error", o.error}});
      for (const auto& o : *outcomes) {
        if (!o.ok) continue;
        for (const auto& [metric, value] : o.metrics.items()) {
          if (!value.is_number() || summary.contains(metric)) continue;
          const auto st = stat_of(outcomes, metric);
          summary[metric] = {{"min", st->min}, {"median", st->median}, {"max", st->max}, {"runs", st->runs}};
        }
      }
      c["results"][s.system->id] = {{"runs", runs}, {"summary", summary}};
    }
    doc["cells"].push_back(c);
  }
  return doc;
}

}  // namespace shmbus::compare
