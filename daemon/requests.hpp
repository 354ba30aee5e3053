// The wire handlers: one per request type a client may send, each parsing the frame,
// checking what the protocol and the limits allow, asking the registry and the
// subscriptions to act, and replying. A request that may take longer than an event-loop
// turn (SUBSCRIBE, PSUBSCRIBE, PATTERNS over many channels or patterns, an OPEN_CHANNEL
// waiting for its new channel's pattern matching) is answered by a job over several turns
// (request_jobs.cpp). They also end a client's session (its publisher id and channel holds)
// when Connections says the client is gone.
//
// Thread safety: the run() thread only.
#pragma once

#include <spdlog/logger.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "access.hpp"
#include "client_state.hpp"
#include "config.hpp"
#include "connections.hpp"
#include "protocol.hpp"
#include "publisher_ids.hpp"
#include "reclaim.hpp"
#include "registry.hpp"
#include "repair.hpp"
#include "shmbus/error.hpp"
#include "subscriptions.hpp"
#include "turn.hpp"

namespace shmbus::daemon {

class Requests final : public ClientEvents {
 public:
  Requests(const Config& config, std::string bus, std::shared_ptr<spdlog::logger> log,
           Registry& registry, Connections& connections, Subscriptions& subscriptions,
           CrashRepair& repair, Access& access, Reclaimer& reclaimer, Turn& turn,
           PublisherIds& publisher_ids);

  void dispatch(Client& c, const protocol::Frame& f) override;
  void resume(Client& c) override;
  void finish_client(Client& c) override;
  void repair_and_finish(Client& c) override;

 private:
  void on_hello(Client& c, const protocol::Frame& f);
  void on_open_channel(Client& c, const protocol::Frame& f);
  void on_close_channel(Client& c, const protocol::Frame& f);
  void on_subscribe(Client& c, const protocol::Frame& f);
  void on_psubscribe(Client& c, const protocol::Frame& f);
  void on_unsubscribe(Client& c, const protocol::Frame& f, bool patterns);
  void on_patterns(Client& c, const protocol::Frame& f);
  // Sends `w`, a reply frame of `c`'s request.
  void send(Client& c, protocol::Writer& w) { connections_.send(c, w); }
  void on_map_arenas(Client& c, const protocol::Frame& f);
  void on_report_corrupt(Client& c, const protocol::Frame& f);
  std::string describe(const Client& c) const;
  void reply_error(Client& c, uint32_t request, Errc code, const std::string& message);

  // OPEN_CHANNEL as asked: answered now, or (false) once its new channel is matched.
  struct OpenRequest {
    uint32_t request = 0;
    std::string name;
    uint64_t ring_bytes = 0;
    uint32_t max_message = 0;
    uint8_t back_pressure = 0;  // 0: as configured, 1: off, 2: on
  };
  bool try_open(Client& c, const OpenRequest& r);

  // The jobs (request_jobs.cpp) and the SUBSCRIBED reply they send in frames.
  class SubscribedReply;
  class SubscribeJob;
  class PsubscribeJob;
  class PatternsJob;
  class OpenChannelJob;
  std::unique_ptr<RequestJob> subscribe_job(uint32_t request, protocol::StartKind start,
                                            std::vector<std::string> names);
  std::unique_ptr<RequestJob> psubscribe_job(uint32_t request, std::vector<std::string> patterns);
  std::unique_ptr<RequestJob> patterns_job(uint32_t request, std::string filter);
  std::unique_ptr<RequestJob> open_channel_job(OpenRequest open);
  // `c` works on `job` from now on, beginning in this turn.
  void start(Client& c, std::unique_ptr<RequestJob> job);
  // How many reply bytes a job may queue for `c` now (0: wait until it reads).
  size_t reply_room(const Client& c) const;
  void check_subscription_limit(const Client& c, size_t adding, const char* kind);
  // Throws Error(kLimit) if a client may not ask for a ring of `ring_bytes` (0: none asked)
  // for channel `name`, whose rules give `configured`.
  void check_requested_ring(std::string_view name, const ChannelSettings& configured,
                            uint64_t ring_bytes) const;
  // The registry's find_or_create for `c`'s user, with a new channel matched against the
  // patterns (as far as the turn goes: then it is `matching`, see try_open).
  Registry::Found find_or_create(const Client& c, std::string_view name,
                                 const ChannelSettings* requested);

  const Config& config_;  // the daemon's, outlives the handlers
  const std::string bus_;
  const std::shared_ptr<spdlog::logger> log_;
  Registry& registry_;
  Connections& connections_;
  Subscriptions& subscriptions_;
  CrashRepair& repair_;
  Access& access_;
  Reclaimer& reclaimer_;
  Turn& turn_;

  PublisherIds& publisher_ids_;  // given at HELLO, back when a client is finished
};

}  // namespace shmbus::daemon
