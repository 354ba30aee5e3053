#include "pubsub_imports.hpp"

#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "envelope.hpp"
#include "key_slot.hpp"
#include "origin_sequences.hpp"
#include "string_hash.hpp"

namespace shmbus::bridge {

struct PubSubImports::State {
  State(BridgeShared& shared_in, LocalImports& imports_in)
      : shared(shared_in), imports(imports_in) {}

  BridgeShared& shared;
  LocalImports& imports;
  // One subscriber connection per shard of `routing` (shard_routing.hpp); empty while the
  // link is down.
  std::vector<std::unique_ptr<RedisConnection>> subs;
  std::shared_ptr<const ShardRouting> routing;  // of the current link
  // Per shard, the highest heartbeat number received on its connection; and the lowest of
  // those: heartbeats up to it came back on every shard.
  std::vector<uint64_t> heartbeat_seen;
  uint64_t newest_heartbeat_seen = 0;

  // Subscriptions: what we asked for (sent_*, shared: see echo_mutex), and what Redis
  // confirmed, in the order of the reply stream (confirmed_*; see "No duplicates" in
  // bridge.hpp).
  NameSet wanted_channels, wanted_patterns;  // the local interest (want())
  NameSet confirmed_channels, confirmed_patterns;
  // Sharded channels (BridgeConfig::shards): SSUBSCRIBEd by name only, and of envelope
  // rules only, so neither the raw echo ledger nor the designated-copy choice involves
  // them (Redis never delivers an SPUBLISH to a pattern). Redis thread only.
  NameSet wanted_shard_channels, sent_shard_channels, confirmed_shard_channels;
  // SUNSUBSCRIBEs sent and not yet answered, per channel: a `sunsubscribe` beyond these is
  // Redis's own doing. Counted, not flagged: the channel may be wanted, SSUBSCRIBEd and
  // left again before Redis answers the first.
  std::unordered_map<std::string, uint32_t> sunsubscribes_in_flight;
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
  StringMap<ImportRoute> routes;

  void forget_routes() { routes.clear(); }

  void link_up(std::vector<std::unique_ptr<RedisConnection>> connections,
               std::shared_ptr<const ShardRouting> link_routing) {
    subs = std::move(connections);
    routing = std::move(link_routing);
    // Heartbeats of the new link are numbered past every earlier one.
    heartbeat_seen.assign(subs.size(), newest_heartbeat_seen);
    std::lock_guard<std::mutex> lock(shared.echo_mutex);
    for (size_t i = 0; i < subs.size(); ++i) {
      const std::string& channel = routing->heartbeat_channels[i];
      subs[i]->append({routing->heartbeat_subscribe(), channel});
      (routing->cluster ? sent_shard_channels : shared.sent_channels).insert(channel);
    }
  }

  bool is_heartbeat(std::string_view channel) const {
    return routing->heartbeat_shard(channel) < routing->shards();
  }

  void link_down() {
    subs.clear();
    routing.reset();
    {
      std::lock_guard<std::mutex> lock(shared.echo_mutex);
      shared.sent_channels.clear();
      shared.sent_patterns.clear();
      shared.raw_echoes.clear();
    }
    confirmed_channels.clear();
    confirmed_patterns.clear();
    sent_shard_channels.clear();
    confirmed_shard_channels.clear();
    sunsubscribes_in_flight.clear();
    forget_routes();
    unwanted_since.clear();
    shared.counters.redis_subscriptions = 0;
  }

  void apply(Clock::time_point now) {
    // sent_* change here; the export thread reads them (remember_raw).
    std::lock_guard<std::mutex> lock(shared.echo_mutex);
    diff_and_send(wanted_channels, shared.sent_channels, "SUBSCRIBE", "UNSUBSCRIBE", now);
    diff_and_send(wanted_patterns, shared.sent_patterns, "PSUBSCRIBE", "PUNSUBSCRIBE", now);
    diff_and_send(wanted_shard_channels, sent_shard_channels, "SSUBSCRIBE", "SUNSUBSCRIBE", now,
                  &sunsubscribes_in_flight);
  }

  // Subscribes at once to what became wanted; unsubscribes only what stayed unwanted for
  // unsubscribe_linger, so local subscribers joining and leaving in a loop cost Redis
  // nothing. Each round is one command however many names change.
  // Sharded names (`unsubscribes_in_flight` given) go one slot per command: a cluster refuses
  // an SSUBSCRIBE whose channels hash to different slots (-CROSSSLOT), and one server takes
  // them the same either way.
  void diff_and_send(const NameSet& want, NameSet& sent, const char* subscribe,
                     const char* unsubscribe, Clock::time_point now,
                     std::unordered_map<std::string, uint32_t>* unsubscribes_in_flight = nullptr) {
    const bool by_slot = unsubscribes_in_flight != nullptr;
    std::vector<std::string_view> add{subscribe}, remove{unsubscribe};
    for (const auto& name : want) {
      if (sent.insert(name).second) add.push_back(name);
      unwanted_since.erase(name);
    }
    for (auto it = sent.begin(); it != sent.end();) {
      if (want.count(*it) || is_heartbeat(*it)) {
        ++it;
        continue;
      }
      // Views into `sent`, erased only after the command is built.
      if (shared.linger_over(unwanted_since, *it, now)) remove.push_back(*it);
      ++it;
    }
    if (add.size() > 1)
      shared.counters.subscribe_commands.fetch_add(send(add, by_slot), std::memory_order_relaxed);
    if (remove.size() > 1) {
      shared.counters.unsubscribe_commands.fetch_add(send(remove, by_slot),
                                                     std::memory_order_relaxed);
      std::vector<std::string> names(remove.begin() + 1, remove.end());
      for (const auto& name : names) {
        sent.erase(name);
        if (unsubscribes_in_flight) ++(*unsubscribes_in_flight)[name];
      }
    }
  }

  // Appends `command` (the command word, then names) whole, or one command per hash slot
  // (each with its slot's names, in their order); returns how many commands went out.
  uint64_t send(const std::vector<std::string_view>& command, bool by_slot) {
    if (!by_slot) {
      subs[0]->append(command);  // classic pub/sub: shard 0 (shard_routing.hpp)
      return 1;
    }
    std::map<uint16_t, std::vector<std::string_view>> slots;
    for (size_t i = 1; i < command.size(); ++i) {
      auto& names = slots[key_slot(command[i])];
      if (names.empty()) names.push_back(command[0]);
      names.push_back(command[i]);
    }
    for (const auto& [slot, names] : slots)
      subs[routing->shard_of_slot_number(slot)]->append(names);
    return slots.size();
  }

  // ---- receiving ----

  void on_sub_reply(const redisReply* r) {
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3) {
      if (r->type == REDIS_REPLY_ERROR) {
        const std::string error = "subscriber connection: " + std::string(reply_text(r));
        if (is_topology_error(reply_text(r))) throw TopologyChanged(error);
        throw std::runtime_error(error);
      }
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
    if (kind == "smessage") {
      // The one copy of an SPUBLISH: by name, as a "message" is.
      on_delivery(reply_text(r->element[1]), {}, r->element[2]);
      return;
    }
    const std::string name(reply_text(r->element[1]));
    // Each confirmation may change which copy of a message is designated, and which
    // sequences are kept: routes are worked out again.
    forget_routes();
    if (kind == "ssubscribe") {
      confirmed_shard_channels.insert(name);
    } else if (kind == "sunsubscribe") {
      confirmed_shard_channels.erase(name);
      if (auto asked = sunsubscribes_in_flight.find(name); asked != sunsubscribes_in_flight.end()) {
        if (--asked->second == 0) sunsubscribes_in_flight.erase(asked);
        // Sequences restart when a channel is followed again (as for UNSUBSCRIBE below).
        std::erase_if(sequences, [&](const auto& entry) { return !confirmed_covers(entry.first); });
      } else if (sent_shard_channels.erase(name)) {
        // Not one we asked to leave: Redis dropped it on its own (a cluster does when the
        // channel's slot moves). Its sequences stay, so what was missed meanwhile is counted
        // lost in transit. On a cluster the slot has a new owner: the link is rebuilt on a
        // fresh topology, which subscribes everything wanted again where it now lives. On
        // one server, forgotten as sent, so the next apply() subscribes it again.
        if (routing->cluster)
          throw TopologyChanged("redis ended the sharded subscription of '" + name.substr(0, 128) +
                                "' (its slot moved): reading the cluster's topology again");
        shared.log->info("redis ended the sharded subscription of '{}'; subscribing again",
                         name.substr(0, 128));
      }
    } else if (kind == "subscribe") {
      confirmed_channels.insert(name);
    } else if (kind == "psubscribe") {
      confirmed_patterns.insert(name);
    } else if (kind == "unsubscribe" || kind == "punsubscribe") {
      (kind == "unsubscribe" ? confirmed_channels : confirmed_patterns).erase(name);
      // Sequences restart when a channel is followed again: what was published while we
      // did not listen is not lost in transit.
      std::erase_if(sequences, [&](const auto& entry) { return !confirmed_covers(entry.first); });
      std::lock_guard<std::mutex> lock(shared.echo_mutex);
      // Only entries no subscription covers any more, confirmed or still on its way: a
      // PUBLISH sent after a SUBSCRIBE we have not seen confirmed yet may well come back.
      shared.raw_echoes.forget_channels([&](const std::string& channel) {
        return !confirmed_covers(channel) && !shared.covered_by_sent(channel);
      });
    }
    shared.counters.redis_subscriptions.store(
        confirmed_channels.size() + confirmed_patterns.size() + confirmed_shard_channels.size(),
        std::memory_order_relaxed);
  }

  bool confirmed_covers(const std::string& channel) const {
    return confirmed_channels.count(channel) || confirmed_shard_channels.count(channel) ||
           any_glob_matches(confirmed_patterns, channel);
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
      if (const size_t shard = routing->heartbeat_shard(channel); shard < routing->shards()) {
        if (pattern.empty()) on_heartbeat(shard, reply_text(payload_reply));
        return;
      }
      route = make_route(channel);
      if (route == nullptr) return;  // dropped and counted, or another bridge's heartbeat
    }
    if (!pattern.empty() && route->designated_pattern != pattern) return;
    if (payload_reply->type != REDIS_REPLY_STRING) {
      shared.drop(Drop::kCorruptEnvelope, 1, [&] {
        return "a message on '" + route->channel->name().substr(0, 128) +
               "' without a string payload";
      });
      return;
    }
    const std::string_view payload = reply_text(payload_reply);
    const Rule& rule = *route->rule;
    if (payload.size() > shared.config.max_payload_bytes +
                             (rule.mode == Mode::kEnvelope ? kEnvelopeHeaderBytes : 0)) {
      shared.drop(Drop::kOversized, 1, [&] {
        return std::to_string(payload.size()) + " bytes on '" +
               route->channel->name().substr(0, 128) +
               "' exceed max_payload_bytes = " + std::to_string(shared.config.max_payload_bytes);
      });
      return;
    }
    if (rule.mode == Mode::kRaw) {
      if (is_raw_echo(channel, payload)) {
        shared.counters.echoes.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      imports.publish(*route->channel, bytes_of(payload), kUnknownOrigin);
      return;
    }
    std::string why;
    auto envelope = decode_envelope(bytes_of(payload), why);
    if (!envelope) {
      shared.drop(Drop::kCorruptEnvelope, 1,
                  [&] { return "on '" + route->channel->name().substr(0, 128) + "': " + why; });
      return;
    }
    if (envelope->header.origin == shared.config.host_id) {
      shared.counters.echoes.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    const uint16_t origin = envelope->header.origin;
    shared.record_sequence(*route->sequences, origin_state(*route->sequences, origin), origin,
                           envelope->header.sequence, envelope->header.publish_unix_ns, false);
    imports.note_lag(envelope->header.publish_unix_ns);
    imports.publish(*route->channel, envelope->payload, envelope->header.origin);
  }

  // The first message on a Redis channel: checks its name against the prefix, the limits
  // and the import rules (counting a drop for each message refused; those get no route)
  // and opens its local channel.
  ImportRoute* make_route(std::string_view channel) {
    if (!channel.starts_with(shared.config.redis_prefix)) {
      shared.drop(Drop::kBadChannel, 1, [&] {
        return "channel '" + std::string(channel.substr(0, 128)) + "' lacks the prefix '" +
               shared.config.redis_prefix + "'";
      });
      return nullptr;
    }
    const std::string name(channel.substr(shared.config.redis_prefix.size()));
    if (name.starts_with(kReservedPrefix)) return nullptr;  // other bridges' heartbeats
    if (name.empty() || name.size() > kMaxChannelNameBytes) {
      shared.drop(Drop::kBadChannel, 1, [&] {
        return "channel name of " + std::to_string(name.size()) +
               " bytes; local channel names are 1 to 1024 bytes";
      });
      return nullptr;
    }
    const Rule* rule = BridgeConfig::first_match(shared.config.imports, name);
    if (rule == nullptr || rule->durable) {
      shared.drop(Drop::kNotImported, 1, [&] {
        return "'" + name.substr(0, 128) + "' matches no pub/sub [[import]] rule";
      });
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

  // Anyone who can PUBLISH can write on a heartbeat channel (PUBSUB SHARDCHANNELS lists
  // them): only a number the export thread has sent counts, or a forged huge one would
  // stop timeouts for good and flush the raw echo ledger early.
  void on_heartbeat(size_t shard, std::string_view payload) {
    uint64_t n = 0;
    if (!number(payload, n)) return;  // digits only (state_file.hpp)
    {
      std::lock_guard<std::mutex> lock(shared.link_mutex);
      if (n > shared.newest_heartbeat.number) return;
    }
    heartbeat_seen[shard] = std::max(heartbeat_seen[shard], n);
    newest_heartbeat_seen = *std::min_element(heartbeat_seen.begin(), heartbeat_seen.end());
    n = newest_heartbeat_seen;
    // Raw exports sent before heartbeat n were answered by now if they ever will be.
    std::lock_guard<std::mutex> lock(shared.echo_mutex);
    shared.raw_echoes.heartbeat_returned(n);
  }

  bool is_raw_echo(std::string_view channel, std::string_view payload) {
    std::lock_guard<std::mutex> lock(shared.echo_mutex);
    return shared.raw_echoes.recognise(channel, payload);
  }
};

PubSubImports::PubSubImports(BridgeShared& shared, LocalImports& imports)
    : state_(std::make_unique<State>(shared, imports)) {}
PubSubImports::~PubSubImports() = default;
void PubSubImports::link_up(std::vector<std::unique_ptr<RedisConnection>> connections,
                            std::shared_ptr<const ShardRouting> routing) {
  state_->link_up(std::move(connections), std::move(routing));
}
void PubSubImports::link_down() {
  state_->link_down();
}
bool PubSubImports::linked() const {
  return !state_->subs.empty();
}
std::span<const std::unique_ptr<RedisConnection>> PubSubImports::connections() const {
  return state_->subs;
}
void PubSubImports::want(const NameSet& channels, const NameSet& patterns,
                         const NameSet& shard_channels) {
  state_->wanted_channels = channels;
  state_->wanted_patterns = patterns;
  state_->wanted_shard_channels = shard_channels;
}
void PubSubImports::apply(Clock::time_point now) {
  state_->apply(now);
}
void PubSubImports::on_reply(const redisReply* reply) {  // from any shard's connection
  state_->on_sub_reply(reply);
}
void PubSubImports::forget_routes() {
  state_->forget_routes();
}
uint64_t PubSubImports::newest_heartbeat_seen() const {
  return state_->newest_heartbeat_seen;
}

}  // namespace shmbus::bridge
