#include "bridge.hpp"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cmath>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <system_error>
#include <thread>
#include <unordered_map>

#include "bridge_shared.hpp"
#include "counters.hpp"
#include "durable_file.hpp"
#include "echo_ledger.hpp"
#include "envelope.hpp"
#include "exporter.hpp"
#include "glob.hpp"
#include "interest_globs.hpp"
#include "local_imports.hpp"
#include "origin_sequences.hpp"
#include "outbound_queue.hpp"
#include "redis_connection.hpp"
#include "shmbus/subscription.hpp"
#include "state_file.hpp"

namespace shmbus::bridge {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

const char* drop_name(Drop reason) {
  switch (reason) {
    case Drop::kQueueFull: return "queue_full";
    case Drop::kInFlight: return "in_flight_at_disconnect";
    case Drop::kLocalLapped: return "local_lapped";
    case Drop::kRedisError: return "redis_error";
    case Drop::kOversized: return "oversized";
    case Drop::kCorruptEnvelope: return "corrupt_envelope";
    case Drop::kBadChannel: return "bad_channel";
    case Drop::kNotImported: return "not_imported";
    case Drop::kLocalRefused: return "local_refused";
    case Drop::kStopped: return "stopped";
    case Drop::kCount: break;
  }
  return "unknown";
}

uint64_t CounterSnapshot::dropped_total() const {
  uint64_t total = 0;
  for (uint64_t d : dropped) total += d;
  return total;
}

namespace {

// How often the durable read positions are written to the state file.
constexpr auto kStateSaveInterval = 1s;
// XREAD blocks this long at most, so new stream keys are picked up promptly.
constexpr auto kXreadBlock = 100ms;
constexpr uint32_t kXreadCount = 512;
// A durable import held back by a full back-pressure channel reads its stream again after
// a pause (the entries wait in Redis, not in the bridge): 5 ms, doubling while the channel
// stays full, up to 160 ms, so a stuck subscriber costs Redis a few reads a second.
constexpr auto kLocalFullRetry = 5ms;
constexpr int kLocalFullRetryDoublings = 5;
// A key a durable rule follows that turned out not to be a stream is tried again after this.
constexpr auto kUnreadableStreamRetry = 10s;

// Hashes a channel name held as std::string or looked up by string_view (no copy per
// message to look one up).
struct NameHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

}  // namespace

struct Bridge::Impl : BridgeShared {
  Impl(BridgeConfig config_in, ConnectOptions local_in, std::shared_ptr<spdlog::logger> logger)
      : BridgeShared(std::move(config_in), std::move(logger), random_nonce()),
        local(std::move(local_in)),
        imports(*this, local, [this] { forget_routes(); }) {
    validate_bridge_config(config);
    exporter = std::make_unique<Exporter>(*this, local);
    std::random_device seed;
    rng.seed(seed());
    load_state();
    redis_thread = std::thread([this] {
      pthread_setname_np(pthread_self(), "bridge-redis");  // for top -H, perf and gdb
      redis_main();
    });
    export_thread = std::thread([this] {
      pthread_setname_np(pthread_self(), "bridge-export");
      exporter->run();
    });
  }

  ~Impl() { stop(); }

  void stop() {
    if (stopping.exchange(true)) return;
    wake();
    if (export_thread.joinable()) export_thread.join();
    if (redis_thread.joinable()) redis_thread.join();
    save_state();
  }

  static uint64_t random_nonce() {
    std::random_device seed;
    return (uint64_t{seed()} << 32) | seed();
  }

  ConnectOptions local;
  LocalImports imports;                // Redis thread: where imports go (local_imports.hpp)
  std::unique_ptr<Exporter> exporter;  // the export thread's (exporter.hpp)
  std::thread redis_thread, export_thread;
  std::mt19937_64 rng;  // Redis thread after construction (backoff jitter)

  // ---- the Redis thread: the link, subscriptions, imports -------------------------------

  std::unique_ptr<RedisConnection> sub, streams;
  bool ever_connected = false;
  int failed_attempts = 0;
  Clock::time_point next_connect{};
  Clock::time_point connected_at{};
  uint64_t newest_heartbeat_seen = 0;  // the highest heartbeat number received on `sub`
  uint64_t awaited_heartbeat = 0;      // the unanswered heartbeat being timed, if above
  Clock::time_point awaited_since{};   // ... and when it was sent
  bool export_stall_logged = false;

  // Subscriptions: what we asked for (sent_*, shared: see echo_mutex), and what Redis
  // confirmed, in the order of the reply stream (confirmed_*; see "No duplicates" in the
  // header).
  Interest wanted;
  uint64_t wanted_generation = ~uint64_t{0};
  bool wanted_read = false;  // `wanted` reflects local subscriptions read at least once
  NameSet confirmed_channels, confirmed_patterns;
  std::unordered_map<std::string, Clock::time_point> unwanted_since;
  std::unordered_map<std::string, OriginSequences> sequences;  // pub/sub: by Redis channel

  // What on_delivery() worked out for a Redis channel it imports from: which of Redis's
  // copies of a message to take, the rule, and where the message goes. Every part depends
  // only on the channel's name, the rules, the confirmed subscriptions and the open import
  // channels, so a route is kept until one of those changes (forget_routes()); a message
  // that finds its route skips the name checks, the rule and pattern matching and three
  // lookups by name.
  struct ImportRoute {
    std::optional<std::string> designated_pattern;  // nullopt: only the by-name copy
    const Rule* rule = nullptr;
    Channel* channel = nullptr;            // in `imports`
    OriginSequences* sequences = nullptr;  // in `sequences`
  };
  std::unordered_map<std::string, ImportRoute, NameHash, std::equal_to<>> routes;

  // Durable reads.
  std::map<std::string, std::string> stream_positions;  // key -> last id read
  // Per stream key, what was imported from each origin: saved with the positions, so a
  // resend that lands after a bridge restart is still recognised as one.
  std::map<std::string, OriginSequences> stream_sequences;
  // The one command in flight on `streams`, and the key it is about (kNewest, kType).
  enum class StreamCommand : uint8_t { kNone, kNewest, kScan, kType, kRead };
  StreamCommand stream_command = StreamCommand::kNone;
  std::string stream_command_key;
  // Keys an XREAD or XREVRANGE found not to be streams (WRONGTYPE: someone SET the key),
  // left out of reads until the time given, then tried again. type_checks: the keys still
  // to ask TYPE of, after an XREAD of many keys was refused.
  std::unordered_map<std::string, Clock::time_point> unreadable_streams;
  std::vector<std::string> type_checks;
  // Streams and patterns no local subscriber has wanted since then: forgotten (position,
  // sequences) after unsubscribe_linger, so interest that comes back starts afresh.
  std::unordered_map<std::string, Clock::time_point> stream_unwanted_since;
  // Streams found for local pattern subscribers (wanted.stream_patterns) by the last
  // complete round of SCANs; read like wanted.streams. A round SCANs each pattern in turn.
  NameSet scanned_streams;
  NameSet scan_round_found;
  std::vector<std::string> scan_round_patterns;  // this round's, in order
  size_t scan_pattern_index = 0;
  std::string scan_cursor = "0";
  // Patterns a complete round has covered (saved in the state file, so streams that
  // appear while the bridge is down are read from their start too).
  NameSet patterns_scanned_once;
  // Patterns whose first round is complete but whose streams do not all have a position
  // yet; they join patterns_scanned_once when they do (a restart before then would take
  // those streams for new ones and read their whole history).
  NameSet patterns_first_round_done;
  Clock::time_point next_scan{};
  bool xread_turn = false;               // during a round: an XREAD goes next
  Clock::time_point next_stream_read{};  // later than now while a local channel is full
  int held_reads = 0;                    // consecutive reads held back by a full channel
  Clock::time_point next_full_log{};
  bool state_dirty = false;
  Clock::time_point next_state_save{};

  void forget_routes() { routes.clear(); }

  // The local name of a Redis channel or stream key the bridge made (prefix + name).
  std::string_view local_name(std::string_view redis_name) const {
    return redis_name.substr(std::min(redis_name.size(), config.redis_prefix.size()));
  }

  RedisEndpoint endpoint() const {
    return {config.redis_host,     config.redis_port, config.redis_user,
            config.redis_password, config.redis_db,   config.connect_timeout};
  }

  bool needs_stream_connection() const {
    return std::any_of(config.imports.begin(), config.imports.end(),
                       [](const Rule& r) { return r.durable; });
  }

  void connect() {
    std::unique_ptr<RedisConnection> new_pub;
    try {
      new_pub = std::make_unique<RedisConnection>(endpoint());
      auto new_sub = std::make_unique<RedisConnection>(endpoint());
      std::unique_ptr<RedisConnection> new_streams;
      if (needs_stream_connection()) new_streams = std::make_unique<RedisConnection>(endpoint());
      sub = std::move(new_sub);
      streams = std::move(new_streams);
    } catch (const std::exception& e) {
      ++failed_attempts;
      // Capped exponential backoff with jitter: bridges that lost the same Redis do not all
      // come back in the same millisecond.
      const double base = std::min<double>(static_cast<double>(config.backoff_max.count()),
                                           static_cast<double>(config.backoff_initial.count()) *
                                               std::pow(2.0, std::min(failed_attempts - 1, 30)));
      const double jittered = base * std::uniform_real_distribution<double>(0.5, 1.0)(rng);
      next_connect = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(jittered));
      if (failed_attempts == 1 || failed_attempts % 10 == 0)
        log->warn("{} (attempt {}); retrying in {} ms", e.what(), failed_attempts,
                  static_cast<int64_t>(jittered));
      return;
    }
    if (ever_connected) counters.reconnects.fetch_add(1, std::memory_order_relaxed);
    log->info("connected to redis {}:{}{}", config.redis_host, config.redis_port,
              failed_attempts ? " after " + std::to_string(failed_attempts) + " failed attempt(s)"
                              : std::string());
    ever_connected = true;
    failed_attempts = 0;
    connected_at = Clock::now();
    export_stall_logged = false;
    awaited_heartbeat = 0;
    {
      // A new link generation; the export thread adopts `pub` on its next pass.
      std::lock_guard<std::mutex> lock(link_mutex);
      handoff = std::move(new_pub);
      link_generation.fetch_add(1, std::memory_order_release);
    }
    counters.connected = true;
    sub->append({"SUBSCRIBE", heartbeat_channel});
    {
      std::lock_guard<std::mutex> lock(echo_mutex);
      sent_channels.insert(heartbeat_channel);
    }
    // Re-subscribe from our own registry (wanted), not from whatever the old connection held.
    wanted_generation = ~uint64_t{0};
  }

  void disconnect(const std::string& why) {
    log->warn("redis connection lost: {}; reconnecting", why);
    {
      // Retires `pub` (the export thread settles its in-flight commands) before `connected`
      // goes false: see "The link" above.
      std::lock_guard<std::mutex> lock(link_mutex);
      handoff.reset();
      link_generation.fetch_add(1, std::memory_order_acq_rel);
    }
    sub.reset();
    streams.reset();
    counters.connected = false;
    {
      std::lock_guard<std::mutex> lock(echo_mutex);
      sent_channels.clear();
      sent_patterns.clear();
      raw_echoes.clear();
    }
    confirmed_channels.clear();
    confirmed_patterns.clear();
    forget_routes();
    unwanted_since.clear();
    stream_command = StreamCommand::kNone;
    type_checks.clear();
    scan_round_patterns.clear();  // the round starts over on the next link
    next_scan = {};
    counters.redis_subscriptions = 0;
    next_connect = Clock::now() + config.backoff_initial;
  }

  void redis_main() {
    block_sigpipe();
    while (!stopping.load(std::memory_order_relaxed) && !local_bus_gone) {
      try {
        redis_step();
      } catch (const Error& e) {
        if (e.code() != Errc::kDaemonGone && e.code() != Errc::kNoDaemon) throw;
        log->error("the local shmbusd stopped: {}; the bridge stops relaying", e.what());
        local_bus_gone = true;
      } catch (const std::exception& e) {
        disconnect(e.what());
      }
    }
  }

  void redis_step() {
    const auto now = Clock::now();
    if (!sub) {
      if (now >= next_connect) connect();
    }
    if (sub) {
      if (failed_generation.load(std::memory_order_acquire) ==
          link_generation.load(std::memory_order_relaxed)) {
        std::lock_guard<std::mutex> lock(link_mutex);
        throw std::runtime_error(pub_failure);
      }
      apply_interest(now);
      // The export thread PUBLISHes a heartbeat every heartbeat_interval on `pub`; this
      // thread receives it on `sub`.
      if (heartbeat_overdue(now)) {
        counters.heartbeat_timeouts.fetch_add(1, std::memory_order_relaxed);
        throw std::runtime_error("no heartbeat came back for " +
                                 std::to_string(config.heartbeat_timeout.count()) +
                                 " ms (heartbeat_timeout_ms): the connection is dead or Redis "
                                 "is stalled");
      }
      send_stream_command();
      sub->flush();
      if (streams) streams->flush();
    }
    if (now >= next_state_save) {
      forget_unfollowed_streams(now);
      save_state();
      next_state_save = now + kStateSaveInterval;
    }

    pollfd fds[3];
    int n = 0;
    fds[n++] = {wake_fd, POLLIN, 0};
    RedisConnection* conns[2] = {sub.get(), streams.get()};
    for (auto* c : conns) {
      if (!c) continue;
      fds[n++] = c->poll_entry();
    }
    auto deadline = now + 50ms;
    if (!sub)
      deadline = std::min(deadline, std::max(next_connect, now));
    else
      deadline = heartbeat_deadline(deadline);
    if (streams && stream_command == StreamCommand::kNone && next_stream_read > now)
      deadline = std::min(deadline, next_stream_read);
    // Rounded up: rounded down, poll would wake just before the deadline and spin until it.
    const auto timeout = std::chrono::ceil<std::chrono::milliseconds>(deadline - now);
    if (poll(fds, static_cast<nfds_t>(n), static_cast<int>(std::max<int64_t>(0, timeout.count()))) <
        0) {
      if (errno == EINTR) return;
      throw std::system_error(errno, std::generic_category(), "poll");
    }
    if (fds[0].revents & POLLIN) {
      uint64_t value;
      [[maybe_unused]] auto r = ::read(wake_fd, &value, sizeof value);
    }
    int i = 1;
    for (auto* c : conns) {
      if (!c) continue;
      const short revents = fds[i++].revents;
      if (revents & (POLLIN | POLLERR | POLLHUP)) {
        c->read();
        while (const redisReply* r = c->next_reply()) {
          if (c == sub.get())
            on_sub_reply(r);
          else
            on_stream_reply(r);
          if (!sub) return;  // a reply handler disconnected
        }
      }
    }
  }

  // ---- subscriptions ----

  void apply_interest(Clock::time_point now) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (interest_generation != wanted_generation) {
        wanted = interest;
        wanted_generation = interest_generation;
        forget_unwanted_scans();
      }
      wanted_read = interest_read;
    }
    {
      // sent_* change here; the export thread reads them (remember_raw).
      std::lock_guard<std::mutex> lock(echo_mutex);
      diff_and_send(wanted.channels, sent_channels, "SUBSCRIBE", "UNSUBSCRIBE", now);
      diff_and_send(wanted.patterns, sent_patterns, "PSUBSCRIBE", "PUNSUBSCRIBE", now);
    }
  }

  // Notes `name` as unwanted since `now` unless it was already; true (and the note gone)
  // once that has lasted unsubscribe_linger. The caller drops the note of a wanted name.
  bool linger_over(std::unordered_map<std::string, Clock::time_point>& unwanted,
                   const std::string& name, Clock::time_point now) const {
    auto [since, fresh] = unwanted.try_emplace(name, now);
    if (fresh || now - since->second < config.unsubscribe_linger) return false;
    unwanted.erase(since);
    return true;
  }

  // Subscribes at once to what became wanted; unsubscribes only what stayed unwanted for
  // unsubscribe_linger, so local subscribers joining and leaving in a loop cost Redis
  // nothing. Each round is one command however many names change.
  void diff_and_send(const NameSet& want, NameSet& sent, const char* subscribe,
                     const char* unsubscribe, Clock::time_point now) {
    std::vector<std::string_view> add{subscribe}, remove{unsubscribe};
    for (const auto& name : want) {
      if (sent.insert(name).second) add.push_back(name);
      unwanted_since.erase(name);
    }
    for (auto it = sent.begin(); it != sent.end();) {
      if (*it == heartbeat_channel || want.count(*it)) {
        ++it;
        continue;
      }
      // Views into `sent`, erased only after the command is built.
      if (linger_over(unwanted_since, *it, now)) remove.push_back(*it);
      ++it;
    }
    if (add.size() > 1) {
      sub->append(add);
      counters.subscribe_commands.fetch_add(1, std::memory_order_relaxed);
    }
    if (remove.size() > 1) {
      sub->append(remove);
      counters.unsubscribe_commands.fetch_add(1, std::memory_order_relaxed);
      std::vector<std::string> names(remove.begin() + 1, remove.end());
      for (const auto& name : names) sent.erase(name);
    }
  }

  // ---- receiving ----

  void on_sub_reply(const redisReply* r) {
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3) {
      if (r->type == REDIS_REPLY_ERROR)
        throw std::runtime_error("subscriber connection: " + std::string(reply_text(r)));
      return;
    }
    const std::string_view kind = reply_text(r->element[0]);
    if (kind == "message") {
      on_delivery(reply_text(r->element[1]), {}, r->element[2]);
      return;
    }
    if (kind == "pmessage" && r->elements >= 4) {
      on_delivery(reply_text(r->element[2]), reply_text(r->element[1]), r->element[3]);
      return;
    }
    const std::string name(reply_text(r->element[1]));
    // Each confirmation may change which copy of a message is designated, and which
    // sequences are kept: routes are worked out again.
    forget_routes();
    if (kind == "subscribe") {
      confirmed_channels.insert(name);
    } else if (kind == "psubscribe") {
      confirmed_patterns.insert(name);
    } else if (kind == "unsubscribe" || kind == "punsubscribe") {
      (kind == "unsubscribe" ? confirmed_channels : confirmed_patterns).erase(name);
      // Sequences restart when a channel is followed again: what was published while we
      // did not listen is not lost in transit.
      std::erase_if(sequences, [&](const auto& entry) { return !confirmed_covers(entry.first); });
      std::lock_guard<std::mutex> lock(echo_mutex);
      // Only entries no subscription covers any more, confirmed or still on its way: a
      // PUBLISH sent after a SUBSCRIBE we have not seen confirmed yet may well come back.
      raw_echoes.forget_channels([&](const std::string& channel) {
        return !confirmed_covers(channel) && !covered_by_sent(channel);
      });
    }
    counters.redis_subscriptions.store(confirmed_channels.size() + confirmed_patterns.size(),
                                       std::memory_order_relaxed);
  }

  bool confirmed_covers(const std::string& channel) const {
    return confirmed_channels.count(channel) || any_glob_matches(confirmed_patterns, channel);
  }

  // Exactly one of the copies Redis sends for one PUBLISH is imported (see the header).
  bool designated(std::string_view channel, std::string_view pattern) const {
    if (pattern.empty()) return true;
    return designated_pattern(channel) == pattern;
  }

  // The pattern whose copy of a message on `channel` is imported: none while a by-name
  // subscription covers the channel (that copy is), else the first confirmed pattern
  // matching it.
  std::optional<std::string> designated_pattern(std::string_view channel) const {
    if (confirmed_channels.count(channel)) return std::nullopt;
    for (const auto& p : confirmed_patterns)
      if (glob_match(p, channel)) return p;
    return std::nullopt;
  }

  void on_delivery(std::string_view channel, std::string_view pattern,
                   const redisReply* payload_reply) {
    auto known = routes.find(channel);
    ImportRoute* route = known != routes.end() ? &known->second : nullptr;
    if (route == nullptr) {
      if (!designated(channel, pattern)) return;
      if (channel == heartbeat_channel) {
        if (pattern.empty()) on_heartbeat(reply_text(payload_reply));
        return;
      }
      route = make_route(channel);
      if (route == nullptr) return;  // dropped and counted, or another bridge's heartbeat
    }
    if (!pattern.empty() && route->designated_pattern != pattern) return;
    if (payload_reply->type != REDIS_REPLY_STRING) {
      drop(Drop::kCorruptEnvelope, 1, [&] {
        return "a message on '" + route->channel->name().substr(0, 128) +
               "' without a string payload";
      });
      return;
    }
    const std::string_view payload = reply_text(payload_reply);
    const Rule& rule = *route->rule;
    if (payload.size() >
        config.max_payload_bytes + (rule.mode == Mode::kEnvelope ? kEnvelopeHeaderBytes : 0)) {
      drop(Drop::kOversized, 1, [&] {
        return std::to_string(payload.size()) + " bytes on '" +
               route->channel->name().substr(0, 128) +
               "' exceed max_payload_bytes = " + std::to_string(config.max_payload_bytes);
      });
      return;
    }
    if (rule.mode == Mode::kRaw) {
      if (is_raw_echo(channel, payload)) {
        counters.echoes.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      imports.publish(*route->channel, bytes_of(payload), kUnknownOrigin);
      return;
    }
    std::string why;
    auto envelope = decode_envelope(bytes_of(payload), why);
    if (!envelope) {
      drop(Drop::kCorruptEnvelope, 1,
           [&] { return "on '" + route->channel->name().substr(0, 128) + "': " + why; });
      return;
    }
    if (envelope->header.origin == config.host_id) {
      counters.echoes.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    const uint16_t origin = envelope->header.origin;
    record_sequence(*route->sequences, origin_state(*route->sequences, origin), origin,
                    envelope->header.sequence, envelope->header.publish_unix_ns, false);
    imports.note_lag(envelope->header.publish_unix_ns);
    imports.publish(*route->channel, envelope->payload, envelope->header.origin);
  }

  // The first message on a Redis channel: checks its name against the prefix, the limits
  // and the import rules (counting a drop for each message refused; those get no route)
  // and opens its local channel.
  ImportRoute* make_route(std::string_view channel) {
    if (!channel.starts_with(config.redis_prefix)) {
      drop(Drop::kBadChannel, 1, [&] {
        return "channel '" + std::string(channel.substr(0, 128)) + "' lacks the prefix '" +
               config.redis_prefix + "'";
      });
      return nullptr;
    }
    const std::string name(channel.substr(config.redis_prefix.size()));
    if (name.starts_with(kReservedPrefix)) return nullptr;  // other bridges' heartbeats
    if (name.empty() || name.size() > kMaxChannelNameBytes) {
      drop(Drop::kBadChannel, 1, [&] {
        return "channel name of " + std::to_string(name.size()) +
               " bytes; local channel names are 1 to 1024 bytes";
      });
      return nullptr;
    }
    const Rule* rule = BridgeConfig::first_match(config.imports, name);
    if (rule == nullptr || rule->durable) {
      drop(Drop::kNotImported, 1,
           [&] { return "'" + name.substr(0, 128) + "' matches no pub/sub [[import]] rule"; });
      return nullptr;
    }
    Channel* local = imports.channel(name);  // may forget every route: before the insert
    if (local == nullptr) return nullptr;
    ImportRoute& route = routes[std::string(channel)];
    route.designated_pattern = designated_pattern(channel);
    route.rule = rule;
    route.channel = local;
    route.sequences = &sequences[std::string(channel)];
    return &route;
  }

  // A heartbeat sent on this link has been out longer than heartbeat_timeout (timed from
  // the send of the first one this thread saw unanswered, so detection may take up to one
  // heartbeat_interval longer than the oldest would). The export thread not sending at all
  // is its own stall, logged, not a dead link.
  bool heartbeat_overdue(Clock::time_point now) {
    HeartbeatSent newest;
    {
      std::lock_guard<std::mutex> lock(link_mutex);
      newest = newest_heartbeat;
    }
    const bool this_link = newest.generation == link_generation.load(std::memory_order_relaxed);
    if (this_link && newest.number > newest_heartbeat_seen) {
      export_stall_logged = false;
      // Timed from the first unanswered heartbeat we noticed; later ones do not restart it.
      if (awaited_heartbeat <= newest_heartbeat_seen) {
        awaited_heartbeat = newest.number;
        awaited_since = newest.at;
      }
      return now - awaited_since > config.heartbeat_timeout;
    }
    const auto quiet = now - (this_link ? newest.at : connected_at);
    if (quiet > 2 * config.heartbeat_timeout && !export_stall_logged) {
      log->warn(
          "the export thread has sent no heartbeat for {} ms: it is held up by the local "
          "bus (shmbusd slow to answer?), not by Redis",
          std::chrono::duration_cast<std::chrono::milliseconds>(quiet).count());
      export_stall_logged = true;
    }
    return false;
  }

  // When heartbeat_overdue() may turn true: the newest heartbeat of this link, if it has
  // not come back.
  Clock::time_point heartbeat_deadline(Clock::time_point otherwise) {
    if (awaited_heartbeat <= newest_heartbeat_seen) return otherwise;
    return std::min(otherwise, awaited_since + config.heartbeat_timeout + 1ms);
  }

  void on_heartbeat(std::string_view payload) {
    uint64_t n = 0;
    for (char c : payload) n = n * 10 + static_cast<uint64_t>(c - '0');
    newest_heartbeat_seen = std::max(newest_heartbeat_seen, n);
    // Raw exports sent before heartbeat n were answered by now if they ever will be.
    std::lock_guard<std::mutex> lock(echo_mutex);
    raw_echoes.heartbeat_returned(n);
  }

  bool is_raw_echo(std::string_view channel, std::string_view payload) {
    std::lock_guard<std::mutex> lock(echo_mutex);
    return raw_echoes.recognise(channel, payload);
  }

  // Records a message taken from `origin` (origin_sequences.hpp), counting what it shows
  // lost in transit.
  void record_sequence(OriginSequences& states, SequenceState* last, uint16_t origin,
                       uint64_t sequence, uint64_t publish_unix_ns, bool durable) {
    const int64_t lost =
        bridge::record_sequence(states, last, origin, sequence, publish_unix_ns, durable);
    if (lost > 0)
      counters.lost_in_transit.fetch_add(static_cast<uint64_t>(lost), std::memory_order_relaxed);
    else if (lost < 0)
      counters.lost_in_transit.fetch_sub(static_cast<uint64_t>(-lost), std::memory_order_relaxed);
  }

  // ---- durable: streams ----

  // Every stream to XREAD: those wanted by name, and those found for patterns (not also
  // wanted by name).
  template <typename F>
  void for_each_stream_read(F&& f) const {
    for (const auto& key : wanted.streams)
      if (!unreadable_streams.count(key)) f(key);
    for (const auto& key : scanned_streams)
      if (!wanted.streams.count(key) && !unreadable_streams.count(key)) f(key);
  }

  // Wanted by name, or by a pattern (whether or not a SCAN round has found it yet: after a
  // restart, the first round may take longer than the linger in a large keyspace).
  bool stream_followed(const std::string& key) const {
    return wanted.streams.count(key) || any_glob_matches(wanted.stream_patterns, key);
  }

  // A pattern no longer wanted takes its streams along; a stream another pattern still
  // matches stays until the next round says otherwise.
  void forget_unwanted_scans() {
    std::erase_if(scanned_streams, [&](const std::string& key) {
      return !any_glob_matches(wanted.stream_patterns, key);
    });
    std::erase_if(patterns_first_round_done,
                  [&](const std::string& p) { return !wanted.stream_patterns.count(p); });
  }

  // Read positions, sequences and scanned patterns that no local subscriber has wanted for
  // unsubscribe_linger are forgotten: interest that comes back later starts at the newest
  // entry, as a new subscriber of Redis pub/sub would, instead of receiving the backlog of
  // its absence (and the state file does not grow with every stream ever read). Only once
  // the local interest has been read: the state restored at start waits for it.
  void forget_unfollowed_streams(Clock::time_point now) {
    if (!wanted_read) return;
    auto lingered = [&](const std::string& name, bool wanted_now) {
      if (wanted_now) {
        stream_unwanted_since.erase(name);
        return false;
      }
      if (!linger_over(stream_unwanted_since, name, now)) return false;
      state_dirty = true;
      return true;
    };
    for (auto it = stream_positions.begin(); it != stream_positions.end();) {
      if (lingered(it->first, stream_followed(it->first))) {
        stream_sequences.erase(it->first);
        it = stream_positions.erase(it);
      } else {
        ++it;
      }
    }
    std::erase_if(patterns_scanned_once, [&](const std::string& p) {
      return lingered(p, wanted.stream_patterns.count(p) != 0);
    });
    for (auto it = unreadable_streams.begin(); it != unreadable_streams.end();)
      it = now >= it->second ? unreadable_streams.erase(it) : std::next(it);
  }

  // One command at a time on `streams`: TYPE checks after a refused XREAD, else an
  // XREVRANGE for a stream followed for the first time, else a SCAN when a round is due,
  // else the XREAD of everything followed.
  void send_stream_command() {
    if (!streams || stream_command != StreamCommand::kNone || Clock::now() < next_stream_read)
      return;
    if (!type_checks.empty()) {
      stream_command_key = std::move(type_checks.back());
      type_checks.pop_back();
      streams->append({"TYPE", stream_command_key});
      stream_command = StreamCommand::kType;
      return;
    }
    bool have_streams = false;
    std::string_view first_time;
    uint64_t positioned = 0;
    for_each_stream_read([&](const std::string& key) {
      have_streams = true;
      if (stream_positions.count(key))
        ++positioned;
      else if (first_time.empty())
        first_time = key;
    });
    // Streams followed: those with a read position (set once the first XREVRANGE answered).
    // Counted here, where the streams are walked anyway, and only between commands.
    counters.streams_read.store(positioned, std::memory_order_relaxed);
    if (!first_time.empty()) {
      // First interest in this stream: start after its newest entry (XREAD with "$" would
      // lose what is added between two calls).
      stream_command_key = std::string(first_time);
      streams->append({"XREVRANGE", stream_command_key, "+", "-", "COUNT", "1"});
      stream_command = StreamCommand::kNewest;
      return;
    }
    // Every stream read has a position now: first rounds are complete for good.
    if (!patterns_first_round_done.empty()) {
      patterns_scanned_once.merge(patterns_first_round_done);
      patterns_first_round_done.clear();
      state_dirty = true;
    }
    // A round of SCANs (one per thousand keys in Redis) alternates with XREADs that do not
    // block, so streams already followed are not held up by a large keyspace.
    if (!scan_round_patterns.empty() && xread_turn && have_streams) {
      xread_turn = false;
      send_xread(/*block=*/false);
      return;
    }
    if (send_scan()) {
      xread_turn = true;
      return;
    }
    if (have_streams) send_xread(/*block=*/true);
  }

  void send_xread(bool block) {
    const std::string count = std::to_string(kXreadCount);
    const std::string block_ms = std::to_string(kXreadBlock.count());
    std::vector<std::string_view> args{"XREAD", "COUNT", count};
    if (block) args.insert(args.end(), {"BLOCK", block_ms});
    args.push_back("STREAMS");
    // Every followed stream has a position here (send_stream_command XREVRANGEs it first);
    // the map's strings stay where they are while args points at them.
    std::vector<std::string_view> ids;
    for_each_stream_read([&](const std::string& key) {
      args.push_back(key);
      ids.push_back(stream_positions.find(key)->second);
    });
    args.insert(args.end(), ids.begin(), ids.end());
    streams->append(args);
    stream_command = StreamCommand::kRead;
  }

  // The next SCAN of the current round, starting a round when one is due. False if none.
  bool send_scan() {
    if (scan_round_patterns.empty()) {
      if (wanted.stream_patterns.empty() || Clock::now() < next_scan) return false;
      scan_round_patterns.assign(wanted.stream_patterns.begin(), wanted.stream_patterns.end());
      scan_pattern_index = 0;
      scan_cursor = "0";
      scan_round_found.clear();
    }
    streams->append({"SCAN", scan_cursor, "MATCH", scan_round_patterns[scan_pattern_index], "COUNT",
                     "1000", "TYPE", "stream"});
    stream_command = StreamCommand::kScan;
    return true;
  }

  void on_scan_reply(const redisReply* r) {
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[1]->type != REDIS_REPLY_ARRAY)
      throw std::runtime_error("unexpected SCAN reply");
    for (size_t k = 0; k < r->element[1]->elements; ++k) {
      const std::string_view key = reply_text(r->element[1]->element[k]);
      if (!key.starts_with(config.redis_prefix)) continue;
      const std::string_view name = local_name(key);
      if (name.starts_with(kReservedPrefix)) continue;
      const Rule* rule = BridgeConfig::first_match(config.imports, name);
      if (rule != nullptr && rule->durable) scan_round_found.insert(std::string(key));
    }
    scan_cursor = std::string(reply_text(r->element[0]));
    if (scan_cursor != "0") return;
    if (++scan_pattern_index < scan_round_patterns.size()) return;
    // The round is complete. A stream that a pattern covered by an earlier round did not
    // show then has appeared since: all its entries are new, read it from the start. The
    // others (first round of their pattern) start after their newest entry, as a stream
    // followed by name does.
    for (const auto& key : scan_round_found) {
      if (stream_positions.count(key) || scanned_streams.count(key)) continue;
      if (any_glob_matches(patterns_scanned_once, key)) {  // appeared since
        stream_positions[key] = "0-0";
        state_dirty = true;
      }
    }
    for (const auto& p : scan_round_patterns)
      if (wanted.stream_patterns.count(p) && !patterns_scanned_once.count(p))
        patterns_first_round_done.insert(p);
    scanned_streams = std::move(scan_round_found);
    scan_round_found.clear();
    forget_unwanted_scans();  // interest may have changed during the round
    scan_round_patterns.clear();
    next_scan = Clock::now() + config.stream_scan_interval;
  }

  void on_stream_reply(const redisReply* r) {
    const StreamCommand command = std::exchange(stream_command, StreamCommand::kNone);
    if (r->type == REDIS_REPLY_ERROR) {
      const std::string_view error = reply_text(r);
      if (!error.starts_with("WRONGTYPE") || command == StreamCommand::kScan)
        throw std::runtime_error("stream read refused: " + std::string(error));
      // A key a durable rule follows is not a stream (someone SET it, or it was deleted
      // and recreated as another type). Leave it out instead of breaking the link over it.
      if (command == StreamCommand::kRead) {
        // Which key, Redis does not say: ask each.
        for_each_stream_read([&](const std::string& key) { type_checks.push_back(key); });
      } else {
        mark_unreadable(stream_command_key, "not a stream");
      }
      return;
    }
    if (command == StreamCommand::kScan) {
      on_scan_reply(r);
      return;
    }
    if (command == StreamCommand::kType) {
      const std::string_view type = reply_text(r);
      if (type != "stream" && type != "none")
        mark_unreadable(stream_command_key, "a " + std::string(type));
      return;
    }
    if (command == StreamCommand::kNewest) {
      std::string id = "0-0";
      if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
          r->element[0]->type == REDIS_REPLY_ARRAY && r->element[0]->elements >= 1)
        id = std::string(reply_text(r->element[0]->element[0]));
      stream_positions[stream_command_key] = id;
      state_dirty = true;
      return;
    }
    if (r->type != REDIS_REPLY_ARRAY) return;  // nil: BLOCK timed out
    bool held = false, took_any = false;
    for (size_t s = 0; s < r->elements; ++s) {
      const redisReply* stream = r->element[s];
      if (stream->type != REDIS_REPLY_ARRAY || stream->elements != 2) continue;
      // Worked out once per stream, not per entry.
      const std::string key(reply_text(stream->element[0]));
      const std::string name(local_name(key));
      std::string& position = stream_positions[key];
      OriginSequences& states = stream_sequences[key];
      const redisReply* entries = stream->element[1];
      for (size_t e = 0; e < entries->elements; ++e) {
        const redisReply* entry = entries->element[e];
        if (entry->type != REDIS_REPLY_ARRAY || entry->elements != 2) continue;
        if (!on_stream_entry(name, states, entry->element[1])) {
          // The local channel is full: the position stays before this entry, which is read
          // again after a pause, so a slow subscriber of a back-pressure channel delays a
          // durable import instead of losing from it.
          log_held_stream(name);
          held = true;
          break;
        }
        position.assign(reply_text(entry->element[0]));
        state_dirty = true;
        took_any = true;
      }
    }
    // The pause grows only while nothing at all could be taken: a subscriber that drains
    // its channel, however slowly, is fed again 5 ms after each fill.
    held_reads = held && !took_any ? held_reads + 1 : 0;
    if (held)
      next_stream_read =
          Clock::now() + kLocalFullRetry * (1 << std::min(held_reads, kLocalFullRetryDoublings));
  }

  void mark_unreadable(const std::string& key, const std::string& what) {
    unreadable_streams[key] = Clock::now() + kUnreadableStreamRetry;
    log->warn("'{}' is {} in Redis: its durable import is left out for {} s, then tried again",
              key.substr(0, 128), what,
              std::chrono::duration_cast<std::chrono::seconds>(kUnreadableStreamRetry).count());
  }

  void log_held_stream(std::string_view name) {
    const auto now = Clock::now();
    if (now < next_full_log) return;
    next_full_log = now + 1s;
    log->info("durable import of '{}' waits: its local back-pressure channel is full",
              name.substr(0, 128));
  }

  // Imports one stream entry. False if the local channel was full: the entry is to be read
  // again. Anything else (imported, repeat, or dropped and counted) is done with.
  // `name`: the local channel; `states`: the stream's sequences per origin.
  bool on_stream_entry(const std::string& name, OriginSequences& states, const redisReply* fields) {
    std::optional<std::string_view> payload;
    uint64_t origin = kUnknownOrigin, seq = 0, ts = 0;
    bool has_sequence = false;
    bool well_formed = fields->type == REDIS_REPLY_ARRAY && fields->elements % 2 == 0;
    for (size_t i = 0; well_formed && i + 1 < fields->elements; i += 2) {
      const std::string_view f = reply_text(fields->element[i]);
      const std::string_view v = reply_text(fields->element[i + 1]);
      if (f == "payload")
        payload = v;
      else if (f == "origin")
        well_formed = number(v, origin) && origin != 0 && origin <= 0xffff;
      else if (f == "seq")
        well_formed = (has_sequence = number(v, seq));
      else if (f == "ts")
        well_formed = number(v, ts);
    }
    if (!well_formed || !payload) {
      drop(Drop::kCorruptEnvelope, 1, [&] {
        return "stream entry on '" + name.substr(0, 128) +
               "' without a payload field or with bad origin/seq/ts";
      });
      return true;
    }
    if (payload->size() > config.max_payload_bytes) {
      drop(Drop::kOversized, 1, [&] {
        return std::to_string(payload->size()) + " bytes on stream '" + name.substr(0, 128) +
               "' exceed max_payload_bytes";
      });
      return true;
    }
    if (origin == config.host_id) {
      counters.echoes.fetch_add(1, std::memory_order_relaxed);
      return true;
    }
    const auto from = static_cast<uint16_t>(origin);
    SequenceState* last = origin_state(states, from);
    if (has_sequence && last && durable_repeat(*last, seq, ts)) {
      counters.duplicates.fetch_add(1, std::memory_order_relaxed);
      return true;
    }
    if (ts) imports.note_lag(ts);
    if (Channel* local = imports.channel(name)) {
      const auto status = imports.publish(*local, bytes_of(*payload), from, /*can_retry=*/true);
      if (status == PublishStatus::kWouldBlock) return false;
    }
    // Taken (or dropped and counted): recorded, so a repeat of it is known for one.
    if (has_sequence) record_sequence(states, last, from, seq, ts, true);
    return true;
  }

  // The state file (its format: state_file.hpp).
  // Replaced durably (durable_file.hpp), so a crash leaves the old or the new file, never
  // half of one; positions and sequences in it are always from the same moment.
  void save_state() {
    if (config.state_file.empty() || !state_dirty) return;
    if (const std::string error = replace_file_durably(
            config.state_file,
            serialize_state(stream_positions, patterns_scanned_once, stream_sequences));
        !error.empty())
      log->error("durable positions are not saved: {}", error);
    else
      state_dirty = false;
  }

  void load_state() {
    if (config.state_file.empty()) return;
    std::ifstream in(config.state_file);
    std::string text;
    size_t line = 0, sequence_lines = 0;
    while (std::getline(in, text)) {
      ++line;
      if (!parse_state_line(text, stream_positions, patterns_scanned_once, stream_sequences,
                            sequence_lines))
        log->warn(
            "state file {} line {}: not '<ms>-<seq> <hex key>', 'seq <hex key> <origin> "
            "<sequence> <ns> [<missing>...]' or 'scanned <hex pattern>'; ignored",
            config.state_file, line);
    }
    if (line)
      log->info("resuming {} stream(s) ({} origin sequences) from {}", stream_positions.size(),
                sequence_lines, config.state_file);
  }
};

Bridge::Bridge(BridgeConfig config, ConnectOptions local, std::shared_ptr<spdlog::logger> logger)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(local), std::move(logger))) {}
Bridge::~Bridge() = default;
void Bridge::stop() {
  impl_->stop();
}
CounterSnapshot Bridge::counters() const {
  return impl_->snapshot();
}
std::string Bridge::counters_json() const {
  return impl_->json();
}
std::string Bridge::stats_channel() const {
  return impl_->stats_channel();
}
bool Bridge::local_bus_gone() const {
  return impl_->local_bus_gone;
}

}  // namespace shmbus::bridge
