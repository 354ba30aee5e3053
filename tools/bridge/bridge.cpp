#include "bridge.hpp"

#include <poll.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <mutex>
#include <optional>
#include <random>
#include <system_error>
#include <thread>
#include <unordered_map>

#include "bridge_shared.hpp"
#include "counters.hpp"
#include "durable_streams.hpp"
#include "envelope.hpp"
#include "exporter.hpp"
#include "glob.hpp"
#include "local_imports.hpp"
#include "origin_sequences.hpp"
#include "redis_connection.hpp"
#include "shmbus/subscription.hpp"

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
        imports(*this, local, [this] { forget_routes(); }),
        durable(*this, imports) {
    validate_bridge_config(config);
    exporter = std::make_unique<Exporter>(*this, local);
    std::random_device seed;
    rng.seed(seed());
    durable.load_state();
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
    durable.save_state();
  }

  static uint64_t random_nonce() {
    std::random_device seed;
    return (uint64_t{seed()} << 32) | seed();
  }

  ConnectOptions local;
  LocalImports imports;                // Redis thread: where imports go (local_imports.hpp)
  DurableStreams durable;              // Redis thread: stream reads (durable_streams.hpp)
  std::unique_ptr<Exporter> exporter;  // the export thread's (exporter.hpp)
  std::thread redis_thread, export_thread;
  std::mt19937_64 rng;  // Redis thread after construction (backoff jitter)

  // ---- the Redis thread: the link, subscriptions, imports -------------------------------

  std::unique_ptr<RedisConnection> sub;
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

  void forget_routes() { routes.clear(); }

  RedisEndpoint endpoint() const {
    return {config.redis_host,     config.redis_port, config.redis_user,
            config.redis_password, config.redis_db,   config.connect_timeout};
  }

  void connect() {
    std::unique_ptr<RedisConnection> new_pub;
    try {
      new_pub = std::make_unique<RedisConnection>(endpoint());
      auto new_sub = std::make_unique<RedisConnection>(endpoint());
      std::unique_ptr<RedisConnection> new_streams;
      if (durable.needed()) new_streams = std::make_unique<RedisConnection>(endpoint());
      sub = std::move(new_sub);
      durable.link_up(std::move(new_streams));
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
    durable.link_down();
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
      durable.send_command();
      sub->flush();
      if (RedisConnection* streams = durable.connection()) streams->flush();
    }
    durable.maintain(now);

    pollfd fds[3];
    int n = 0;
    fds[n++] = {wake_fd, POLLIN, 0};
    RedisConnection* conns[2] = {sub.get(), durable.connection()};
    for (auto* c : conns) {
      if (!c) continue;
      fds[n++] = c->poll_entry();
    }
    auto deadline = now + 50ms;
    if (!sub)
      deadline = std::min(deadline, std::max(next_connect, now));
    else
      deadline = heartbeat_deadline(deadline);
    deadline = durable.deadline(now, deadline);
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
            durable.on_reply(r);
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
        durable.want(wanted.streams, wanted.stream_patterns);
      }
      durable.interest_read(interest_read);
    }
    {
      // sent_* change here; the export thread reads them (remember_raw).
      std::lock_guard<std::mutex> lock(echo_mutex);
      diff_and_send(wanted.channels, sent_channels, "SUBSCRIBE", "UNSUBSCRIBE", now);
      diff_and_send(wanted.patterns, sent_patterns, "PSUBSCRIBE", "PUNSUBSCRIBE", now);
    }
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
