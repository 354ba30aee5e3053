#include "requests.hpp"

#include <algorithm>
#include <iterator>
#include <optional>
#include <utility>

#include "clock.hpp"
#include "glob.hpp"
#include "naming.hpp"

namespace shmbus::daemon {

using namespace protocol;

namespace {

constexpr uint32_t kMaxClientNameBytes = 256;

// A u32 count and that many strings of at most `max_bytes`.
std::vector<std::string> read_names(Parser& p, uint32_t max_bytes, const char* what) {
  const uint32_t n = p.count(kMaxNamesPerRequest, 4, what);
  std::vector<std::string> names;
  names.reserve(n);
  for (uint32_t i = 0; i < n; ++i) names.emplace_back(p.str(max_bytes, what));
  return names;
}

}  // namespace

Requests::Requests(const Config& config, std::string bus, std::shared_ptr<spdlog::logger> log,
                   Registry& registry, Connections& connections, Subscriptions& subscriptions,
                   CrashRepair& repair, Access& access, Reclaimer& reclaimer, Turn& turn,
                   PublisherIds& publisher_ids)
    : config_(config),
      bus_(std::move(bus)),
      log_(std::move(log)),
      registry_(registry),
      connections_(connections),
      subscriptions_(subscriptions),
      repair_(repair),
      access_(access),
      reclaimer_(reclaimer),
      turn_(turn),
      publisher_ids_(publisher_ids) {}

void Requests::dispatch(Client& c, const Frame& f) {
  if (!c.greeted && f.type != Type::kHello)
    throw ProtocolError(std::string("first message must be HELLO, got ") + type_name(f.type));
  // A goodbye vouches for the frames written so far; anything after it needs a new one.
  if (f.type != Type::kBye) c.said_bye = false;
  try {
    switch (f.type) {
      case Type::kHello: return on_hello(c, f);
      case Type::kOpenChannel: return on_open_channel(c, f);
      case Type::kCloseChannel: return on_close_channel(c, f);
      case Type::kSubscribe: return on_subscribe(c, f);
      case Type::kPsubscribe: return on_psubscribe(c, f);
      case Type::kUnsubscribe: return on_unsubscribe(c, f, false);
      case Type::kPunsubscribe: return on_unsubscribe(c, f, true);
      case Type::kPatterns: return on_patterns(c, f);
      case Type::kMapArenas: return on_map_arenas(c, f);
      case Type::kReportCorrupt: return on_report_corrupt(c, f);
      case Type::kPing: {
        Parser p(f.fields);
        p.end();
        Writer w(Type::kPong, f.request);
        w.u64(unix_now_ns());
        return connections_.send(c, w);
      }
      case Type::kBye: {
        Parser p(f.fields);
        p.end();
        c.said_bye = true;
        Writer w(Type::kOk, f.request);
        return connections_.send(c, w);
      }
      default:
        throw ProtocolError(std::string("unexpected message type ") +
                            std::to_string(static_cast<unsigned>(f.type)) + " (" +
                            type_name(f.type) + ") from a client");
    }
  } catch (const Error& e) {
    reply_error(c, f.request, e.code(), e.what());
  }
}

void Requests::on_hello(Client& c, const Frame& f) {
  Parser p(f.fields);
  const uint32_t magic = p.u32();
  const uint16_t min_version = p.u16();
  const uint16_t max_version = p.u16();
  const std::string name(p.str(kMaxClientNameBytes, "client name"));
  const uint8_t role = p.u8();
  p.end();
  if (role > static_cast<uint8_t>(Role::kObserver))
    throw ProtocolError("HELLO with unknown role " + std::to_string(role));
  if (magic != kProtocolMagic) throw ProtocolError("HELLO without the shmbus magic");
  if (c.greeted) throw ProtocolError("second HELLO on one connection");
  // The highest version both speak: older clients keep working against a newer daemon.
  const uint16_t version = std::min(max_version, kProtocolVersion);
  if (version < min_version || version < kMinProtocolVersion) {
    reply_error(c, f.request, Errc::kProtocol,
                "client speaks protocol versions " + std::to_string(min_version) + ".." +
                    std::to_string(max_version) + ", this shmbusd speaks " +
                    std::to_string(kMinProtocolVersion) + ".." + std::to_string(kProtocolVersion) +
                    "; use matching libshmbus and shmbusd");
    return;
  }
  const std::optional<uint16_t> publisher_id = publisher_ids_.acquire();
  if (!publisher_id)
    throw Error(Errc::kLimit, "all 65535 publisher ids are in use; close idle connections");
  c.greeted = true;
  c.name = name;
  c.role = static_cast<Role>(role);
  c.publisher_id = *publisher_id;
  if (c.role == Role::kSubscriber) {
    const Registry::Doorbell doorbell = registry_.allocate_doorbell();
    c.doorbell_block = doorbell.block;
    c.doorbell_bits = registry_.doorbell_bits();
    c.doorbell = doorbell.header;
  }
  access_.grant_basics(c);
  log_->debug("client {} hello: pid {} uid {} '{}' publisher id {}", c.id, c.cred.pid, c.cred.uid,
              c.name, c.publisher_id);
  Writer w(Type::kWelcome, f.request);
  w.u16(version)
      .u16(c.publisher_id)
      .u64(c.id)
      .str(bus_)
      .u32(registry_.doorbell_bits())  // every doorbell's, for publishers too
      .u64(c.doorbell_block ? c.doorbell_block->offset : 0);
  connections_.send(c, w);
}

void Requests::on_open_channel(Client& c, const Frame& f) {
  Parser p(f.fields);
  OpenRequest r;
  r.request = f.request;
  r.name = std::string(p.str(kMaxChannelNameBytes, "channel name"));
  r.ring_bytes = p.u64();
  r.max_message = p.u32();
  r.back_pressure = p.u8();
  p.end();
  validate_channel_name(r.name);
  if (c.role != Role::kPublisher)
    throw ProtocolError("OPEN_CHANNEL on a connection that said it would not publish");
  if (!try_open(c, r)) c.job = open_channel_job(std::move(r));
}

bool Requests::try_open(Client& c, const OpenRequest& r) {
  const std::string& name = r.name;
  ChannelSettings wanted = config_.settings_for(name);
  const bool asked = r.ring_bytes != 0 || r.max_message != 0 || r.back_pressure != 0;
  if (r.ring_bytes != 0) wanted.ring_bytes = r.ring_bytes;
  if (r.max_message != 0) wanted.max_message_bytes = r.max_message;
  if (r.back_pressure != 0) wanted.back_pressure = r.back_pressure == 2;
  if (asked) wanted.rule = "requested by the client";
  // Refused before anything is created: a user who may not publish there creates nothing.
  access_.check_publish(c, name);
  check_requested_ring(name, config_.settings_for(name), r.ring_bytes);
  const auto [ch, created] = find_or_create(c, name, asked ? &wanted : nullptr);
  if (!created && asked) {
    const RingRef& ring = ch.ring;
    const bool differs = (r.ring_bytes != 0 && r.ring_bytes != ring.capacity()) ||
                         (r.max_message != 0 && r.max_message != ring.max_payload()) ||
                         (r.back_pressure != 0 && (r.back_pressure == 2) != ring.back_pressure());
    if (differs)
      throw Error(Errc::kInvalidArgument,
                  "channel " + printable(name) + " exists with " + describe_settings(ch.settings) +
                      ", not the " + describe_settings(wanted) +
                      " asked for; open it without settings, or set them for all its users with a "
                      "[[channel]] rule");
  }
  // Its pattern subscribers are not all attached yet: a message published now could pass
  // them by. The publisher learns where the ring is once they are.
  if (ch.matching) return false;
  ++c.open_channels[ch.id];
  ++ch.publisher_holds;
  access_.grant_ring(c, ch);
  Writer w(Type::kChannelOpened, r.request);
  ch.location().write(w);
  w.str(ch.settings.rule);
  connections_.send(c, w);
  return true;
}

void Requests::on_close_channel(Client& c, const Frame& f) {
  Parser p(f.fields);
  const uint32_t channel_id = p.u32();
  p.end();
  auto it = c.open_channels.find(channel_id);
  if (it == c.open_channels.end())
    throw Error(Errc::kInvalidArgument,
                "channel id " + std::to_string(channel_id) + " is not open on this connection");
  if (--it->second == 0) c.open_channels.erase(it);
  // Live, or out of service and waiting for its publishers to let go.
  if (ChannelState* ch = registry_.find_any(channel_id)) {
    --ch->publisher_holds;
    if (!ch->quarantined) ch->last_active = Clock::now();
  }
  Writer w(Type::kOk, f.request);
  connections_.send(c, w);
}

void Requests::on_subscribe(Client& c, const Frame& f) {
  Parser p(f.fields);
  const auto start_at = static_cast<StartKind>(p.u8());
  const uint64_t after_sequence = p.u64();
  if (start_at > StartKind::kAfterSequence) throw ProtocolError("unknown start position");
  std::vector<std::string> names = read_names(p, kMaxChannelNameBytes, "channel name");
  p.end();
  (void)after_sequence;  // the client seeks; the slot only has to sit at or before it
  for (const auto& name : names) validate_channel_name(name);
  if (c.doorbell == nullptr && !names.empty())
    throw ProtocolError("subscribe on a connection that asked for no doorbell in HELLO");
  // As Redis: one channel the user may not read refuses the whole command.
  for (const auto& name : names) access_.check_subscribe(c, name);
  size_t adding = 0;
  for (const auto& name : names) adding += c.channels.count(name) ? 0 : 1;
  check_subscription_limit(c, adding, "channel");
  start(c, subscribe_job(f.request, start_at, std::move(names)));
}

void Requests::on_psubscribe(Client& c, const Frame& f) {
  Parser p(f.fields);
  std::vector<std::string> patterns = read_names(p, kMaxPatternBytes, "pattern");
  p.end();
  for (const auto& pattern : patterns) validate_pattern(pattern);
  size_t adding = 0;
  for (const auto& pattern : patterns) adding += c.patterns.count(pattern) ? 0 : 1;
  check_subscription_limit(c, adding, "pattern");
  if (c.doorbell == nullptr)
    throw ProtocolError("psubscribe on a connection that asked for no doorbell in HELLO");
  start(c, psubscribe_job(f.request, std::move(patterns)));
}

void Requests::on_patterns(Client& c, const Frame& f) {
  Parser p(f.fields);
  std::string filter(p.str(kMaxPatternBytes, "pattern filter"));
  p.end();
  if (!filter.empty()) validate_pattern(filter);
  start(c, patterns_job(f.request, std::move(filter)));
}

void Requests::on_unsubscribe(Client& c, const Frame& f, bool patterns) {
  Parser p(f.fields);
  std::vector<std::string> names = read_names(p, patterns ? kMaxPatternBytes : kMaxChannelNameBytes,
                                              patterns ? "pattern" : "channel name");
  p.end();
  if (names.empty()) {  // all, as a bare Redis UNSUBSCRIBE / PUNSUBSCRIBE
    if (patterns)
      names.assign(c.patterns.begin(), c.patterns.end());
    else
      names.assign(c.channels.begin(), c.channels.end());
  }
  std::vector<uint32_t> detached;
  if (patterns) {
    detached = subscriptions_.unsubscribe_patterns(c, names);
  } else {
    for (const auto& name : names)
      if (const std::optional<uint32_t> id = subscriptions_.unsubscribe_channel(c, name))
        detached.push_back(*id);
  }
  Writer w(Type::kUnsubscribed, f.request);
  w.u32(static_cast<uint32_t>(detached.size()));
  for (uint32_t id : detached) w.u32(id);
  w.u32(static_cast<uint32_t>(c.channels.size() + c.patterns.size()));
  connections_.send(c, w);
}

void Requests::reply_error(Client& c, uint32_t request, Errc code, const std::string& message) {
  Writer w(Type::kError, request);
  w.u16(static_cast<uint16_t>(code)).str(message.substr(0, kMaxErrorBytes));
  connections_.send(c, w);
}

void Requests::check_requested_ring(std::string_view name, const ChannelSettings& configured,
                                    uint64_t ring_bytes) const {
  const uint64_t allowed = configured.largest_ring_a_client_may_ask();
  if (ring_bytes <= allowed) return;
  throw Error(Errc::kLimit,
              "channel " + printable(name) + " may be given a ring of at most " +
                  human_bytes(allowed) + " by a client, not the " + human_bytes(ring_bytes) +
                  " asked for (max_ring_bytes = " + std::to_string(configured.max_ring_bytes) +
                  (configured.max_ring_bytes == 0 ? ", i.e. its ring_bytes," : "") + " of rule '" +
                  configured.rule + "' in " + config_.source +
                  "); raise max_ring_bytes in a [[channel]] rule for it");
}

void Requests::check_subscription_limit(const Client& c, size_t adding, const char* kind) {
  const uint32_t limit = config_.max_subscriptions_per_client;
  const size_t held = c.channels.size() + c.patterns.size();
  if (held + adding > limit)
    throw Error(Errc::kLimit,
                "subscribing to " + std::to_string(adding) + " more " + kind +
                    "(s) would exceed max_subscriptions_per_client = " + std::to_string(limit) +
                    " (this subscription holds " + std::to_string(held) +
                    "); raise it in [limits] of " + config_.source);
}

Registry::Found Requests::find_or_create(const Client& c, std::string_view name,
                                         const ChannelSettings* requested) {
  const Registry::Found found = registry_.find_or_create(name, requested, Creator{c.cred.uid});
  if (found.created) subscriptions_.match_new_channel(found.channel);
  return found;
}

void Requests::on_map_arenas(Client& c, const Frame& f) {
  Parser p(f.fields);
  p.end();
  if (c.role != Role::kObserver)
    throw ProtocolError("MAP_ARENAS on a connection that is not an observer");
  access_.grant_readable(c);
  Writer w(Type::kOk, f.request);
  connections_.send(c, w);
}

void Requests::on_report_corrupt(Client& c, const Frame& f) {
  Parser p(f.fields);
  const uint32_t channel_id = p.u32();
  p.end();
  // Only a channel the client uses, and each channel at most once a second: a report costs
  // a walk over the ring.
  if (ChannelState* ch = registry_.find_live(channel_id);
      ch != nullptr && (c.open_channels.count(channel_id) || c.attached.count(channel_id)))
    reclaimer_.check_reported(*ch, describe(c));
  Writer w(Type::kOk, f.request);
  connections_.send(c, w);
}

std::string Requests::describe(const Client& c) const {
  return connections_.describe_client(c.id);
}

void Requests::finish_client(Client& c) {
  subscriptions_.release(c);
  for (auto& [channel_id, handles] : c.open_channels)
    if (ChannelState* ch = registry_.find_any(channel_id)) ch->publisher_holds -= handles;
  c.open_channels.clear();
  publisher_ids_.release(c.publisher_id);
  c.publisher_id = 0;
}

void Requests::repair_and_finish(Client& c) {
  std::vector<uint32_t> held;
  for (auto& [channel_id, handles] : c.open_channels) held.push_back(channel_id);
  // The id goes back once its frames are repaired: repair decides when.
  repair_.repair_publisher(std::exchange(c.publisher_id, 0), held);
  finish_client(c);
}

}  // namespace shmbus::daemon
