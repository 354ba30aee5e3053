#include "durable_streams.hpp"

#include <algorithm>
#include <fstream>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "durable_file.hpp"
#include "key_slot.hpp"
#include "origin_sequences.hpp"
#include "state_file.hpp"

namespace shmbus::bridge {

using namespace std::chrono_literals;

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
// On a cluster a multi-key XREAD must stay in one slot, so the streams are read slot by
// slot without BLOCK (a blocked read of one slot would hold the others up), and a round
// of them that found nothing waits this long before the next.
constexpr auto kClusterIdleRead = 10ms;

}  // namespace

struct DurableStreams::State {
  State(BridgeShared& shared_in, LocalImports& imports_in)
      : shared(shared_in), imports(imports_in) {}

  BridgeShared& shared;
  LocalImports& imports;
  // One stream connection per shard of `routing` (shard_routing.hpp); empty while the link
  // is down. One command is in flight at a time, on the connection of the key it is about
  // (SCAN: of the shard being scanned).
  std::vector<std::unique_ptr<RedisConnection>> streams;
  std::shared_ptr<const ShardRouting> routing;
  NameSet wanted_streams, wanted_stream_patterns;  // the local interest (want())
  bool wanted_read = false;                        // the interest has been read at least once

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
  // Streams found for local pattern subscribers (wanted_stream_patterns) by the last
  // complete round of SCANs; read like wanted_streams. A round SCANs each pattern in turn.
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
  bool xread_turn = false;      // during a round: an XREAD goes next
  size_t scan_shard_index = 0;  // a SCAN round covers each pattern on each shard
  // Cluster: the slot groups of the streams read, in the order they are read; the next
  // one; and whether the current round of them took any entry.
  size_t next_read_group = 0;
  bool read_round_took_any = false;
  Clock::time_point next_stream_read{};  // later than now while a local channel is full
  int held_reads = 0;                    // consecutive reads held back by a full channel
  Clock::time_point next_full_log{};
  bool state_dirty = false;
  Clock::time_point next_state_save{};

  // Every stream to XREAD: those wanted by name, and those found for patterns (not also
  // wanted by name).
  template <typename F>
  void for_each_stream_read(F&& f) const {
    for (const auto& key : wanted_streams)
      if (!unreadable_streams.count(key)) f(key);
    for (const auto& key : scanned_streams)
      if (!wanted_streams.count(key) && !unreadable_streams.count(key)) f(key);
  }

  // Wanted by name, or by a pattern (whether or not a SCAN round has found it yet: after a
  // restart, the first round may take longer than the linger in a large keyspace).
  bool stream_followed(const std::string& key) const {
    return wanted_streams.count(key) || any_glob_matches(wanted_stream_patterns, key);
  }

  // A pattern no longer wanted takes its streams along; a stream another pattern still
  // matches stays until the next round says otherwise.
  void forget_unwanted_scans() {
    std::erase_if(scanned_streams, [&](const std::string& key) {
      return !any_glob_matches(wanted_stream_patterns, key);
    });
    std::erase_if(patterns_first_round_done,
                  [&](const std::string& p) { return !wanted_stream_patterns.count(p); });
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
      if (!shared.linger_over(stream_unwanted_since, name, now)) return false;
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
      return lingered(p, wanted_stream_patterns.count(p) != 0);
    });
    for (auto it = unreadable_streams.begin(); it != unreadable_streams.end();)
      it = now >= it->second ? unreadable_streams.erase(it) : std::next(it);
  }

  // One command at a time on `streams`: TYPE checks after a refused XREAD, else an
  // XREVRANGE for a stream followed for the first time, else a SCAN when a round is due,
  // else the XREAD of everything followed.
  bool linked() const { return !streams.empty(); }
  RedisConnection& connection_for(std::string_view key) { return *streams[routing->shard_of(key)]; }

  void send_command() {
    if (!linked() || stream_command != StreamCommand::kNone || Clock::now() < next_stream_read)
      return;
    if (!type_checks.empty()) {
      stream_command_key = std::move(type_checks.back());
      type_checks.pop_back();
      connection_for(stream_command_key).append({"TYPE", stream_command_key});
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
    shared.counters.streams_read.store(positioned, std::memory_order_relaxed);
    if (!first_time.empty()) {
      // First interest in this stream: start after its newest entry (XREAD with "$" would
      // lose what is added between two calls).
      stream_command_key = std::string(first_time);
      connection_for(stream_command_key)
          .append({"XREVRANGE", stream_command_key, "+", "-", "COUNT", "1"});
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
    if (routing->cluster) {
      send_slot_xread();
      return;
    }
    const std::string count = std::to_string(kXreadCount);
    const std::string block_ms = std::to_string(kXreadBlock.count());
    std::vector<std::string_view> args{"XREAD", "COUNT", count};
    if (block) args.insert(args.end(), {"BLOCK", block_ms});
    args.push_back("STREAMS");
    // Every followed stream has a position here (send_command XREVRANGEs it first);
    // the map's strings stay where they are while args points at them.
    std::vector<std::string_view> ids;
    for_each_stream_read([&](const std::string& key) {
      args.push_back(key);
      ids.push_back(stream_positions.find(key)->second);
    });
    args.insert(args.end(), ids.begin(), ids.end());
    streams[0]->append(args);
    stream_command = StreamCommand::kRead;
  }

  // Cluster: the XREAD of the next slot's streams, without BLOCK. After the last slot of a
  // round that took nothing, the next round waits kClusterIdleRead.
  void send_slot_xread() {
    std::map<uint16_t, std::vector<const std::string*>> groups;  // slot -> keys
    for_each_stream_read([&](const std::string& key) { groups[key_slot(key)].push_back(&key); });
    if (next_read_group >= groups.size()) next_read_group = 0;
    auto group = std::next(groups.begin(), static_cast<std::ptrdiff_t>(next_read_group));
    const std::string count = std::to_string(kXreadCount);
    std::vector<std::string_view> args{"XREAD", "COUNT", count, "STREAMS"};
    for (const std::string* key : group->second) args.push_back(*key);
    for (const std::string* key : group->second)
      args.push_back(stream_positions.find(*key)->second);
    streams[routing->shard_of_slot_number(group->first)]->append(args);
    stream_command = StreamCommand::kRead;
    if (++next_read_group < groups.size()) return;
    next_read_group = 0;
    if (!std::exchange(read_round_took_any, false))
      next_stream_read = Clock::now() + kClusterIdleRead;
  }

  // The next SCAN of the current round, starting a round when one is due. False if none.
  bool send_scan() {
    if (scan_round_patterns.empty()) {
      if (wanted_stream_patterns.empty() || Clock::now() < next_scan) return false;
      scan_round_patterns.assign(wanted_stream_patterns.begin(), wanted_stream_patterns.end());
      scan_pattern_index = 0;
      scan_shard_index = 0;
      scan_cursor = "0";
      scan_round_found.clear();
    }
    // Each node SCANs its own keys: on a cluster, each pattern is scanned on every shard.
    streams[scan_shard_index]->append({"SCAN", scan_cursor, "MATCH",
                                       scan_round_patterns[scan_pattern_index], "COUNT", "1000",
                                       "TYPE", "stream"});
    stream_command = StreamCommand::kScan;
    return true;
  }

  void on_scan_reply(const redisReply* r) {
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[1]->type != REDIS_REPLY_ARRAY)
      throw std::runtime_error("unexpected SCAN reply");
    for (size_t k = 0; k < r->element[1]->elements; ++k) {
      const std::string_view key = reply_text(r->element[1]->element[k]);
      if (!key.starts_with(shared.config.redis_prefix)) continue;
      const std::string_view name = shared.local_name(key);
      if (name.starts_with(kReservedPrefix)) continue;
      const Rule* rule = BridgeConfig::first_match(shared.config.imports, name);
      if (rule != nullptr && rule->durable) scan_round_found.insert(std::string(key));
    }
    scan_cursor = std::string(reply_text(r->element[0]));
    if (scan_cursor != "0") return;
    if (++scan_shard_index < streams.size()) return;
    scan_shard_index = 0;
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
      if (wanted_stream_patterns.count(p) && !patterns_scanned_once.count(p))
        patterns_first_round_done.insert(p);
    scanned_streams = std::move(scan_round_found);
    scan_round_found.clear();
    forget_unwanted_scans();  // interest may have changed during the round
    scan_round_patterns.clear();
    next_scan = Clock::now() + shared.config.stream_scan_interval;
  }

  void on_reply(const redisReply* r) {
    const StreamCommand command = std::exchange(stream_command, StreamCommand::kNone);
    // RESP2 sends nothing unasked on this connection: a reply to no command is not Redis.
    if (command == StreamCommand::kNone)
      throw std::runtime_error("a reply to no command on the stream connection");
    if (r->type == REDIS_REPLY_ERROR) {
      const std::string_view error = reply_text(r);
      if (is_topology_error(error))
        throw TopologyChanged("stream read redirected: " + std::string(error));
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
      const std::string name(shared.local_name(key));
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
        read_round_took_any = true;
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
    shared.log->warn(
        "'{}' is {} in Redis: its durable import is left out for {} s, then tried again",
        key.substr(0, 128), what,
        std::chrono::duration_cast<std::chrono::seconds>(kUnreadableStreamRetry).count());
  }

  void log_held_stream(std::string_view name) {
    const auto now = Clock::now();
    if (now < next_full_log) return;
    next_full_log = now + 1s;
    shared.log->info("durable import of '{}' waits: its local back-pressure channel is full",
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
      shared.drop(Drop::kCorruptEnvelope, 1, [&] {
        return "stream entry on '" + name.substr(0, 128) +
               "' without a payload field or with bad origin/seq/ts";
      });
      return true;
    }
    if (payload->size() > shared.config.max_payload_bytes) {
      shared.drop(Drop::kOversized, 1, [&] {
        return std::to_string(payload->size()) + " bytes on stream '" + name.substr(0, 128) +
               "' exceed max_payload_bytes";
      });
      return true;
    }
    if (origin == shared.config.host_id) {
      shared.counters.echoes.fetch_add(1, std::memory_order_relaxed);
      return true;
    }
    const auto from = static_cast<uint16_t>(origin);
    SequenceState* last = origin_state(states, from);
    if (has_sequence && last && durable_repeat(*last, seq, ts)) {
      shared.counters.duplicates.fetch_add(1, std::memory_order_relaxed);
      return true;
    }
    if (ts) imports.note_lag(ts);
    if (Channel* local = imports.channel(name)) {
      const auto status = imports.publish(*local, bytes_of(*payload), from, /*can_retry=*/true);
      if (status == PublishStatus::kWouldBlock) return false;
    }
    // Taken (or dropped and counted): recorded, so a repeat of it is known for one.
    if (has_sequence) shared.record_sequence(states, last, from, seq, ts, true);
    return true;
  }

  // The state file (its format: state_file.hpp).
  // Replaced durably (durable_file.hpp), so a crash leaves the old or the new file, never
  // half of one; positions and sequences in it are always from the same moment.
  void save_state() {
    if (shared.config.state_file.empty() || !state_dirty) return;
    if (const std::string error = replace_file_durably(
            shared.config.state_file,
            serialize_state(stream_positions, patterns_scanned_once, stream_sequences));
        !error.empty())
      shared.log->error("durable positions are not saved: {}", error);
    else
      state_dirty = false;
  }

  void load_state() {
    if (shared.config.state_file.empty()) return;
    std::ifstream in(shared.config.state_file);
    std::string text;
    size_t line = 0, sequence_lines = 0;
    while (std::getline(in, text)) {
      ++line;
      if (!parse_state_line(text, stream_positions, patterns_scanned_once, stream_sequences,
                            sequence_lines))
        shared.log->warn(
            "state file {} line {}: not '<ms>-<seq> <hex key>', 'seq <hex key> <origin> "
            "<sequence> <ns> [<missing>...]' or 'scanned <hex pattern>'; ignored",
            shared.config.state_file, line);
    }
    if (line)
      shared.log->info("resuming {} stream(s) ({} origin sequences) from {}",
                       stream_positions.size(), sequence_lines, shared.config.state_file);
  }

  void link_down() {
    streams.clear();
    routing.reset();
    stream_command = StreamCommand::kNone;
    next_read_group = 0;
    type_checks.clear();
    scan_round_patterns.clear();  // the round starts over on the next link
    next_scan = {};
  }

  void maintain(Clock::time_point now) {
    if (now < next_state_save) return;
    forget_unfollowed_streams(now);
    save_state();
    next_state_save = now + kStateSaveInterval;
  }
};

DurableStreams::DurableStreams(BridgeShared& shared, LocalImports& imports)
    : state_(std::make_unique<State>(shared, imports)) {}
DurableStreams::~DurableStreams() = default;

bool DurableStreams::needed() const {
  const auto& imports = state_->shared.config.imports;
  return std::any_of(imports.begin(), imports.end(), [](const Rule& r) { return r.durable; });
}
void DurableStreams::load_state() {
  state_->load_state();
}
void DurableStreams::save_state() {
  state_->save_state();
}
void DurableStreams::link_up(std::vector<std::unique_ptr<RedisConnection>> connections,
                             std::shared_ptr<const ShardRouting> routing) {
  state_->streams = std::move(connections);
  state_->routing = std::move(routing);
}
void DurableStreams::link_down() {
  state_->link_down();
}
std::span<const std::unique_ptr<RedisConnection>> DurableStreams::connections() const {
  return state_->streams;
}
void DurableStreams::want(const NameSet& streams, const NameSet& patterns) {
  state_->wanted_streams = streams;
  state_->wanted_stream_patterns = patterns;
  state_->forget_unwanted_scans();
}
void DurableStreams::interest_read(bool read) {
  state_->wanted_read = read;
}
void DurableStreams::send_command() {
  state_->send_command();
}
void DurableStreams::on_reply(const redisReply* reply) {
  state_->on_reply(reply);
}
Clock::time_point DurableStreams::deadline(Clock::time_point now,
                                           Clock::time_point otherwise) const {
  const State& s = *state_;
  if (s.linked() && s.stream_command == State::StreamCommand::kNone && s.next_stream_read > now)
    return std::min(otherwise, s.next_stream_read);
  return otherwise;
}
void DurableStreams::maintain(Clock::time_point now) {
  state_->maintain(now);
}

}  // namespace shmbus::bridge
