#include "exporter.hpp"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <deque>
#include <optional>
#include <thread>

#include "envelope.hpp"
#include "interest_globs.hpp"
#include "key_slot.hpp"
#include "outbound_queue.hpp"
#include "shmbus/subscription.hpp"
#include "string_hash.hpp"

namespace shmbus::bridge {

using namespace std::chrono_literals;

namespace {

// At most this many commands wait for their reply on the publishing connection: enough
// that Redis, not this limit, sets the pace of a burst (at 4,096 the export thread met the
// limit often and queued messages, a copy and a malloc each, while Redis caught up:
// bridge_bench went from 88-102 % to 103-119 % of plain Redis, with the plain pair's
// window raised to match). A broken connection makes the PUBLISHes in flight uncertain,
// counted as in_flight_at_disconnect: at most ~12 ms of traffic at 1.3 M msg/s.
constexpr size_t kMaxInFlight = 16384;
// At most this many bytes wait unwritten in the publishing connection's buffer: large
// messages count by size, not by command (16,384 of 1 MiB would be 16 GiB in its output
// buffer, ahead of every heartbeat). Beyond it, exports wait in the bounded queue.
constexpr size_t kMaxUnwrittenBytes = 8u << 20;
// Messages the export thread takes from the ring before it writes them to Redis, so a
// burst goes out in few write()s (256 cost ~10% of the throughput).
constexpr size_t kExportBatch = 1024;
// stop() waits this long at most for what the export thread holds to reach Redis.
constexpr auto kDrainOnStop = 2s;
// While replies are due, the export thread reads them at least this often.
constexpr auto kReplyCheck = 1ms;
// While Redis holds the export thread up (socket full, kMaxInFlight reached), it waits on
// the socket at most this long before draining the ring into the queue again.
constexpr auto kRedisBoundWait = 200us;
// Channels known at once (export_channels); past it they are worked out (and numbered)
// afresh.
constexpr size_t kMaxNumberedChannels = 1 << 16;
// A WAIT for a replica to have the durable writes may take at most this long (replicas
// answer within a round trip when they are up), and less than half the time a heartbeat
// has to come back: everything behind a blocked WAIT on its connection waits with it.
constexpr auto kReplicaWaitMax = 1000ms;
// After a WAIT that no replica answered, XADDs stop waiting for this long, then try again.
constexpr auto kReplicaWaitSuspend = 10s;

std::string_view text_of(std::span<const std::byte> b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

// Errors after which the same command succeeds later (see Redis's shared error replies).
bool is_transient_error(std::string_view error) {
  return starts_with_any(error, {"LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "READONLY", "OOM"});
}

// What a command on the publishing connection was, for its reply. One byte: a million
// are sent a second, and a deque of them allocates one block per 512 (a message kept in
// each, as before, made that one per four).
enum class Sent : uint8_t { kPublish, kXadd, kHeartbeat, kWait };

}  // namespace

struct Exporter::State {
  State(BridgeShared& shared_in, const ConnectOptions& local)
      : shared(shared_in),
        interest_bus(Bus::connect(local)),
        export_sub(Subscription::open(local)),
        pattern_prefix(escape_glob(shared.config.redis_prefix)) {
    for (const auto& rule : shared.config.exports) {
      own_export_patterns.insert(rule.pattern);
      publish_command.push_back(shared.config.shards(rule) ? "SPUBLISH" : "PUBLISH");
    }
    if (shared.config.exports.empty()) return;
    std::vector<std::string> patterns(own_export_patterns.begin(), own_export_patterns.end());
    export_sub.psubscribe(patterns);
    // The export thread sleeps as soon as the ring is empty. Its PUBLISH wakes Redis, and
    // Redis's reply wakes the Redis thread; on a small machine those often run on this
    // thread's CPU, where a 20 us spin would hold each of them up by as much.
    export_sub.set_spin(std::chrono::nanoseconds(0));
    // Imported messages are never exported (origin != 0, see "No echoes" in bridge.hpp):
    // do not even wake for them.
    export_sub.set_local_only(true);
  }

  BridgeShared& shared;
  Bus interest_bus;         // reads interest, publishes counters
  Subscription export_sub;  // the export rules' patterns
  // Per export rule (same index as config.exports), the command its pub/sub messages go
  // by: worked out once, not per message.
  std::vector<std::string_view> publish_command;
  std::set<std::string> own_export_patterns;
  std::string pattern_prefix;  // the Redis prefix, glob-escaped

  // The publishing connection to one shard of the link, and what awaits its replies.
  struct PubShard {
    std::unique_ptr<RedisConnection> conn;
    std::deque<Sent> in_flight;  // commands awaiting replies, in order
    // The messages of the kXadd entries of in_flight, in the same order: a durable message
    // is sent again if the connection breaks before its XADD is acknowledged.
    OutboundQueue xadds_in_flight;
    // On a shard with a replica: XADDs the primary acknowledged, kept until a WAIT after
    // them says a replica has them too. Redis replicates asynchronously, so a primary
    // killed before that would lose them with its replica promoted; sent again instead
    // (readers drop the copies that did land: origin_sequences.hpp). One WAIT at a time:
    // Redis runs nothing else from a client blocked in WAIT, so a second would only hold
    // the PUBLISHes and heartbeats behind it longer.
    bool replicated = false;         // XADDs wait for a replica now
    bool wait_due = false;           // an XADD went out since the last WAIT was sent
    bool wait_in_flight = false;     // a WAIT is out, its answer not read yet
    Clock::time_point wait_again{};  // after a WAIT no replica answered: waiting resumes then
    OutboundQueue xadds_unreplicated;
  };
  // Adopted from `handoff`, one per shard of `routing`; empty while no link is adopted.
  std::vector<PubShard> pubs;
  std::shared_ptr<const ShardRouting> routing;  // of the adopted link
  std::vector<pollfd> pub_fds;                  // poll_entries()'s, reused
  uint64_t pub_generation = 0;
  uint64_t heartbeats_sent = 0;
  Clock::time_point next_heartbeat{};
  // Messages waiting for their shard's publishing connection (none adopted, kMaxInFlight or
  // kMaxUnwrittenBytes reached). One FIFO for every shard, so the messages of a channel
  // keep their order. While it is empty and the shard has room, messages go straight into
  // its output buffer instead.
  OutboundQueue queue;
  std::string key_buffer, body_buffer;  // reused per message
  // The WAIT timeout (kReplicaWaitMax, or less with a short heartbeat_timeout), in ms.
  const std::string replica_wait_ms = std::to_string(
      std::clamp(std::chrono::duration_cast<std::chrono::milliseconds>(
                     (shared.config.heartbeat_timeout - shared.config.heartbeat_interval) / 2),
                 std::chrono::milliseconds(10), std::chrono::milliseconds(kReplicaWaitMax))
          .count());
  // What the export path works out once per local channel instead of per message: its
  // export rule (the first that matches: a scan of every rule), the hash slot of its Redis
  // name, and the number the next message exported on it carries (envelope or stream
  // entry). That number is not the ring's sequence: the ring also numbers the messages
  // imported into the channel, which are never exported, so a host that both publishes and
  // imports on a channel would make every receiver count each import as lost in transit.
  // A message the ring lost before this thread read it (lost_before) keeps its number, so
  // receivers see that loss too. Past kMaxNumberedChannels all are forgotten and the
  // numbering starts over: a lower number with a newer publish time is a restart to
  // receivers (origin_sequences.hpp), not a loss.
  struct ExportChannel {
    const Rule* rule = nullptr;  // nullptr: no export rule matches
    uint16_t slot = 0;           // key_slot(prefix + channel)
    bool by_slot = false;        // on a cluster, routed by `slot` (shard_for)
    uint64_t next_sequence = 0;
  };
  StringMap<ExportChannel> export_channels;
  ExportChannel* last_channel = nullptr;  // the entry of the last message's channel
  std::string_view last_channel_name;     // its key (nodes do not move on rehash)
  CounterSnapshot last_reported{};        // export thread: the counters of the last report

  void run() {
    block_sigpipe();
    auto next_interest = Clock::now();
    auto next_stats = Clock::now() + shared.config.stats_interval;
    std::optional<Channel> stats_out;
    while (!shared.stopping.load(std::memory_order_relaxed)) {
      try {
        const auto now = Clock::now();
        if (now >= next_interest) {
          publish_interest(read_interest());
          next_interest = now + shared.config.interest_interval;
        }
        if (now >= next_stats) {
          // One snapshot for the line and for the test of it: at info only when something
          // happened since the last report, so an idle bridge does not fill the journal
          // with a line a second.
          const CounterSnapshot now_counts = shared.counters.snapshot();
          const std::string report = shared.json(now_counts);
          shared.log->log(
              changed_since(last_reported, now_counts) ? spdlog::level::info : spdlog::level::debug,
              "counters {}", report);
          last_reported = now_counts;
          // The channel's ring keeps the latest reports for `shmbus stats`, which reads it
          // from the earliest message still held. Opened without settings: a reader may
          // have created it first, with the daemon's defaults.
          if (!stats_out) stats_out.emplace(interest_bus.channel(shared.stats_channel()));
          // Our own origin: never exported, even under an export rule such as "*".
          stats_out->try_publish(bytes_of(report), 0ns, shared.config.host_id);
          shared.counters.lag_max.store(0, std::memory_order_relaxed);
          next_stats = now + shared.config.stats_interval;
        }
        follow_link();
        if (linked() && now >= next_heartbeat) send_heartbeat(now);
        // Drain a batch, then write it with one write() before looking at the clock again.
        size_t drained = 0;
        if (!shared.config.exports.empty()) {
          for (; drained < kExportBatch; ++drained) {
            auto m = export_sub.next(0ns);
            if (!m) break;
            export_message(*m);
          }
        }
        send_queued();
        service_pub();
        if (drained == kExportBatch) continue;  // the ring may hold more: no waiting
        wait_for_work(std::min(next_interest, next_stats));
      } catch (const Error& e) {
        if (e.code() == Errc::kDaemonGone) {
          shared.log->error("the local shmbusd stopped: {}; the bridge stops relaying", e.what());
          shared.local_bus_gone = true;
          return;
        }
        shared.log->error("local bus: {}", e.what());
        std::this_thread::sleep_for(100ms);
      }
    }
    drain_on_stop();
  }

  // stop(): what was already taken from the ring goes out to Redis (and is acknowledged)
  // before the thread ends, for up to kDrainOnStop; what cannot is counted, never lost
  // silently. Durable XADDs are what matters most here: the local ring will not give them
  // again after a restart.
  void drain_on_stop() {
    const auto until = Clock::now() + kDrainOnStop;
    follow_link();  // a link the Redis thread made that this thread had not taken up yet
    while (linked() && (!queue.empty() || any_in_flight()) && Clock::now() < until) {
      send_queued();
      service_pub();
      if (!linked()) break;
      std::vector<pollfd>& fds = poll_entries();
      poll(fds.data(), fds.size(), 10);
    }
    if (linked()) retire_pub();  // unacknowledged PUBLISHes: kInFlight; XADDs back in the queue
    if (!queue.empty()) {
      shared.drop(Drop::kStopped, queue.size(), [&] {
        return "messages still queued for Redis when the bridge stopped (Redis away or slow for " +
               std::to_string(
                   std::chrono::duration_cast<std::chrono::milliseconds>(kDrainOnStop).count()) +
               " ms)";
      });
      queue.clear();
      note_queue();
    }
  }

  // Parks until there is work: a message on the ring (on the bus futex, woken by the
  // publisher itself), Redis making room or answering when it is what holds us up, or the
  // next timer. Replies are read on the next pass; while some are due, at most
  // kReplyCheck passes between two reads, so in_flight and `exported` stay current.
  void wait_for_work(Clock::time_point until) {
    if (linked()) until = std::min(until, next_heartbeat);
    auto wait = std::chrono::duration_cast<std::chrono::nanoseconds>(until - Clock::now());
    wait = std::clamp(wait, std::chrono::nanoseconds(0), std::chrono::nanoseconds(20ms));
    if (any_in_flight()) wait = std::min<std::chrono::nanoseconds>(wait, kReplyCheck);
    bool redis_bound = !queue.empty() && linked() && !pub_ready(shard_for(queue.front()));
    for (const PubShard& p : pubs) redis_bound = redis_bound || p.conn->output_pending();
    if (redis_bound || (linked() && shared.config.exports.empty())) {
      // Redis, not the ring, is what we wait for: its sockets say when to go on. Short
      // while exporting, so the ring is drained into the queue meanwhile.
      if (redis_bound) wait = std::min<std::chrono::nanoseconds>(wait, kRedisBoundWait);
      std::vector<pollfd>& fds = poll_entries();
      const timespec ts{static_cast<time_t>(wait.count() / 1'000'000'000),
                        static_cast<long>(wait.count() % 1'000'000'000)};
      ppoll(fds.data(), fds.size(), &ts, nullptr);  // EINTR or a timeout: the next pass looks again
      return;
    }
    if (shared.config.exports.empty()) {
      std::this_thread::sleep_for(wait);
      return;
    }
    if (auto m = export_sub.next(wait)) export_message(*m);
  }

  bool linked() const { return !pubs.empty(); }

  bool any_in_flight() const {
    return std::any_of(pubs.begin(), pubs.end(),
                       [](const PubShard& p) { return !p.in_flight.empty(); });
  }

  // The publishing connections' poll entries, in pub_fds (kept between waits: a wait
  // while Redis holds the thread up comes every kRedisBoundWait, and allocates nothing).
  std::vector<pollfd>& poll_entries() {
    pub_fds.clear();
    for (const PubShard& p : pubs) pub_fds.push_back(p.conn->poll_entry());
    return pub_fds;
  }

  // Adopts the publishing connections of the current link generation, and retires those
  // whose generation has passed (the Redis thread found the link dead).
  void follow_link() {
    const uint64_t generation = shared.link_generation.load(std::memory_order_acquire);
    if (linked() && pub_generation == generation) return;
    if (linked()) retire_pub();
    std::lock_guard<std::mutex> lock(shared.link_mutex);
    // Under link_mutex a waiting `handoff` always belongs to the current generation: the
    // Redis thread sets the two together and drops `handoff` when it moves the generation.
    if (shared.handoff) {
      routing = std::move(shared.handoff->routing);
      for (size_t i = 0; i < shared.handoff->pubs.size(); ++i) {
        PubShard& p = pubs.emplace_back();
        p.conn = std::move(shared.handoff->pubs[i]);
        p.replicated = routing->replicas[i] > 0;
      }
      shared.handoff.reset();
      pub_generation = shared.link_generation.load(std::memory_order_relaxed);
      next_heartbeat = Clock::now();
    }
  }

  // The shard a message goes to: a sharded channel's or stream key's owner on a cluster,
  // shard 0 for classic pub/sub (and for everything on one server).
  size_t shard_for(const OutboundQueue::Item& item) const {
    return item.by_slot ? routing->shard_of_slot_number(item.slot) : 0;
  }

  // Shard `shard` may take a message now: adopted, of the current link, with room in
  // flight, and little enough unwritten that a heartbeat appended now goes out soon.
  bool pub_ready(size_t shard) const {
    if (!linked() || pub_generation != shared.link_generation.load(std::memory_order_acquire))
      return false;
    const PubShard& p = pubs[shard];
    return p.in_flight.size() < kMaxInFlight && p.conn->output_bytes() < kMaxUnwrittenBytes;
  }

  // The link's publishing connections are gone (one broke here, or the Redis thread
  // retired the link): settles what was in flight on them.
  void retire_pub() {
    uint64_t uncertain = 0;
    // Durable: XADD again, first in line (per shard the unreplicated ones, older, before
    // those in flight); readers drop the copy if the first one landed. A stream key lives on
    // one shard, so each key's XADDs keep their order. Gathered first, so the queue is
    // moved once, not twice per shard.
    OutboundQueue resend;
    const auto move_all = [&resend](OutboundQueue& from) {
      for (; !from.empty(); from.pop_front()) resend.push_back(from.front());
    };
    for (PubShard& p : pubs) {
      uncertain +=
          static_cast<uint64_t>(std::count(p.in_flight.begin(), p.in_flight.end(), Sent::kPublish));
      move_all(p.xadds_unreplicated);
      move_all(p.xadds_in_flight);
      // Unsent bytes are dropped with the socket (RST), not delivered late by the kernel on
      // a link the Redis thread has already replaced.
      const linger discard{1, 0};
      setsockopt(p.conn->fd(), SOL_SOCKET, SO_LINGER, &discard, sizeof discard);
    }
    if (!resend.empty()) queue.put_first(std::move(resend));
    pubs.clear();
    routing.reset();
    note_queue();
    if (uncertain)
      shared.drop(Drop::kInFlight, uncertain,
                  "PUBLISH sent but unacknowledged when the connection broke; delivery unknown");
  }

  // A failure met on `pub`: retire it and have the Redis thread take the link down.
  void pub_failed(const std::string& why, bool topology) {
    const uint64_t generation = pub_generation;
    retire_pub();
    {
      std::lock_guard<std::mutex> lock(shared.link_mutex);
      shared.pub_failure = why;
      shared.pub_failure_topology = topology;
    }
    shared.failed_generation.store(generation, std::memory_order_release);
    shared.wake();
  }

  // Heartbeat n goes out on every shard, each on its own channel (shard_routing.hpp).
  void send_heartbeat(Clock::time_point now) {
    // A link retired since follow_link(): its heartbeat could never come back.
    if (pub_generation != shared.link_generation.load(std::memory_order_acquire)) return;
    ++heartbeats_sent;
    const std::string n = std::to_string(heartbeats_sent);
    for (size_t i = 0; i < pubs.size(); ++i) {
      pubs[i].conn->append({routing->heartbeat_publish(), routing->heartbeat_channels[i], n});
      pubs[i].in_flight.push_back(Sent::kHeartbeat);
    }
    next_heartbeat = now + shared.config.heartbeat_interval;
    std::lock_guard<std::mutex> lock(shared.link_mutex);
    shared.newest_heartbeat = {pub_generation, heartbeats_sent, now};
  }

  void export_message(const Message& m) {
    if (m.lost_before > 0)
      shared.drop(Drop::kLocalLapped, m.lost_before, [&] {
        return "the export subscriber was lapped on '" + std::string(m.channel) +
               "'; give the channel a larger ring_bytes in shmbusd.toml";
      });
    // Imported messages (and our counters) are never sent back out: no loops.
    if (m.origin != 0) return;
    if (m.channel.starts_with(kReservedPrefix)) return;
    ExportChannel& channel = export_channel(m.channel);
    const Rule* rule = channel.rule;
    // A channel matching several export patterns is delivered once per pattern: keep one.
    if (rule == nullptr || rule->pattern != m.pattern) return;
    if (m.payload.size() > shared.config.max_payload_bytes) {
      shared.drop(Drop::kOversized, 1, [&] {
        return std::to_string(m.payload.size()) + " bytes on '" + std::string(m.channel) +
               "' exceed max_payload_bytes = " + std::to_string(shared.config.max_payload_bytes) +
               "; raise it in [bridge]";
      });
      return;
    }
    key_buffer.assign(shared.config.redis_prefix).append(m.channel);
    channel.next_sequence += m.lost_before;
    const uint64_t sequence = channel.next_sequence++;
    const bool envelope = rule->mode == Mode::kEnvelope && !rule->durable;
    if (envelope)
      encode_envelope({shared.config.host_id, sequence, m.publish_unix_ns}, m.payload, body_buffer);
    const std::string_view body = envelope ? std::string_view(body_buffer) : text_of(m.payload);
    // Nothing waiting ahead of it: straight into pub's output buffer, no copy in the queue.
    // Durable messages always take the queue: send_queued() keeps a copy of each for a
    // resend.
    if (!rule->durable && queue.empty() && linked()) {
      const size_t shard = channel.by_slot ? routing->shard_of_slot_number(channel.slot) : 0;
      if (pub_ready(shard)) {
        publish(pubs[shard], key_buffer, body, *rule);
        return;
      }
    }
    enqueue({key_buffer, body, rule, sequence, m.publish_unix_ns, channel.slot, channel.by_slot});
  }

  // The export_channels entry of `name`: a burst on one channel finds it without a lookup.
  ExportChannel& export_channel(std::string_view name) {
    if (last_channel != nullptr && name == last_channel_name) return *last_channel;
    if (export_channels.size() >= kMaxNumberedChannels) {
      export_channels.clear();
      last_channel = nullptr;
    }
    auto it = export_channels.find(name);
    if (it == export_channels.end()) {
      ExportChannel fresh;
      fresh.rule = BridgeConfig::first_match(shared.config.exports, name);
      key_buffer.assign(shared.config.redis_prefix).append(name);
      fresh.slot = key_slot(key_buffer);
      fresh.by_slot = fresh.rule && (fresh.rule->durable || shared.config.shards(*fresh.rule));
      it = export_channels.emplace(name, fresh).first;
    }
    last_channel = &it->second;
    last_channel_name = it->first;
    return *last_channel;
  }

  void enqueue(const OutboundQueue::Item& item) {
    uint64_t dropped = 0;
    queue.push_back(item);
    // Drop-oldest: while Redis is away the freshest messages are the ones worth keeping.
    while (queue.size() > shared.config.queue_messages ||
           (queue.bytes() > shared.config.queue_bytes && queue.size() > 1)) {
      queue.pop_front();
      ++dropped;
    }
    note_queue();
    if (dropped)
      shared.drop(Drop::kQueueFull, dropped, [&] {
        return "outbound queue full (queue_messages = " +
               std::to_string(shared.config.queue_messages) +
               ", queue_bytes = " + std::to_string(shared.config.queue_bytes) +
               "); Redis is down or slower than the local publishers";
      });
  }

  void note_queue() {
    shared.counters.queue_depth.store(queue.size(), std::memory_order_relaxed);
    shared.counters.queue_bytes.store(queue.bytes(), std::memory_order_relaxed);
    shared.counters.queue_held_bytes.store(queue.held_bytes(), std::memory_order_relaxed);
  }

  // Moves what the queue holds into the shards' output buffers, in order, as far as
  // pub_ready() allows.
  void send_queued() {
    if (queue.empty()) return;
    const auto now = Clock::now();
    // Waiting resumes after a suspension on a shard whose topology lists a replica.
    for (size_t i = 0; i < pubs.size(); ++i)
      if (routing->replicas[i] > 0 && !pubs[i].replicated && now >= pubs[i].wait_again)
        pubs[i].replicated = true;
    while (!queue.empty() && linked()) {
      const OutboundQueue::Item out = queue.front();
      const size_t shard = shard_for(out);
      if (!pub_ready(shard)) break;
      PubShard& p = pubs[shard];
      if (out.rule->durable) {
        const std::string maxlen = std::to_string(out.rule->stream_maxlen);
        const std::string origin = std::to_string(shared.config.host_id);
        const std::string seq = std::to_string(out.sequence);
        const std::string ts = std::to_string(out.publish_unix_ns);
        p.conn->append({"XADD", out.key, "MAXLEN", "~", maxlen, "*", "payload", out.body, "origin",
                        origin, "seq", seq, "ts", ts});
        p.in_flight.push_back(Sent::kXadd);
        p.xadds_in_flight.push_back(out);
        p.wait_due = p.replicated;
      } else {
        publish(p, out.key, out.body, *out.rule);
      }
      queue.pop_front();  // last: `out` views into the queue
    }
    for (PubShard& p : pubs) send_wait(p);
    note_queue();
  }

  // A WAIT after the XADDs sent since the last one, unless one is out already (its answer
  // sends the next): it answers once a replica has them all.
  void send_wait(PubShard& p) {
    if (!p.wait_due || p.wait_in_flight || !p.replicated) return;
    p.conn->append({"WAIT", "1", replica_wait_ms});
    p.in_flight.push_back(Sent::kWait);
    p.wait_due = false;
    p.wait_in_flight = true;
  }

  void publish(PubShard& p, std::string_view key, std::string_view body, const Rule& rule) {
    if (rule.mode == Mode::kRaw) remember_raw(key, body);
    // Sharded rules are envelope rules: their echoes are known by origin, not remembered.
    p.conn->append({publish_command[&rule - shared.config.exports.data()], key, body});
    p.in_flight.push_back(Sent::kPublish);
  }

  // A raw payload about to be PUBLISHed on a channel our subscriber connection covers will
  // come back: remember it (see "No echoes" in bridge.hpp), tagged with the heartbeats
  // already sent, so the next heartbeat to come back forgets it if it does not.
  void remember_raw(std::string_view channel, std::string_view body) {
    std::lock_guard<std::mutex> lock(shared.echo_mutex);
    if (!shared.covered_by_sent(channel)) return;
    shared.raw_echoes.remember(channel, body, heartbeats_sent);
  }

  // Writes what the publishing connections hold and reads what Redis answered, without
  // blocking.
  void service_pub() {
    if (!linked()) return;
    // Retired by the Redis thread since follow_link(): what is still unsent must not go out
    // on it (its echoes would reach the new link's subscriber with no record to match).
    if (pub_generation != shared.link_generation.load(std::memory_order_acquire)) {
      retire_pub();
      return;
    }
    try {
      for (PubShard& p : pubs) {
        if (p.conn->output_pending()) p.conn->flush();
        // Read even with nothing in flight: an EOF (Redis closed the connection) must be
        // seen now, not by the next heartbeat, or an import-only bridge's poll spins on it.
        p.conn->read();
        while (const redisReply* r = p.conn->next_reply()) on_pub_reply(p, r);
      }
    } catch (const TopologyChanged& e) {
      pub_failed(e.what(), /*topology=*/true);
    } catch (const std::exception& e) {
      pub_failed(e.what(), /*topology=*/false);
    }
  }

  void on_pub_reply(PubShard& p, const redisReply* r) {
    if (p.in_flight.empty()) throw std::runtime_error("a reply to no command on the publisher");
    const Sent sent = p.in_flight.front();
    const bool refused = r->type == REDIS_REPLY_ERROR;
    const std::string_view error = reply_text(r);
    // A Redis that is loading its data after a restart (or otherwise briefly unable to
    // write), or a cluster whose slot moved, refuses XADD; a durable message stays in
    // flight, and retire_pub() (which the throw leads to) sends it again on the next link.
    if (refused && sent == Sent::kXadd && is_topology_error(error))
      throw TopologyChanged("a durable write was redirected: " + std::string(error));
    if (refused && sent == Sent::kXadd && is_transient_error(error))
      throw std::runtime_error("Redis refused a durable write for now: " + std::string(error));
    p.in_flight.pop_front();
    if (sent == Sent::kWait) {
      on_wait_reply(p, r);
      return;
    }
    if (sent == Sent::kXadd) {
      if (p.replicated && !refused) p.xadds_unreplicated.push_back(p.xadds_in_flight.front());
      p.xadds_in_flight.pop_front();
    }
    if (!refused) {
      if (sent != Sent::kHeartbeat)
        shared.counters.exported.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (sent != Sent::kHeartbeat)
      shared.drop(Drop::kRedisError, 1, [&] { return "Redis refused: " + std::string(error); });
    // The message is lost (counted above); the link is rebuilt on a fresh topology, so the
    // channel's next messages go to its new owner. A heartbeat's slot moves too.
    if (is_topology_error(error))
      throw TopologyChanged("the cluster's topology changed: " + std::string(error));
    if (sent == Sent::kHeartbeat)
      throw std::runtime_error("heartbeat PUBLISH refused: " + std::string(error));
  }

  // The XADDs before a WAIT are on a replica: forgotten. Or no replica answered in time
  // (one is resyncing, paused, or down and not yet marked failed): they stay kept, to be
  // sent again when the link ends (or forgotten once a later WAIT succeeds), and XADDs stop
  // waiting for kReplicaWaitSuspend, with a line in the log, so a missing replica does not
  // stall the shard's connection a WAIT at a time.
  void on_wait_reply(PubShard& p, const redisReply* r) {
    p.wait_in_flight = false;
    if (r->type == REDIS_REPLY_INTEGER && r->integer >= 1) {
      p.xadds_unreplicated.clear();
    } else if (p.replicated) {
      const std::string why = r->type == REDIS_REPLY_INTEGER
                                  ? "no replica acknowledged within " + replica_wait_ms + " ms"
                                  : "WAIT refused: " + std::string(reply_text(r));
      shared.log->warn(
          "durable writes to {} are not known to be replicated ({}); they go on without "
          "waiting for a replica for {} s",
          routing->endpoints[&p - pubs.data()].address(), why,
          std::chrono::duration_cast<std::chrono::seconds>(kReplicaWaitSuspend).count());
      p.replicated = false;
      p.wait_again = Clock::now() + kReplicaWaitSuspend;
    }
    send_wait(p);
  }

  // Where a local interest in the channel `name` of `rule` goes: a stream, a sharded
  // channel, or a classic one.
  NameSet& by_name(Interest& in, const Rule& rule) const {
    if (rule.durable) return in.streams;
    return shared.config.shards(rule) ? in.shard_channels : in.channels;
  }

  Interest read_interest() {
    Interest in;
    for (const auto& rule : shared.config.imports) {
      for (auto& ch : interest_bus.channels(rule.pattern)) {
        if (ch.starts_with(kReservedPrefix)) continue;
        if (BridgeConfig::first_match(shared.config.imports, ch) != &rule) continue;
        by_name(in, rule).insert(shared.config.redis_prefix + ch);
      }
    }
    for (const auto& p : interest_bus.patterns()) {
      // Our own export subscription is no local interest.
      const uint64_t ours = own_export_patterns.count(p.pattern) ? 1 : 0;
      if (p.subscribers <= ours) continue;
      if (!glob_has_wildcards(p.pattern)) {
        const Rule* rule = BridgeConfig::first_match(shared.config.imports, p.pattern);
        if (rule && !p.pattern.starts_with(kReservedPrefix))
          by_name(in, *rule).insert(shared.config.redis_prefix + p.pattern);
        continue;
      }
      for (const auto& rule : shared.config.imports) {
        // A sharded rule names one channel, and sharded channels cannot be subscribed by
        // pattern: the pattern wants that channel by name, if it matches it and the rule is
        // the channel's first.
        if (shared.config.shards(rule)) {
          if (glob_match(p.pattern, rule.pattern) &&
              BridgeConfig::first_match(shared.config.imports, rule.pattern) == &rule)
            in.shard_channels.insert(shared.config.redis_prefix + rule.pattern);
          continue;
        }
        // Durable rules are read by stream key: the streams a pattern matches are found by
        // SCAN (DurableStreams::send_command), and checked against the rules when found.
        NameSet& to = rule.durable ? in.stream_patterns : in.patterns;
        if (provably_contains(p.pattern, rule.pattern))
          to.insert(pattern_prefix + rule.pattern);  // all the rule allows
        else if (may_overlap(p.pattern, rule.pattern))
          to.insert(pattern_prefix + p.pattern);  // filtered by the rules on arrival
      }
    }
    // A channel a pattern already covers would only arrive twice.
    std::erase_if(in.channels,
                  [&](const std::string& ch) { return any_glob_matches(in.patterns, ch); });
    return in;
  }

  void publish_interest(Interest in) {
    {
      std::lock_guard<std::mutex> lock(shared.mutex);
      shared.interest_read = true;
      if (in == shared.interest) return;
      shared.interest = std::move(in);
      ++shared.interest_generation;
    }
    shared.wake();
  }
};

Exporter::Exporter(BridgeShared& shared, const ConnectOptions& local)
    : state_(std::make_unique<State>(shared, local)) {}
Exporter::~Exporter() = default;
void Exporter::run() {
  state_->run();
}

}  // namespace shmbus::bridge
