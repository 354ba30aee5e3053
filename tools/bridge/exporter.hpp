// The bridge's export thread: local ring -> Redis socket; it also reads the local interest
// for the Redis thread and publishes the counters.
//
// One thread carries an exported message from the ring to Redis: it drains the export
// Subscription, appends each PUBLISH / XADD to the publishing connection it owns (`pub`)
// and writes the batch itself, so no hand-off and no wake-up of another thread sits on
// the export path. It parks on the bus's futex (a local publish wakes it directly), or on
// `pub`'s socket while Redis is what holds it up. It also sends the heartbeats on `pub`:
// they must share the connection with the raw exports to be their echo barrier.
//
// Thread safety: run() is the export thread; everything it shares with the Redis thread is
// in BridgeShared (bridge_shared.hpp), under the locks written there.
#pragma once

#include <memory>

#include "bridge_shared.hpp"
#include "shmbus/bus.hpp"

namespace shmbus::bridge {

class Exporter {
 public:
  // Connects to the local bus (for interest and counters) and subscribes to the export
  // rules' patterns; throws shmbus::Error if the daemon does not answer.
  Exporter(BridgeShared& shared, const ConnectOptions& local);
  ~Exporter();
  Exporter(const Exporter&) = delete;
  Exporter& operator=(const Exporter&) = delete;

  // The export thread's body. Returns when shared.stopping is set (after handing what it
  // took from the ring to Redis, for a bounded time) or the local bus is gone.
  void run();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace shmbus::bridge
