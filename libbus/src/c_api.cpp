// The C API (include/shmbus/shmbus.h) over the C++ one: handles own the C++ objects, every
// entry point catches what the C++ side throws and turns it into a status code plus the
// thread's last error text, so no exception crosses into C (or into a binding compiled
// without exceptions, as node-gyp compiles by default).
#include <chrono>
#include <cstddef>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "naming.hpp"
#include "shmbus/shmbus.h"
#include "shmbus/shmbus.hpp"

struct shmbus_bus {
  shmbus::Bus bus;
};
struct shmbus_channel {
  shmbus::Channel channel;
};
struct shmbus_loan {
  shmbus::Loan loan;
};
struct shmbus_sub {
  shmbus::Subscription sub;
};
struct shmbus_names {
  std::vector<std::string> names;
};
struct shmbus_stats {
  shmbus::BusStats snapshot;  // owns the names the rows point into
  std::vector<shmbus_channel_stats> rows;
};

namespace {

using shmbus::Errc;

thread_local std::string last_error;  // shmbus_last_error(): this thread's, by design

int code_of(Errc code) {
  switch (code) {
    case Errc::kNoDaemon: return SHMBUS_ENODAEMON;
    case Errc::kDaemonGone: return SHMBUS_EDAEMONGONE;
    case Errc::kProtocol: return SHMBUS_EPROTOCOL;
    case Errc::kInvalidArgument: return SHMBUS_EINVAL;
    case Errc::kTooLarge: return SHMBUS_ETOOLARGE;
    case Errc::kLimit: return SHMBUS_ELIMIT;
    case Errc::kWouldBlock: return SHMBUS_EWOULDBLOCK;
    case Errc::kTimedOut: return SHMBUS_ETIMEDOUT;
    case Errc::kSystem: return SHMBUS_ESYSTEM;
    case Errc::kCorrupt: return SHMBUS_ECORRUPT;
    case Errc::kPermission: return SHMBUS_EPERMISSION;
  }
  return SHMBUS_EINTERNAL;
}

int fail(int code, std::string text) {
  last_error = std::move(text);
  return code;
}

// Runs `body` (which returns a status), turning anything it throws into a status.
template <typename Body>
int guarded(Body&& body) noexcept {
  try {
    return body();
  } catch (const shmbus::Error& e) {
    return fail(code_of(e.code()), e.what());
  } catch (const std::bad_alloc&) {
    return fail(SHMBUS_ENOMEM, "out of memory");
  } catch (const std::exception& e) {
    return fail(SHMBUS_EINTERNAL, std::string("libshmbus: ") + e.what());
  } catch (...) {
    return fail(SHMBUS_EINTERNAL, "libshmbus: an unknown exception");
  }
}

// Argument checks: a C caller's mistake is an error with a text, never a crash.
void require(bool ok, const char* text) {
  if (!ok) throw shmbus::Error(Errc::kInvalidArgument, text);
}

std::string_view bytes_of(const char* data, size_t len, const char* what) {
  if (data == nullptr && len > 0)
    throw shmbus::Error(Errc::kInvalidArgument, std::string(what) + " is NULL with a length");
  return {data == nullptr ? "" : data, len};
}

std::vector<std::string> names_of(const char* const* names, const size_t* lengths, size_t n,
                                  const char* what) {
  require(n == 0 || (names != nullptr && lengths != nullptr),
          "names or lengths is NULL with a count");
  std::vector<std::string> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.emplace_back(bytes_of(names[i], lengths[i], what));
  return out;
}

// A wait of more than ~31 years is a wait without limit (-1): the C++ API adds timeouts to
// the clock, which a value near INT64_MAX would overflow.
std::chrono::nanoseconds nanos(int64_t ns) {
  constexpr int64_t kForever = 1'000'000'000'000'000'000;
  return std::chrono::nanoseconds(ns > kForever ? -1 : ns);
}

shmbus::ConnectOptions connect_options(const shmbus_options* o) {
  shmbus::ConnectOptions options;
  if (o == nullptr) return options;
  require(o->size != 0, "shmbus_options.size is 0: call shmbus_options_init() first");
  // Fields past what the caller's struct holds (built with an older header) keep their
  // defaults.
#define SHMBUS_HAS(field) (o->size >= offsetof(shmbus_options, field) + sizeof(o->field))
  if (SHMBUS_HAS(bus) && o->bus != nullptr) options.bus = o->bus;
  if (SHMBUS_HAS(socket_path) && o->socket_path != nullptr) options.socket_path = o->socket_path;
  if (SHMBUS_HAS(client_name) && o->client_name != nullptr) options.client_name = o->client_name;
  if (SHMBUS_HAS(reconnect)) options.reconnect.enabled = o->reconnect != 0;
  if (SHMBUS_HAS(reconnect_wait_ns) && o->reconnect_wait_ns >= 0)
    options.reconnect.wait = nanos(o->reconnect_wait_ns).count() < 0
                                 ? std::chrono::hours(24 * 365)  // "forever", without overflow
                                 : nanos(o->reconnect_wait_ns);
#undef SHMBUS_HAS
  return options;
}

std::span<const std::byte> payload_of(const void* data, size_t len) {
  require(data != nullptr || len == 0, "data is NULL with a length");
  return {static_cast<const std::byte*>(data), len};
}

// The text try_publish's statuses carry no text of their own: named here, with the way out.
int publish_failure(const shmbus_channel& c, shmbus::PublishStatus status, size_t bytes,
                    int64_t wait_ns) {
  const std::string name = shmbus::printable(c.channel.name());
  switch (status) {
    case shmbus::PublishStatus::kOk: return SHMBUS_OK;
    case shmbus::PublishStatus::kTooLarge:
      return fail(SHMBUS_ETOOLARGE, "message of " + std::to_string(bytes) +
                                        " bytes exceeds channel " + name + " limit of " +
                                        std::to_string(c.channel.max_message_bytes()) +
                                        " bytes; raise it with a [[channel]] rule in shmbusd.toml "
                                        "(max_message_bytes, ring_bytes)");
    case shmbus::PublishStatus::kWouldBlock:
      return fail(SHMBUS_EWOULDBLOCK, "channel " + name +
                                          " is full (back-pressure: its slowest subscriber is "
                                          "a ring behind) and no wait was allowed");
    case shmbus::PublishStatus::kTimedOut:
      return fail(SHMBUS_ETIMEDOUT, "channel " + name + " stayed full for " +
                                        std::to_string(wait_ns / 1'000'000) +
                                        " ms: its slowest subscriber is a ring behind; speed it "
                                        "up or enlarge ring_bytes");
    case shmbus::PublishStatus::kCorrupt:
      return fail(SHMBUS_ECORRUPT, "channel " + name +
                                       "'s ring was found corrupt (another process wrote into "
                                       "it); nothing was published, the daemon replaces it");
    case shmbus::PublishStatus::kDaemonGone:
      return fail(SHMBUS_EDAEMONGONE, "channel " + name +
                                          ": the daemon is gone and did not come back in time; "
                                          "nothing was published");
    case shmbus::PublishStatus::kRefused:
      return fail(SHMBUS_EREFUSED,
                  "channel " + name +
                      " had to be opened again (its daemon restarted or replaced the ring) and "
                      "the daemon refused; nothing was published");
  }
  return fail(SHMBUS_EINTERNAL, "libshmbus: unknown publish status");
}

void fill(shmbus_message* out, const shmbus::Message& m) {
  out->channel = m.channel.data();
  out->channel_len = m.channel.size();
  out->pattern = m.pattern.data();
  out->pattern_len = m.pattern.size();
  out->data = m.payload.data();
  out->len = m.payload.size();
  out->sequence = m.sequence;
  out->publish_unix_ns = m.publish_unix_ns;
  out->lost_before = m.lost_before;
  out->origin = m.origin;
  out->gap = m.gap ? 1 : 0;
}

int next_message(shmbus_sub* sub, int64_t timeout_ns, shmbus_message* out, bool view) {
  return guarded([&]() -> int {
    require(sub != nullptr && out != nullptr, "sub or message is NULL");
    const std::optional<shmbus::Message> m =
        view ? sub->sub.next_view(nanos(timeout_ns)) : sub->sub.next(nanos(timeout_ns));
    if (!m) return SHMBUS_NO_MESSAGE;
    fill(out, *m);
    return SHMBUS_OK;
  });
}

}  // namespace

extern "C" {

const char* shmbus_strerror(int code) {
  switch (code) {
    case SHMBUS_OK: return "success";
    case SHMBUS_NO_MESSAGE: return "no message within the timeout";
    case SHMBUS_ENODAEMON: return "no daemon answers on the control socket";
    case SHMBUS_EDAEMONGONE: return "the daemon went away";
    case SHMBUS_EPROTOCOL: return "the daemon speaks a protocol this library cannot read";
    case SHMBUS_EINVAL: return "invalid argument";
    case SHMBUS_ETOOLARGE: return "message too large for its channel";
    case SHMBUS_ELIMIT: return "a daemon limit refused it";
    case SHMBUS_EWOULDBLOCK: return "back-pressure channel full";
    case SHMBUS_ETIMEDOUT: return "back-pressure channel stayed full";
    case SHMBUS_ESYSTEM: return "a system call failed";
    case SHMBUS_ECORRUPT: return "a channel's shared memory is corrupt";
    case SHMBUS_EPERMISSION: return "an access rule of the daemon forbids it";
    case SHMBUS_ENOMEM: return "out of memory";
    case SHMBUS_EREFUSED: return "the daemon refused to reopen the channel";
    case SHMBUS_EINTERNAL: return "internal error in libshmbus";
    default: return "unknown status code";
  }
}

const char* shmbus_last_error(void) {
  return last_error.c_str();
}

void shmbus_version(int* major, int* minor, int* patch) {
  if (major != nullptr) *major = SHMBUS_VERSION_MAJOR;
  if (minor != nullptr) *minor = SHMBUS_VERSION_MINOR;
  if (patch != nullptr) *patch = SHMBUS_VERSION_PATCH;
}

void shmbus_options_init(shmbus_options* options) {
  if (options == nullptr) return;
  std::memset(options, 0, sizeof *options);
  options->size = sizeof *options;
  options->reconnect = 1;
  options->reconnect_wait_ns = -1;  // the library's default
}

// ---- Publishing --------------------------------------------------------------------------

int shmbus_connect(const shmbus_options* options, shmbus_bus** bus) {
  return guarded([&]() -> int {
    require(bus != nullptr, "bus is NULL");
    *bus = nullptr;
    *bus = new shmbus_bus{shmbus::Bus::connect(connect_options(options))};
    return SHMBUS_OK;
  });
}

void shmbus_bus_close(shmbus_bus* bus) {
  delete bus;
}

int shmbus_publish(shmbus_bus* bus, const char* channel, size_t channel_len, const void* data,
                   size_t len, uint32_t* receivers) {
  return guarded([&]() -> int {
    require(bus != nullptr, "bus is NULL");
    const uint32_t n =
        bus->bus.publish(bytes_of(channel, channel_len, "channel"), payload_of(data, len));
    if (receivers != nullptr) *receivers = n;
    return SHMBUS_OK;
  });
}

int shmbus_channel_open(shmbus_bus* bus, const char* channel, size_t channel_len,
                        shmbus_channel** out) {
  return guarded([&]() -> int {
    require(bus != nullptr && out != nullptr, "bus or out is NULL");
    *out = nullptr;
    *out = new shmbus_channel{bus->bus.channel(bytes_of(channel, channel_len, "channel"))};
    return SHMBUS_OK;
  });
}

void shmbus_channel_close(shmbus_channel* channel) {
  delete channel;
}

size_t shmbus_channel_max_message_bytes(const shmbus_channel* channel) {
  return channel == nullptr ? 0 : channel->channel.max_message_bytes();
}

int shmbus_channel_publish(shmbus_channel* channel, const void* data, size_t len, int64_t wait_ns,
                           uint32_t* receivers) {
  return guarded([&]() -> int {
    require(channel != nullptr, "channel is NULL");
    const shmbus::PublishResult r =
        channel->channel.try_publish(payload_of(data, len), nanos(wait_ns));
    if (!r.ok()) return publish_failure(*channel, r.status, len, wait_ns);
    if (receivers != nullptr) *receivers = r.receivers;
    return SHMBUS_OK;
  });
}

int shmbus_channel_loan(shmbus_channel* channel, size_t bytes, shmbus_loan** out) {
  return guarded([&]() -> int {
    require(channel != nullptr && out != nullptr, "channel or out is NULL");
    *out = nullptr;
    *out = new shmbus_loan{channel->channel.loan(bytes)};
    return SHMBUS_OK;
  });
}

void* shmbus_loan_data(shmbus_loan* loan, size_t* capacity) {
  if (loan == nullptr) {
    if (capacity != nullptr) *capacity = 0;
    return nullptr;
  }
  const std::span<std::byte> data = loan->loan.data();
  if (capacity != nullptr) *capacity = data.size();
  return data.data();
}

int shmbus_loan_commit(shmbus_loan* loan, size_t bytes, uint32_t* receivers) {
  const int status = guarded([&]() -> int {
    require(loan != nullptr, "loan is NULL");
    const uint32_t n = loan->loan.commit(bytes);
    if (receivers != nullptr) *receivers = n;
    return SHMBUS_OK;
  });
  delete loan;  // committed, or (failed) abandoned by the Loan's destructor
  return status;
}

void shmbus_loan_abandon(shmbus_loan* loan) {
  delete loan;  // the Loan's destructor abandons it
}

// ---- PUBSUB introspection ----------------------------------------------------------------

size_t shmbus_names_count(const shmbus_names* names) {
  return names == nullptr ? 0 : names->names.size();
}

const char* shmbus_names_at(const shmbus_names* names, size_t index, size_t* len) {
  if (names == nullptr || index >= names->names.size()) {
    if (len != nullptr) *len = 0;
    return nullptr;
  }
  if (len != nullptr) *len = names->names[index].size();
  return names->names[index].data();
}

void shmbus_names_free(shmbus_names* names) {
  delete names;
}

int shmbus_pubsub_channels(shmbus_bus* bus, const char* pattern, size_t pattern_len,
                           shmbus_names** out) {
  return guarded([&]() -> int {
    require(bus != nullptr && out != nullptr, "bus or out is NULL");
    *out = nullptr;
    *out = new shmbus_names{bus->bus.channels(bytes_of(pattern, pattern_len, "pattern"))};
    return SHMBUS_OK;
  });
}

int shmbus_pubsub_numsub(shmbus_bus* bus, const char* const* channels, const size_t* lengths,
                         size_t n, uint64_t* counts) {
  return guarded([&]() -> int {
    require(bus != nullptr && (counts != nullptr || n == 0), "bus or counts is NULL");
    const std::vector<std::string> names = names_of(channels, lengths, n, "channel");
    const std::vector<shmbus::NumSub> found = bus->bus.numsub(names);
    for (size_t i = 0; i < n; ++i) counts[i] = i < found.size() ? found[i].subscribers : 0;
    return SHMBUS_OK;
  });
}

int shmbus_pubsub_numpat(shmbus_bus* bus, uint64_t* count) {
  return guarded([&]() -> int {
    require(bus != nullptr && count != nullptr, "bus or count is NULL");
    *count = bus->bus.numpat();
    return SHMBUS_OK;
  });
}

// ---- Subscribing -------------------------------------------------------------------------

int shmbus_sub_open(const shmbus_options* options, shmbus_sub** sub) {
  return guarded([&]() -> int {
    require(sub != nullptr, "sub is NULL");
    *sub = nullptr;
    *sub = new shmbus_sub{shmbus::Subscription::open(connect_options(options))};
    return SHMBUS_OK;
  });
}

void shmbus_sub_close(shmbus_sub* sub) {
  delete sub;
}

int shmbus_subscribe(shmbus_sub* sub, const char* const* channels, const size_t* lengths, size_t n,
                     int start, uint64_t after_sequence) {
  return guarded([&]() -> int {
    require(sub != nullptr, "sub is NULL");
    shmbus::StartAt from;
    switch (start) {
      case SHMBUS_START_LATEST: from = shmbus::StartAt::latest(); break;
      case SHMBUS_START_EARLIEST: from = shmbus::StartAt::earliest(); break;
      case SHMBUS_START_AFTER: from = shmbus::StartAt::after(after_sequence); break;
      default:
        return fail(SHMBUS_EINVAL, "start is " + std::to_string(start) +
                                       ": use SHMBUS_START_LATEST, SHMBUS_START_EARLIEST or "
                                       "SHMBUS_START_AFTER");
    }
    sub->sub.subscribe(names_of(channels, lengths, n, "channel"), from);
    return SHMBUS_OK;
  });
}

int shmbus_psubscribe(shmbus_sub* sub, const char* const* patterns, const size_t* lengths,
                      size_t n) {
  return guarded([&]() -> int {
    require(sub != nullptr, "sub is NULL");
    sub->sub.psubscribe(names_of(patterns, lengths, n, "pattern"));
    return SHMBUS_OK;
  });
}

int shmbus_unsubscribe(shmbus_sub* sub, const char* const* channels, const size_t* lengths,
                       size_t n) {
  return guarded([&]() -> int {
    require(sub != nullptr, "sub is NULL");
    sub->sub.unsubscribe(names_of(channels, lengths, n, "channel"));
    return SHMBUS_OK;
  });
}

int shmbus_punsubscribe(shmbus_sub* sub, const char* const* patterns, const size_t* lengths,
                        size_t n) {
  return guarded([&]() -> int {
    require(sub != nullptr, "sub is NULL");
    sub->sub.punsubscribe(names_of(patterns, lengths, n, "pattern"));
    return SHMBUS_OK;
  });
}

size_t shmbus_sub_count(const shmbus_sub* sub) {
  return sub == nullptr ? 0 : sub->sub.count();
}

int shmbus_next(shmbus_sub* sub, int64_t timeout_ns, shmbus_message* message) {
  return next_message(sub, timeout_ns, message, false);
}

int shmbus_next_view(shmbus_sub* sub, int64_t timeout_ns, shmbus_message* message) {
  return next_message(sub, timeout_ns, message, true);
}

int shmbus_sub_intact(shmbus_sub* sub) {
  return sub != nullptr && sub->sub.intact() ? 1 : 0;
}

int shmbus_sub_fd(shmbus_sub* sub, int* fd) {
  return guarded([&]() -> int {
    require(sub != nullptr && fd != nullptr, "sub or fd is NULL");
    *fd = sub->sub.fd();
    return SHMBUS_OK;
  });
}

// ---- Counters ----------------------------------------------------------------------------

int shmbus_stats_read(const shmbus_options* options, const char* pattern, size_t pattern_len,
                      shmbus_stats** out) {
  return guarded([&]() -> int {
    require(out != nullptr, "out is NULL");
    *out = nullptr;
    auto stats = std::make_unique<shmbus_stats>();
    stats->snapshot = shmbus::StatsReader::open(connect_options(options))
                          .read(bytes_of(pattern, pattern_len, "pattern"));
    for (const shmbus::ChannelStats& c : stats->snapshot.channels)
      stats->rows.push_back({c.channel.data(), c.channel.size(), c.published, c.payload_bytes,
                             c.subscribers, c.receivers, c.lost, c.delivered,
                             c.last_publish_unix_ns, c.ring_bytes, c.max_message_bytes,
                             c.back_pressure ? 1 : 0});
    *out = stats.release();
    return SHMBUS_OK;
  });
}

size_t shmbus_stats_count(const shmbus_stats* stats) {
  return stats == nullptr ? 0 : stats->rows.size();
}

const shmbus_channel_stats* shmbus_stats_at(const shmbus_stats* stats, size_t index) {
  return stats == nullptr || index >= stats->rows.size() ? nullptr : &stats->rows[index];
}

void shmbus_stats_free(shmbus_stats* stats) {
  delete stats;
}

}  // extern "C"
