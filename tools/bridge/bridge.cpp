#include "bridge.hpp"

#include <poll.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <mutex>
#include <random>
#include <system_error>
#include <thread>
#include <vector>

#include "bridge_shared.hpp"
#include "cluster_discovery.hpp"
#include "durable_streams.hpp"
#include "exporter.hpp"
#include "local_imports.hpp"
#include "pubsub_imports.hpp"
#include "redis_connection.hpp"

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

// A link that lived this long is established: a failure after it is retried at once.
constexpr auto kStableLink = std::chrono::seconds(1);

}  // namespace

struct Bridge::Impl : BridgeShared {
  Impl(BridgeConfig config_in, ConnectOptions local_in, std::shared_ptr<spdlog::logger> logger)
      : BridgeShared(std::move(config_in), std::move(logger), random_nonce()),
        local(std::move(local_in)),
        imports(*this, local, [this] { pubsub.forget_routes(); }),
        pubsub(*this, imports),
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
  PubSubImports pubsub;                // Redis thread: subscriptions, imports (pubsub_imports.hpp)
  DurableStreams durable;              // Redis thread: stream reads (durable_streams.hpp)
  std::unique_ptr<Exporter> exporter;  // the export thread's (exporter.hpp)
  std::thread redis_thread, export_thread;
  std::mt19937_64 rng;  // Redis thread after construction (backoff jitter)

  // ---- the Redis thread: the link, subscriptions, imports -------------------------------

  bool ever_connected = false;
  // The routing of the last link, and whether it differed from the one before: a topology
  // change that a rediscovery did not find (an ASK during a migration, CLUSTERDOWN) is
  // retried with backoff like any failure; one that moved slots is followed at once.
  std::shared_ptr<const ShardRouting> last_routing;
  bool last_link_rerouted = false;
  int failed_attempts = 0;
  Clock::time_point next_connect{};
  Clock::time_point connected_at{};
  uint64_t awaited_heartbeat = 0;     // the unanswered heartbeat being timed, if above
  Clock::time_point awaited_since{};  // ... and when it was sent
  bool export_stall_logged = false;
  // redis_step's poll list, kept between passes (their capacity is reused).
  std::vector<RedisConnection*> conns;
  std::vector<pollfd> fds;
  // The local interest last handed to pubsub and durable (BridgeShared::interest_generation).
  uint64_t wanted_generation = ~uint64_t{0};

  RedisEndpoint endpoint() const {
    return {config.redis_host,     config.redis_port, config.redis_user,
            config.redis_password, config.redis_db,   config.connect_timeout};
  }

  // The link's shards: the one server, or the primaries of the cluster as the seed nodes
  // describe it now (blocking: each seed for up to connect_timeout). Throws
  // std::runtime_error when no seed answers or a slot is unserved.
  std::shared_ptr<const ShardRouting> find_shards() const {
    if (!config.cluster())
      return std::make_shared<const ShardRouting>(
          single_server_routing(endpoint(), heartbeat_channel));
    std::vector<RedisEndpoint> seeds;
    for (const auto& node : config.redis_nodes) {
      RedisEndpoint seed = endpoint();
      seed.host = node.host;
      seed.port = node.port;
      seed.db = 0;
      seeds.push_back(std::move(seed));
    }
    const Discovery found = discover_cluster(seeds);
    return std::make_shared<const ShardRouting>(
        cluster_routing(found.map, endpoint(), heartbeat_channel));
  }

  // Sharded pub/sub needs SPUBLISH and SSUBSCRIBE (Redis >= 7.0, not renamed away); a
  // single-server link needs a server that is not a cluster node (a cluster moves slots
  // away: use [redis] nodes). Throws std::runtime_error saying which and the way out, so
  // the link fails like a refused connection, with backoff, instead of coming up and
  // breaking at its first SSUBSCRIBE.
  void check_sharded_support(RedisConnection& connection, const RedisEndpoint& server) const {
    const std::string name = server.address();
    const redisReply* commands = round_trip(
        connection, {"COMMAND", "INFO", "SPUBLISH", "SSUBSCRIBE"}, config.connect_timeout);
    const bool known = commands->type == REDIS_REPLY_ARRAY && commands->elements == 2 &&
                       commands->element[0]->type == REDIS_REPLY_ARRAY &&
                       commands->element[1]->type == REDIS_REPLY_ARRAY;
    if (!known)
      throw std::runtime_error(
          "redis " + name +
          " lacks SPUBLISH / SSUBSCRIBE, which sharded pub/sub needs (Redis >= 7.0); upgrade "
          "Redis, or (on one server) set pubsub = \"classic\" on every bridge");
    if (config.cluster()) return;
    const redisReply* info = round_trip(connection, {"INFO", "cluster"}, config.connect_timeout);
    if (reply_text(info).find("cluster_enabled:1") != std::string_view::npos)
      throw std::runtime_error("redis " + name +
                               " is a Redis Cluster node: a single-server bridge would lose "
                               "sharded channels whose slots live on other nodes; list the "
                               "cluster's nodes in [redis] nodes (docs/CLUSTER.md), or use "
                               "pubsub = \"classic\"");
  }

  // When to try again after `failed_attempts` failures in a row: capped exponential backoff
  // with jitter, so bridges that lost the same Redis do not all come back in the same
  // millisecond.
  std::chrono::milliseconds retry_delay() {
    const double base = std::min<double>(static_cast<double>(config.backoff_max.count()),
                                         static_cast<double>(config.backoff_initial.count()) *
                                             std::pow(2.0, std::min(failed_attempts - 1, 30)));
    const double jittered = base * std::uniform_real_distribution<double>(0.5, 1.0)(rng);
    return std::chrono::milliseconds(static_cast<int64_t>(jittered));
  }

  void connect() {
    auto new_link = std::make_unique<LinkHandoff>();
    try {
      new_link->routing = find_shards();
      const ShardRouting& routing = *new_link->routing;
      last_link_rerouted = !last_routing || !same_routes(*last_routing, routing);
      last_routing = new_link->routing;
      std::vector<std::unique_ptr<RedisConnection>> new_subs, new_streams;
      for (const RedisEndpoint& server : routing.endpoints) {
        new_link->pubs.push_back(std::make_unique<RedisConnection>(server));
        if (config.sharded) check_sharded_support(*new_link->pubs.back(), server);
        new_subs.push_back(std::make_unique<RedisConnection>(server));
        if (durable.needed()) new_streams.push_back(std::make_unique<RedisConnection>(server));
      }
      pubsub.link_up(std::move(new_subs), new_link->routing);
      durable.link_up(std::move(new_streams), new_link->routing);
    } catch (const std::exception& e) {
      ++failed_attempts;
      const auto delay = retry_delay();
      next_connect = Clock::now() + delay;
      if (failed_attempts == 1 || failed_attempts % 10 == 0)
        log->warn("{} (attempt {}); retrying in {} ms", e.what(), failed_attempts, delay.count());
      return;
    }
    if (ever_connected) counters.reconnects.fetch_add(1, std::memory_order_relaxed);
    std::string shards;
    if (config.cluster()) {
      shards = " (" + std::to_string(new_link->routing->shards()) + " shards:";
      for (const auto& server : new_link->routing->endpoints) shards += " " + server.address();
      shards += ")";
    }
    log->info("connected to redis {}{}{}", config.redis_description(), shards,
              failed_attempts ? " after " + std::to_string(failed_attempts) + " failed attempt(s)"
                              : std::string());
    ever_connected = true;
    // failed_attempts is reset once the link has lived kStableLink (redis_step): a server
    // that accepts connections and then refuses what the link needs must not be retried
    // every backoff_initial forever.
    connected_at = Clock::now();
    export_stall_logged = false;
    awaited_heartbeat = 0;
    {
      // A new link generation; the export thread adopts its connections on its next pass.
      std::lock_guard<std::mutex> lock(link_mutex);
      handoff = std::move(new_link);
      link_generation.fetch_add(1, std::memory_order_release);
    }
    counters.connected = true;
    // Re-subscribe from our own registry (wanted), not from whatever the old connection held.
    wanted_generation = ~uint64_t{0};
  }

  void disconnect(const std::string& why, bool topology) {
    // A link that died young (Redis refusing what the link needs, say) counts as a failed
    // attempt, so the backoff grows and the log stays readable; an established one that
    // broke is retried at once (backoff_initial), as is one whose cluster changed when the
    // link before found a new topology (a reshard moves slot after slot: each move must not
    // slow the next reconnect down; a change no rediscovery shows, as an ASK during a
    // migration or CLUSTERDOWN, backs off like any failure).
    const auto now = Clock::now();
    const bool young =
        pubsub.linked() && now - connected_at < kStableLink && (!topology || !last_link_rerouted);
    std::chrono::milliseconds delay = config.backoff_initial;
    if (young) {
      ++failed_attempts;
      delay = retry_delay();
    }
    if (topology && !young)
      log->info("{}; rebuilding the link in {} ms", why, delay.count());
    else if (!young || failed_attempts == 1 || failed_attempts % 10 == 0)
      log->warn("redis connection lost: {}; reconnecting in {} ms{}", why, delay.count(),
                young ? " (attempt " + std::to_string(failed_attempts) + ")" : std::string());
    {
      // Retires `pub` (the export thread settles its in-flight commands) before `connected`
      // goes false: see "The link" in bridge_shared.hpp.
      std::lock_guard<std::mutex> lock(link_mutex);
      handoff.reset();
      link_generation.fetch_add(1, std::memory_order_acq_rel);
    }
    pubsub.link_down();
    durable.link_down();
    counters.connected = false;
    next_connect = now + delay;
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
      } catch (const TopologyChanged& e) {
        disconnect(e.what(), /*topology=*/true);
      } catch (const std::exception& e) {
        disconnect(e.what(), /*topology=*/false);
      }
    }
  }

  void redis_step() {
    const auto now = Clock::now();
    if (!pubsub.linked()) {
      if (now >= next_connect) connect();
    }
    if (pubsub.linked()) {
      if (failed_attempts != 0 && now - connected_at >= kStableLink) failed_attempts = 0;
      if (failed_generation.load(std::memory_order_acquire) ==
          link_generation.load(std::memory_order_relaxed)) {
        std::lock_guard<std::mutex> lock(link_mutex);
        if (pub_failure_topology) throw TopologyChanged(pub_failure);
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
      for (const auto& sub : pubsub.connections()) sub->flush();
      for (const auto& streams : durable.connections()) streams->flush();
    }
    durable.maintain(now);

    // The subscriber connections (one per shard), then the stream connections; the lists
    // are kept between passes, so a pass allocates nothing.
    conns.clear();
    for (const auto& sub : pubsub.connections()) conns.push_back(sub.get());
    const size_t subs = conns.size();
    for (const auto& streams : durable.connections()) conns.push_back(streams.get());
    fds.assign(1, {wake_fd, POLLIN, 0});
    for (RedisConnection* c : conns) fds.push_back(c->poll_entry());
    auto deadline = now + 50ms;
    if (subs == 0)
      deadline = std::min(deadline, std::max(next_connect, now));
    else
      deadline = heartbeat_deadline(deadline);
    deadline = durable.deadline(now, deadline);
    // Rounded up: rounded down, poll would wake just before the deadline and spin until it.
    const auto timeout = std::chrono::ceil<std::chrono::milliseconds>(deadline - now);
    if (poll(fds.data(), fds.size(), static_cast<int>(std::max<int64_t>(0, timeout.count()))) < 0) {
      if (errno == EINTR) return;
      throw std::system_error(errno, std::generic_category(), "poll");
    }
    if (fds[0].revents & POLLIN) {
      uint64_t value;
      [[maybe_unused]] auto r = ::read(wake_fd, &value, sizeof value);
    }
    for (size_t i = 0; i < conns.size(); ++i) {
      if (!(fds[i + 1].revents & (POLLIN | POLLERR | POLLHUP))) continue;
      RedisConnection* c = conns[i];
      c->read();
      while (const redisReply* r = c->next_reply()) {
        if (i < subs)
          pubsub.on_reply(r);
        else
          durable.on_reply(r);
        if (!pubsub.linked()) return;  // a reply handler disconnected
      }
    }
  }

  // ---- subscriptions ----

  void apply_interest(Clock::time_point now) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (interest_generation != wanted_generation) {
        wanted_generation = interest_generation;
        pubsub.want(interest.channels, interest.patterns, interest.shard_channels);
        durable.want(interest.streams, interest.stream_patterns);
      }
      durable.interest_read(interest_read);
    }
    pubsub.apply(now);
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
    if (this_link && newest.number > pubsub.newest_heartbeat_seen()) {
      export_stall_logged = false;
      // Timed from the first unanswered heartbeat we noticed; later ones do not restart it.
      if (awaited_heartbeat <= pubsub.newest_heartbeat_seen()) {
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
    if (awaited_heartbeat <= pubsub.newest_heartbeat_seen()) return otherwise;
    return std::min(otherwise, awaited_since + config.heartbeat_timeout + 1ms);
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
