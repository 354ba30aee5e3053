// shmbus through its public API only: Bus/Channel to publish (Channel::loan, zero-copy, from
// 4 KiB, as iceoryx's peer loans), Subscription::next_view to receive (in place in the
// ring, as iceoryx's take()). The daemon runs in the harness process on a private bus.
#include <chrono>
#include <optional>
#include <vector>

#include "config.hpp"
#include "daemon_support.hpp"
#include "shmbus/bus.hpp"
#include "shmbus/subscription.hpp"
#include "systems.hpp"
#include "workloads.hpp"

namespace shmbus::compare {
namespace {

// Payloads from this size are written in place in the ring (Channel::loan): the sender
// writes only its two words, as it does in iceoryx's chunks, instead of copying a buffer
// it never filled. Smaller ones are copied in by Channel::publish, which costs less than a
// loan's claim/commit pair at that size.
constexpr size_t kLoanFromBytes = 4 * 1024;

// Ring settings by the harness's channel names (workload-bytes-cell): 4 MiB rings carry
// the 64 KiB and 1 MiB latency messages; throughput channels are lossless (back-pressure),
// as every peer is run in its lossless mode there. Everything else gets the default 64 KiB
// ring, which is what the late subscriber's history comes from.
constexpr const char* kDaemonConfig = R"toml(
[bus]
idle_ttl_seconds = 20

[[channel]]
pattern = "latency-65536-*"
ring_bytes = "4MiB"

[[channel]]
pattern = "latency-1048576-*"
ring_bytes = "4MiB"

[[channel]]
pattern = "throughput-*"
ring_bytes = "1MiB"
back_pressure = true
)toml";

ConnectOptions connect_options(const ChildSpec& spec) {
  return {spec.shmbus_bus, spec.shmbus_socket, "compare " + spec.role, {}};
}

class ShmbusPublisher {
 public:
  explicit ShmbusPublisher(const ChildSpec& spec)
      : bus_(Bus::connect(connect_options(spec))),
        channel_(bus_.channel(spec.topic)),
        buffer_(spec.payload_bytes),
        zero_copy_(spec.payload_bytes >= kLoanFromBytes) {}

  std::span<std::byte> prepare(size_t bytes) {
    if (!zero_copy_) return {buffer_.data(), bytes};
    loan_.emplace(channel_.loan(bytes));
    return loan_->data().first(bytes);
  }
  void send(size_t bytes) {
    if (zero_copy_) {
      loan_->commit(bytes);
      loan_.reset();
    } else {
      channel_.publish(std::span<const std::byte>(buffer_.data(), bytes));
    }
  }
  void flush() {}

 private:
  Bus bus_;
  Channel channel_;
  std::vector<std::byte> buffer_;
  bool zero_copy_;
  std::optional<Loan> loan_;
};

class ShmbusSubscriber {
 public:
  explicit ShmbusSubscriber(const ChildSpec& spec)
      : subscription_(Subscription::open(connect_options(spec))) {
    // A late subscriber asks for what the ring still holds.
    subscription_.subscribe(std::vector<std::string>{spec.topic},
                            spec.history ? StartAt::earliest() : StartAt::latest());
  }

  // Busy: next_view(0) never sleeps. Blocking: next_view(timeout) spins about 20 us, then
  // parks.
  std::optional<std::span<const std::byte>> receive(Wait wait, int64_t timeout_ns) {
    if (wait == Wait::kBusy) {
      Patience patience(timeout_ns);
      for (uint32_t i = 1;; ++i) {
        if (auto m = subscription_.next_view(std::chrono::nanoseconds(0))) return m->payload;
        if ((i & 255) == 0 && patience.exhausted()) return std::nullopt;
      }
    }
    if (auto m = subscription_.next_view(std::chrono::nanoseconds(timeout_ns))) return m->payload;
    return std::nullopt;
  }
  // The workloads read the payload before release(): check that no publisher overwrote it
  // meanwhile. Throughput channels are back-pressure and latency channels see one message
  // at a time, so this never fails unless the harness itself is wrong.
  void release() {
    if (!subscription_.intact())
      throw Failure("a message was overwritten while it was read (the subscriber was lapped)");
  }

 private:
  Subscription subscription_;
};

struct Shmbus {
  using Publisher = ShmbusPublisher;
  using Subscriber = ShmbusSubscriber;

  static nlohmann::json hold_patterns(const ChildSpec& spec, ControlPage& page) {
    return compare::hold_patterns(spec, page, [&](const std::vector<std::string>& patterns) {
      Subscription subscription = Subscription::open(connect_options(spec));
      subscription.psubscribe(patterns);
      return subscription;
    });
  }
};

class ShmbusServer : public Server {
 public:
  explicit ShmbusServer(daemon::Config config) : daemon_(std::move(config), "compare") {}
  void locate(ChildSpec& spec) const override {
    spec.shmbus_bus = daemon_.bus();
    spec.shmbus_socket = daemon_.socket_path();
  }

 private:
  test::TestDaemon daemon_;
};

nlohmann::json run_child(const ChildSpec& spec, ControlPage& page) {
  return run_role<Shmbus>(spec, page);
}

std::unique_ptr<Server> start(const Session&) {
  try {
    return std::make_unique<ShmbusServer>(daemon::parse_config(kDaemonConfig, "compare harness"));
  } catch (const std::exception& e) {
    throw Failure(std::string("shmbusd did not start: ") + e.what());
  }
}

std::string version() {
  return "shmbus " SHMBUS_VERSION " (in-process shmbusd)";
}

}  // namespace

System shmbus_system() {
  return {"shmbus", "shmbus", true, "", true, version, start, run_child};
}

}  // namespace shmbus::compare
