// Bus, Channel and Loan: the publishing side of libshmbus.
#include "shmbus/bus.hpp"

#include <algorithm>
#include <chrono>
#include <optional>
#include <unordered_map>
#include <utility>

#include "client.hpp"
#include "directory.hpp"
#include "glob.hpp"
#include "naming.hpp"
#include "string_hash.hpp"

namespace shmbus {

using namespace protocol;

namespace {

// Channels a Bus keeps open for publish(name, ...). Past this, the least recently used
// quarter is closed so that the daemon can reclaim channels a publisher no longer uses.
constexpr size_t kMaxCachedChannels = 4096;

// Where a channel opened for publishing lives, as the daemon told us.
struct Placement {
  uint32_t id = 0;
  RingRef ring;
  // In the control arena, which only the daemon writes: receiver counts and whether the
  // ring is still in service can be trusted here, unlike anything in the ring itself.
  const layout::ChannelDescriptor* descriptor = nullptr;
  std::string rule;  // which config rule sized the ring, for error messages
};

// Asks the daemon to open `name` for publishing. REQUIRES: core->mutex held.
Placement open_placement(ClientCore& core, std::string_view name, const ChannelOptions& options) {
  Writer open = core.connection->next_request(Type::kOpenChannel);
  open.str(name)
      .u64(options.ring_bytes)
      .u32(options.max_message_bytes)
      .u8(options.back_pressure ? (*options.back_pressure ? 2 : 1) : 0);
  const OwnedFrame reply = core.connection->request(open);
  Parser p = reply.parser();
  const RingLocation location = RingLocation::read(p);
  std::string rule(p.str(kMaxPatternBytes + 64, "rule"));
  p.end();
  Placement placement;
  placement.id = location.channel_id;
  placement.ring = core.memory->ring(location);
  placement.descriptor = descriptor_at(*core.memory, location.descriptor);
  if (placement.descriptor == nullptr || placement.descriptor->channel_id != location.channel_id)
    throw Error(Errc::kProtocol,
                "shmbusd gave channel " + printable(name) + " a descriptor that is not there");
  placement.rule = std::move(rule);
  return placement;
}

// Runs `request` on a working link, connecting again first if the daemon went away (and
// once more if the connection turns out closed meanwhile). Throws Error(kDaemonGone) if
// the daemon did not come back within ReconnectOptions::wait.
template <typename Request>
auto with_link(ClientCore& core, Request&& request) {
  const ClientCore::EventReport report(core);  // after the lock below is released
  std::lock_guard<std::mutex> lock(core.mutex);
  const auto deadline = ClientCore::Clock::now() + core.reconnect.options().wait;
  for (int tries = 0;; ++tries) {
    if (!core.ensure_link_locked(deadline)) throw core.gone_error_locked();
    try {
      return request();
    } catch (const Error& e) {
      if (e.code() != Errc::kDaemonGone || tries >= 2) throw;
      core.mark_broken_locked(e.what());
    }
  }
}

// One channel opened for publishing through the daemon.
struct OpenChannel {
  // REQUIRES: core_in->mutex held, and `placement_in` opened on the current link.
  OpenChannel(std::shared_ptr<ClientCore> core_in, std::string name_in, ChannelOptions options_in,
              Placement placement_in)
      : core(std::move(core_in)),
        name(std::move(name_in)),
        options(std::move(options_in)),
        memory(core->memory),
        generation(core->generation),
        life(memory->life_word()),
        placement(std::move(placement_in)),
        publisher(placement.ring, core->connection->welcome().publisher_id, &memory->table()) {}
  ~OpenChannel() {
    try {
      std::lock_guard<std::mutex> lock(core->mutex);
      if (core->closing || !on_current_link_locked()) return;
      close_locked(placement.id);
    } catch (const std::exception&) {
      // The daemon is gone: there is nothing left to tell it.
    }
  }
  OpenChannel(const OpenChannel&) = delete;
  OpenChannel& operator=(const OpenChannel&) = delete;

  // Whether the channel was opened on the link the core has now (ids of older links belong
  // to a daemon that is gone). REQUIRES: core->mutex held.
  bool on_current_link_locked() const {
    return generation == core->generation && core->broken.empty();
  }

  // REQUIRES: core->mutex held.
  void close_locked(uint32_t id) {
    Writer close = core->connection->next_request(Type::kCloseChannel);
    close.u32(id);
    core->connection->request(close);
  }

  // Opens the channel again: on the ring that replaced one the daemon took out of service
  // (it was found corrupt), or on a new link after the daemon went away. Throws
  // Error(kDaemonGone) if the link did not come back within ReconnectOptions::wait, and
  // what a daemon that answered refused.
  void reopen() {
    with_link(*core, [&] {
      Placement fresh = open_placement(*core, name, options);
      // Loans still out were claimed in the old ring: it stays mapped, with its publisher,
      // and open (a replaced ring is freed once closed), until they come back. Otherwise
      // the old placement is closed and its memory goes once the publisher is replaced.
      if (loans_out > 0)
        retired.push_back(Retired{epoch, memory, publisher, placement.id, generation});
      else if (generation == core->generation)
        close_locked(placement.id);
      ++epoch;
      const std::shared_ptr<BusMemory> old_memory = std::exchange(memory, core->memory);
      generation = core->generation;
      life = memory->life_word();
      placement = std::move(fresh);
      publisher =
          Publisher(placement.ring, core->connection->welcome().publisher_id, &memory->table());
    });
  }

  // Tells the daemon our ring contradicts itself; it checks, and replaces the ring if so.
  void report_corrupt() {
    std::lock_guard<std::mutex> lock(core->mutex);
    if (!on_current_link_locked()) return;
    Writer report = core->connection->next_request(Type::kReportCorrupt);
    report.u32(placement.id);
    core->connection->request(report);
  }

  bool in_service() const {
    return placement.descriptor->state.load(std::memory_order_relaxed) == layout::kChannelLive;
  }
  // The daemon the channel was opened on still serves (layout::DaemonLife): a line only the
  // daemon and the kernel write, which stays in our cache while it lives.
  bool daemon_alive() const { return layout::daemon_alive(life->load(std::memory_order_relaxed)); }
  uint32_t receivers() const {
    return placement.descriptor->receivers.load(std::memory_order_relaxed);
  }

  std::shared_ptr<ClientCore> core;
  std::string name;
  ChannelOptions options;  // as opened, to open it again alike
  // The link the channel was opened on: its memory (kept mapped while `publisher` writes
  // there), its generation, and its daemon's life word.
  std::shared_ptr<BusMemory> memory;
  uint64_t generation = 0;
  const std::atomic<uint32_t>* life = nullptr;
  Placement placement;
  Publisher publisher;
  uint64_t last_use = 0;

  // Loans (used by the Channel's one thread at a time): which placement each claimed from.
  uint64_t epoch = 0;      // bumped by every reopen
  uint32_t loans_out = 0;  // claimed and not yet committed or abandoned
  struct Retired {
    uint64_t epoch;
    std::shared_ptr<BusMemory> memory;
    Publisher publisher;
    // The placement's channel id and link, to close it once its loans are back: until then
    // the daemon must not free (and reuse) a replaced ring that a loan still writes into.
    uint32_t channel_id;
    uint64_t generation;
  };
  std::vector<Retired> retired;  // placements that loans still out claimed from
  Publisher& publisher_for(uint64_t loan_epoch) {
    for (Retired& r : retired)
      if (r.epoch == loan_epoch) return r.publisher;
    return publisher;
  }
  void loan_returned() {
    if (--loans_out != 0) return;
    try {
      std::lock_guard<std::mutex> lock(core->mutex);
      for (const Retired& r : retired)
        if (r.generation == generation && on_current_link_locked()) close_locked(r.channel_id);
    } catch (const std::exception&) {
      // The daemon is gone: nothing to close.
    }
    retired.clear();
  }
  std::optional<Error> refusal;  // why the daemon last refused to open it again
};

std::unique_ptr<OpenChannel> open_channel(const std::shared_ptr<ClientCore>& core,
                                          std::string_view name, const ChannelOptions& options) {
  validate_channel_name(name);
  return with_link(*core, [&] {
    Placement placement = open_placement(*core, name, options);
    return std::make_unique<OpenChannel>(core, std::string(name), options, std::move(placement));
  });
}

PublishStatus to_publish_status(Status s) {
  switch (s) {
    case Status::kOk: return PublishStatus::kOk;
    case Status::kTooLarge: return PublishStatus::kTooLarge;
    case Status::kWouldBlock: return PublishStatus::kWouldBlock;
    case Status::kCorrupt: return PublishStatus::kCorrupt;
    default: return PublishStatus::kTimedOut;
  }
}

// publish_on's slow path: the daemon is gone, the ring is out of service, or the publish
// found it corrupt. Reports a corrupt ring (the daemon checks it and takes it out of
// service); opens the channel again - on the ring that replaced it, or on a new link once
// the daemon is back (waiting up to ReconnectOptions::wait) - and publishes there once.
[[gnu::noinline]] PublishResult publish_again(OpenChannel& ch, std::span<const std::byte> payload,
                                              const PublishMeta& meta,
                                              std::chrono::nanoseconds wait, Status first) {
  try {
    if (first == Status::kCorrupt) ch.report_corrupt();
    const bool relink = !ch.daemon_alive();
    if (!relink && ch.in_service()) return PublishResult{to_publish_status(first), 0};
    if (relink) ch.publisher.wake_readers();  // they learn at once that the daemon is gone
    ch.reopen();
  } catch (const Error& e) {
    if (e.code() == Errc::kDaemonGone) return PublishResult{PublishStatus::kDaemonGone, 0};
    ch.refusal = e;  // what publish() throws
    return PublishResult{PublishStatus::kRefused, 0};
  }
  PublishResult result;
  result.receivers = ch.receivers();
  const Status s = ch.publisher.publish(payload, meta, wait);
  result.status = to_publish_status(s);
  if (s != Status::kOk) result.receivers = 0;
  return result;
}

PublishResult publish_on(OpenChannel& ch, std::span<const std::byte> payload,
                         std::chrono::nanoseconds wait, uint16_t origin = 0) {
  PublishMeta meta;
  meta.stamp_at_commit = true;
  meta.origin = origin;
  // The descriptor's line and the life word are the daemon's: one tells the receivers and
  // whether the ring is still in service, the other whether its daemon still serves (both
  // stay shared in our cache while the daemon leaves them alone). A dead daemon's rings
  // reach nobody who will ever look: never publish there.
  if (!ch.in_service() || !ch.daemon_alive()) [[unlikely]]
    return publish_again(ch, payload, meta, wait, Status::kOk);
  // Counted before the commit, like Redis counts at PUBLISH time: once committed, a
  // subscriber may take the message and unsubscribe before we could look.
  PublishResult result;
  result.receivers = ch.receivers();
  const Status s = ch.publisher.publish(payload, meta, wait);
  if (s == Status::kOk) [[likely]]
    return result;
  if (s == Status::kCorrupt) return publish_again(ch, payload, meta, wait, s);
  return PublishResult{to_publish_status(s), 0};
}

[[noreturn]] void throw_publish_error(const OpenChannel& ch, PublishStatus status, size_t bytes,
                                      std::chrono::nanoseconds wait) {
  const std::string where = " in rule '" + ch.placement.rule + "'";
  const auto waited_ms = std::chrono::duration_cast<std::chrono::milliseconds>(wait).count();
  switch (status) {
    case PublishStatus::kTooLarge:
      throw Error(Errc::kTooLarge,
                  "message of " + std::to_string(bytes) + " bytes exceeds channel " +
                      printable(ch.name) + " limit of " +
                      std::to_string(ch.placement.ring.max_payload()) + " bytes (ring " +
                      human_bytes(ch.placement.ring.capacity()) +
                      "); raise it with a [[channel]] rule in shmbusd.toml (max_message_bytes, "
                      "ring_bytes)");
    case PublishStatus::kWouldBlock:
    case PublishStatus::kTimedOut: {
      const Errc code = status == PublishStatus::kWouldBlock ? Errc::kWouldBlock : Errc::kTimedOut;
      if (!ch.placement.ring.back_pressure())
        throw Error(code, "channel " + printable(ch.name) + " had no room for " +
                              std::to_string(waited_ms) +
                              " ms: a message another publisher began a ring ago is unfinished "
                              "(a stopped publisher; shmbusd pads it over once that process "
                              "exits)");
      throw Error(code, "back-pressure channel " + printable(ch.name) + " stayed full for " +
                            std::to_string(waited_ms) + " ms: its slowest subscriber is a ring (" +
                            human_bytes(ch.placement.ring.capacity()) +
                            ") behind; speed it up, enlarge ring_bytes" + where +
                            ", or turn back_pressure off");
    }
    case PublishStatus::kCorrupt:
      throw Error(Errc::kCorrupt,
                  "channel " + printable(ch.name) +
                      ": its ring in shared memory contradicts itself (some process wrote "
                      "garbage into it), so nothing was published; see shmbusd's log");
    case PublishStatus::kDaemonGone: throw ch.core->gone_error();
    case PublishStatus::kRefused:
      if (ch.refusal) throw *ch.refusal;
      throw Error(Errc::kLimit, "shmbusd refused to open channel " + printable(ch.name) + " again");
    case PublishStatus::kOk: break;
  }
  throw std::logic_error("publish error without an error");
}

}  // namespace

// ---- Loan ---------------------------------------------------------------------------------

struct Loan::State {
  OpenChannel* channel;
  RingLoan loan;
  // Where the state goes back once committed or abandoned (the Channel's spare), so a
  // loan per message costs no allocation. Valid as long as `channel` is: a Loan must not
  // outlive its Channel either way.
  std::unique_ptr<State>* home = nullptr;
  uint64_t epoch = 0;  // the channel's placement it claimed from (OpenChannel::epoch)
  bool out = false;    // counted in the channel's loans_out
};

Loan::Loan(std::unique_ptr<State> state) : state_(std::move(state)) {}
Loan::Loan(Loan&&) noexcept = default;
Loan& Loan::operator=(Loan&& other) noexcept {
  if (this != &other) {
    abandon();
    state_ = std::move(other.state_);
  }
  return *this;
}
Loan::~Loan() {
  abandon();
}

std::span<std::byte> Loan::data() const {
  if (!state_ || !state_->loan.active) return {};
  return {state_->loan.payload, state_->loan.capacity};
}

uint32_t Loan::commit(std::size_t bytes) {
  if (!state_ || !state_->loan.active)
    throw Error(Errc::kInvalidArgument, "commit of a loan that was committed or abandoned");
  if (bytes > state_->loan.capacity)
    throw Error(Errc::kInvalidArgument, "commit of " + std::to_string(bytes) +
                                            " bytes on a loan of " +
                                            std::to_string(state_->loan.capacity));
  OpenChannel& ch = *state_->channel;
  // Claimed in a ring the channel has left (its daemon went away, or the ring was replaced)
  // or whose daemon just died: committing there would reach nobody.
  if (state_->epoch != ch.epoch || !ch.daemon_alive()) {
    abandon();
    throw Error(Errc::kDaemonGone, "channel " + printable(ch.name) +
                                       ": its daemon went away (or its ring was replaced) while "
                                       "this loan was out, so nothing was published; loan again");
  }
  PublishMeta meta;
  meta.stamp_at_commit = true;
  const uint32_t receivers = ch.receivers();  // before the commit: see publish_on
  ch.publisher.commit(state_->loan, static_cast<uint32_t>(bytes), meta);
  abandon();  // the loan is no longer active: this only hands the state back
  return receivers;
}

void Loan::abandon() {
  if (!state_) return;
  OpenChannel& ch = *state_->channel;
  if (state_->loan.active) ch.publisher_for(state_->epoch).abandon(state_->loan);
  if (std::exchange(state_->out, false)) ch.loan_returned();
  if (state_->home != nullptr && !*state_->home)
    *state_->home = std::move(state_);
  else
    state_.reset();
}

// ---- Channel ------------------------------------------------------------------------------

struct Channel::State {
  std::unique_ptr<OpenChannel> open;
  ChannelOptions options;
  std::unique_ptr<Loan::State> spare_loan;  // see Loan::State::home
};

Channel::Channel(std::unique_ptr<State> state) : state_(std::move(state)) {}
Channel::Channel(Channel&&) noexcept = default;
Channel& Channel::operator=(Channel&&) noexcept = default;
Channel::~Channel() = default;

const std::string& Channel::name() const {
  return state_->open->name;
}
std::size_t Channel::max_message_bytes() const {
  return state_->open->placement.ring.max_payload();
}
std::size_t Channel::ring_bytes() const {
  return state_->open->placement.ring.capacity();
}
bool Channel::back_pressure() const {
  return state_->open->placement.ring.back_pressure();
}

PublishResult Channel::try_publish(std::span<const std::byte> payload,
                                   std::chrono::nanoseconds wait, uint16_t origin) {
  return publish_on(*state_->open, payload, wait, origin);
}

uint32_t Channel::publish(std::span<const std::byte> payload) {
  const PublishResult r = publish_on(*state_->open, payload, state_->options.publish_wait);
  if (!r.ok())
    throw_publish_error(*state_->open, r.status, payload.size(), state_->options.publish_wait);
  return r.receivers;
}

uint32_t Channel::publish(std::string_view text) {
  return publish(std::as_bytes(std::span<const char>(text.data(), text.size())));
}

Loan Channel::loan(std::size_t bytes) {
  OpenChannel& ch = *state_->open;
  // As publish_on: never lend space in a dead daemon's ring.
  if (!ch.in_service() || !ch.daemon_alive()) [[unlikely]]
    ch.reopen();
  std::unique_ptr<Loan::State> state = std::move(state_->spare_loan);
  if (!state) state = std::make_unique<Loan::State>();
  state->channel = &ch;
  state->loan = RingLoan{};
  state->home = &state_->spare_loan;
  const Status s = bytes > 0xffffffffu
                       ? Status::kTooLarge
                       : ch.publisher.claim(static_cast<uint32_t>(bytes), state->loan,
                                            state_->options.publish_wait);
  if (s != Status::kOk)
    throw_publish_error(ch, to_publish_status(s), bytes, state_->options.publish_wait);
  state->epoch = ch.epoch;
  state->out = true;
  ++ch.loans_out;
  return Loan(std::move(state));
}

// ---- Bus ----------------------------------------------------------------------------------

struct Bus::State {
  std::shared_ptr<ClientCore> core;
  StringMap<std::unique_ptr<OpenChannel>> cache;
  uint64_t uses = 0;

  OpenChannel& cached(std::string_view name) {
    auto it = cache.find(name);
    if (it == cache.end()) {
      if (cache.size() >= kMaxCachedChannels) evict();
      auto open = open_channel(core, name, {});
      it = cache.emplace(std::string(name), std::move(open)).first;
    }
    it->second->last_use = ++uses;
    return *it->second;
  }

  void evict() {
    std::vector<uint64_t> ages;
    ages.reserve(cache.size());
    for (auto& [name, open] : cache) ages.push_back(open->last_use);
    auto quarter = ages.begin() + static_cast<std::ptrdiff_t>(ages.size() / 4);
    std::nth_element(ages.begin(), quarter, ages.end());
    const uint64_t cutoff = *quarter;
    std::erase_if(cache, [&](const auto& entry) { return entry.second->last_use <= cutoff; });
  }
};

Bus::Bus(std::unique_ptr<State> state) : state_(std::move(state)) {}
Bus::Bus(Bus&&) noexcept = default;
Bus& Bus::operator=(Bus&&) noexcept = default;
Bus::~Bus() {
  if (!state_) return;
  {
    std::lock_guard<std::mutex> lock(state_->core->mutex);
    state_->core->closing = true;
  }
  state_->cache.clear();
}

Bus Bus::connect(const ConnectOptions& options) {
  const Endpoint endpoint = resolve_endpoint(options);
  auto state = std::make_unique<State>();
  state->core = std::make_shared<ClientCore>(endpoint, options.reconnect);
  open_directory(*state->core->memory);  // the control arena came with the welcome
  return Bus(std::move(state));
}

uint32_t Bus::publish(std::string_view channel, std::span<const std::byte> payload) {
  OpenChannel& ch = state_->cached(channel);
  constexpr auto kWait = std::chrono::seconds(5);
  const PublishResult r = publish_on(ch, payload, kWait);
  if (!r.ok()) throw_publish_error(ch, r.status, payload.size(), kWait);
  return r.receivers;
}

uint32_t Bus::publish(std::string_view channel, std::string_view text) {
  return publish(channel, std::as_bytes(std::span<const char>(text.data(), text.size())));
}

Channel Bus::channel(std::string_view name, const ChannelOptions& options) {
  auto state = std::make_unique<Channel::State>();
  state->open = open_channel(state_->core, name, options);
  state->options = options;
  return Channel(std::move(state));
}

namespace {

// The memory of a working link (connecting again first if the daemon went away), for
// reading the directory: it stays mapped while the caller holds it.
std::shared_ptr<BusMemory> current_memory(ClientCore& core) {
  return with_link(core, [&] { return core.memory; });
}

}  // namespace

std::vector<std::string> Bus::channels(std::string_view pattern) {
  std::vector<std::string> names;
  for_each_channel(*current_memory(*state_->core), [&](const DirectoryEntry& e) {
    // Redis lists channels with at least one subscriber (pattern subscribers do not count).
    if (e.descriptor->channel_subscribers.load(std::memory_order_relaxed) == 0) return;
    if (pattern.empty() || glob_match(pattern, e.name)) names.emplace_back(e.name);
  });
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<NumSub> Bus::numsub(std::span<const std::string> channels) {
  std::unordered_map<std::string_view, uint64_t> found;
  for (const auto& name : channels) found.emplace(name, 0);
  for_each_channel(*current_memory(*state_->core), [&](const DirectoryEntry& e) {
    auto it = found.find(e.name);
    if (it != found.end())
      it->second = e.descriptor->channel_subscribers.load(std::memory_order_relaxed);
  });
  std::vector<NumSub> result;
  for (const auto& name : channels) result.push_back({name, found[name]});
  return result;
}

uint64_t Bus::numpat() {
  const std::shared_ptr<BusMemory> memory = current_memory(*state_->core);
  return open_directory(*memory)->patterns.load(std::memory_order_relaxed);
}

std::vector<PatternInterest> Bus::patterns(std::string_view filter) {
  if (!filter.empty()) validate_pattern(filter);
  ClientCore& core = *state_->core;
  return with_link(core, [&] {
    ControlConnection& connection = *core.connection;
    if (connection.welcome().version < 2)
      throw Error(Errc::kProtocol, "this shmbusd speaks protocol version " +
                                       std::to_string(connection.welcome().version) +
                                       ", listing patterns needs version 2; upgrade shmbusd");
    Writer request = connection.next_request(Type::kPatterns);
    request.str(filter);
    OwnedFrame reply = connection.request(request);
    std::vector<PatternInterest> result;
    for (;;) {
      Parser p = reply.parser();
      const bool final = p.u8() != 0;
      const uint32_t n = p.count(kMaxFrameBytes, 8, "patterns");
      for (uint32_t i = 0; i < n; ++i) {
        PatternInterest interest;
        interest.pattern = std::string(p.str(kMaxPatternBytes, "pattern"));
        interest.subscribers = p.u32();
        result.push_back(std::move(interest));
      }
      p.end();
      if (final) return result;
      reply = connection.next_reply(reply.request, Type::kPatternList);
    }
  });
}

std::chrono::nanoseconds Bus::ping() {
  ClientCore& core = *state_->core;
  return with_link(core, [&] {
    const auto start = std::chrono::steady_clock::now();
    Writer ping = core.connection->next_request(Type::kPing);
    core.connection->request(ping);
    return std::chrono::nanoseconds(std::chrono::steady_clock::now() - start);
  });
}

const std::string& Bus::bus_name() const {
  return state_->core->endpoint.bus;
}
const std::string& Bus::socket_path() const {
  return state_->core->endpoint.socket_path;
}
LinkStats Bus::link_stats() const {
  std::lock_guard<std::mutex> lock(state_->core->mutex);
  return state_->core->reconnect.stats();
}

}  // namespace shmbus
