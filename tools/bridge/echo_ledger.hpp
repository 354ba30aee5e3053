// Raw-mode echo suppression's ledger: the raw payloads this bridge PUBLISHed on channels
// its own subscriber connection covers, until they come back (and are dropped as echoes)
// or a later heartbeat proves they will not. See "No echoes" in bridge.hpp.
//
// Not synchronized: the bridge's export thread remembers and its Redis thread recognises,
// both under Bridge::Impl's echo_mutex (which also guards the subscriptions the ledger's
// callers consult), so the lock stays with them.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <string_view>

#include "string_hash.hpp"

namespace shmbus::bridge {

// FNV-1a: tells our own raw payloads apart from others'; collisions only matter between
// payloads on the same channel within one heartbeat interval.
uint64_t payload_hash(std::string_view payload);

class EchoLedger {
 public:
  // A raw payload about to be PUBLISHed on `channel`, after `heartbeats_sent` heartbeats.
  void remember(std::string_view channel, std::string_view payload, uint64_t heartbeats_sent);
  // True, and its entry (with every older one of the channel: our publishes come back in
  // order, so those were not echoed and never will be) forgotten, if `payload` on
  // `channel` is one we remembered.
  bool recognise(std::string_view channel, std::string_view payload);
  // Heartbeat `n` came back: what was published before it was answered by now if ever.
  void heartbeat_returned(uint64_t n);
  // Forgets the channels `gone` says no subscription covers any more.
  void forget_channels(const std::function<bool(const std::string&)>& gone);
  void clear() { pending_.clear(); }
  size_t channels() const { return pending_.size(); }

 private:
  struct Entry {
    uint64_t hash;
    uint64_t heartbeat;  // heartbeats sent before this publish
  };
  StringMap<std::deque<Entry>> pending_;
};

}  // namespace shmbus::bridge
