// The bridge's durable imports: Redis streams read with XREAD on a connection of their
// own (one per shard on a Redis Cluster, where a read covers one hash slot), one command
// in flight at a time. Streams are followed by name (local subscribers of
// a durable rule's channels) or found by SCAN for local pattern subscribers; each starts
// after its newest entry when first followed, or from its start when it appeared while a
// pattern already covered it. Entries go to the local bus through LocalImports; a full
// back-pressure channel holds the read back instead of losing the entry. Read positions
// and per-origin sequences go to the state file (state_file.hpp), so a restart resumes
// where the last run stopped and a resend is still known for one.
//
// Thread safety: the Redis thread only.
#pragma once

#include <memory>
#include <span>
#include <vector>

#include "bridge_shared.hpp"
#include "local_imports.hpp"
#include "redis_connection.hpp"

namespace shmbus::bridge {

class DurableStreams {
 public:
  DurableStreams(BridgeShared& shared, LocalImports& imports);
  ~DurableStreams();
  DurableStreams(const DurableStreams&) = delete;
  DurableStreams& operator=(const DurableStreams&) = delete;

  // Whether any import rule is durable: only then is there a stream connection.
  bool needed() const;

  // The state file: read once before the threads start, written by maintain() and stop.
  void load_state();
  void save_state();

  // The link came up with a stream connection per shard of `routing` (none if not
  // needed()), or went down: the command in flight is forgotten and a SCAN round starts
  // over.
  void link_up(std::vector<std::unique_ptr<RedisConnection>> connections,
               std::shared_ptr<const ShardRouting> routing);
  void link_down();
  // By shard; empty while down. A view, valid until link_up() or link_down().
  std::span<const std::unique_ptr<RedisConnection>> connections() const;

  // The local interest, in Redis names: streams by name and stream patterns. `read`: the
  // interest has been read at least once (until then nothing restored is forgotten).
  void want(const NameSet& streams, const NameSet& patterns);
  void interest_read(bool read);

  // Appends the next command to the connection, if none is in flight.
  void send_command();
  // The reply to the command in flight. Throws std::runtime_error on a refusal that ends
  // the link.
  void on_reply(const redisReply* reply);
  // `otherwise`, or earlier when a held-back read is due before it.
  Clock::time_point deadline(Clock::time_point now, Clock::time_point otherwise) const;
  // Once a second: forgets positions no local subscriber has wanted for
  // unsubscribe_linger, and saves the state file if it changed.
  void maintain(Clock::time_point now);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace shmbus::bridge
