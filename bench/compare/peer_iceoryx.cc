// iceoryx 2.0 (Debian's libiceoryx): the untyped publisher and subscriber, so the payload size
// varies as in the other systems; loan() writes in place (zero-copy), take() reads in place;
// the blocking receiver waits in a WaitSet. The harness runs its own iox-roudi on a config
// sized for the workloads and stops it by pid.
#include <grp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "iceoryx_posh/mepoo/chunk_header.hpp"
#include "iceoryx_posh/popo/untyped_publisher.hpp"
#include "iceoryx_posh/popo/untyped_subscriber.hpp"
#include "iceoryx_posh/popo/wait_set.hpp"
#include "iceoryx_posh/runtime/posh_runtime.hpp"
#include "iceoryx_versions.hpp"
#include "process.hpp"
#include "systems.hpp"
#include "workloads.hpp"

namespace shmbus::compare {
namespace {

// IOX_MAX_PUBLISHER_HISTORY of the Debian build: the most a late subscriber can ask for.
constexpr uint64_t kMaxHistory = 16;

// Mempools: the payload sizes of the workloads (RouDi adds the chunk header on top). Counts
// cover the worst case in flight: four subscriber queues of 256 chunks (the default) on
// different chunks, plus loans, for the throughput sizes; a few messages for the large ones.
constexpr const char* kRoudiConfig = R"toml([general]
version = 1

[[segment]]

[[segment.mempool]]
size = 128
count = 4096

[[segment.mempool]]
size = 4096
count = 2048

[[segment.mempool]]
size = 65536
count = 64

[[segment.mempool]]
size = 1048576
count = 32
)toml";

iox::capro::ServiceDescription service_of(const ChildSpec& spec) {
  return {"shmbus-compare", iox::capro::IdString_t(iox::cxx::TruncateToCapacity, spec.topic.c_str()),
          "payload"};
}

class IceoryxPublisher {
 public:
  explicit IceoryxPublisher(const ChildSpec& spec) : publisher_(service_of(spec), options(spec)) {}

  std::span<std::byte> prepare(size_t bytes) {
    auto loan = publisher_.loan(static_cast<uint32_t>(bytes), alignof(uint64_t));
    if (loan.has_error())
      throw Failure("iceoryx could not loan " + std::to_string(bytes) + " bytes (AllocationError " +
                    std::to_string(static_cast<int>(loan.get_error())) + ")");
    chunk_ = loan.value();
    return {static_cast<std::byte*>(chunk_), bytes};
  }
  void send(size_t) {
    publisher_.publish(chunk_);
    chunk_ = nullptr;
  }
  void flush() {}

 private:
  static iox::popo::PublisherOptions options(const ChildSpec& spec) {
    iox::popo::PublisherOptions o;
    if (spec.history) o.historyCapacity = kMaxHistory;
    if (spec.lossless) o.subscriberTooSlowPolicy = iox::popo::ConsumerTooSlowPolicy::WAIT_FOR_CONSUMER;
    return o;
  }

  iox::popo::UntypedPublisher publisher_;
  void* chunk_ = nullptr;
};

class IceoryxSubscriber {
 public:
  explicit IceoryxSubscriber(const ChildSpec& spec) : subscriber_(service_of(spec), options(spec)) {
    if (waitset_.attachState(subscriber_, iox::popo::SubscriberState::HAS_DATA).has_error())
      throw Failure("iceoryx: cannot attach the subscriber to a WaitSet");
  }

  // Busy: take() until a chunk comes. Blocking: take(), and when the queue is empty sleep in
  // the WaitSet until the subscriber has data.
  std::optional<std::span<const std::byte>> receive(Wait wait, int64_t timeout_ns) {
    Patience patience(timeout_ns);
    for (uint32_t i = 1;; ++i) {
      auto taken = subscriber_.take();
      if (!taken.has_error()) {
        chunk_ = taken.value();
        const auto* header = iox::mepoo::ChunkHeader::fromUserPayload(chunk_);
        return std::span<const std::byte>(static_cast<const std::byte*>(chunk_),
                                          header->userPayloadSize());
      }
      if (taken.get_error() != iox::popo::ChunkReceiveResult::NO_CHUNK_AVAILABLE)
        throw Failure("iceoryx take() failed: the subscriber holds too many chunks");
      if (wait == Wait::kBusy) {
        if ((i & 255) == 0 && patience.exhausted()) return std::nullopt;
        continue;
      }
      const int64_t left = patience.left();
      if (left <= 0) return std::nullopt;
      waitset_.timedWait(iox::units::Duration::fromNanoseconds(left));
    }
  }
  void release() {
    subscriber_.release(chunk_);
    chunk_ = nullptr;
  }

 private:
  static iox::popo::SubscriberOptions options(const ChildSpec& spec) {
    iox::popo::SubscriberOptions o;
    if (spec.history) o.historyRequest = kMaxHistory;
    if (spec.lossless) o.queueFullPolicy = iox::popo::QueueFullPolicy::BLOCK_PRODUCER;
    return o;
  }

  iox::popo::UntypedSubscriber subscriber_;
  iox::popo::WaitSet<1> waitset_;  // destroyed first: it detaches from the subscriber
  const void* chunk_ = nullptr;
};

struct Iceoryx {
  using Publisher = IceoryxPublisher;
  using Subscriber = IceoryxSubscriber;
};

// What iox-roudi creates, removed after it stops in case it could not clean up itself.
std::vector<std::string> roudi_leftovers() {
  std::vector<std::string> paths = {"/dev/shm/iceoryx_mgmt", "/tmp/roudi", "/tmp/roudi.lock",
                                    "/tmp/iox-unique-roudi.lock"};
  // The payload segment is named after the group that may write it: RouDi's own group.
  if (const group* g = getgrgid(getegid())) paths.push_back(std::string("/dev/shm/") + g->gr_name);
  return paths;
}

// Each child's runtime leaves a socket /tmp/<runtime name> if it is killed.
std::string runtime_name_prefix(pid_t harness) {
  return "shmbus-compare-" + std::to_string(harness) + "-";
}

class Roudi : public Server {
 public:
  explicit Roudi(const Session& session) : harness_pid_(session.harness_pid) {
    const std::string binary = "/usr/bin/iox-roudi";
    if (access(binary.c_str(), X_OK) != 0)
      throw Failure("iox-roudi is not installed (apt-get install iceoryx)");
    const std::string config = session.dir + "/roudi.toml";
    std::ofstream(config) << kRoudiConfig;
    // Monitoring off, as iceoryx itself defaults to after 2.0: its keep-alive checks only
    // add jitter here.
    process_ = std::make_unique<ServerProcess>(
        std::vector<std::string>{binary, "-c", config, "-m", "off"}, session.dir + "/roudi.log");
    const int64_t deadline = mono_ns() + 20 * kSecond;
    while (read_file(process_->log_path()).find("RouDi is ready for clients") == std::string::npos) {
      if (!process_->running() || mono_ns() > deadline) {
        const std::string tail = log_tail(process_->log_path());
        stop();
        throw Failure("iox-roudi did not start: " + tail);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    started_ = true;
  }
  ~Roudi() override { stop(); }
  void locate(ChildSpec&) const override {}  // every runtime finds RouDi at /tmp/roudi

 private:
  void stop() {
    if (!process_) return;
    const bool cleaned_up_itself = process_->stop();
    process_.reset();
    std::error_code ec;
    if (started_ && !cleaned_up_itself)
      for (const auto& path : roudi_leftovers()) std::filesystem::remove(path, ec);
    const std::string prefix = runtime_name_prefix(harness_pid_);
    for (const auto& entry : std::filesystem::directory_iterator("/tmp", ec))
      if (entry.path().filename().string().rfind(prefix, 0) == 0)
        std::filesystem::remove(entry.path(), ec);
  }

  pid_t harness_pid_;
  std::unique_ptr<ServerProcess> process_;
  bool started_ = false;
};

nlohmann::json run_child(const ChildSpec& spec, ControlPage& page) {
  const std::string name = runtime_name_prefix(getppid()) + std::to_string(getpid());
  iox::runtime::PoshRuntime::initRuntime(
      iox::RuntimeName_t(iox::cxx::TruncateToCapacity, name.c_str()));
  return run_role<Iceoryx>(spec, page);
}

std::unique_ptr<Server> start(const Session& session) { return std::make_unique<Roudi>(session); }

std::string version() { return "iceoryx " ICEORYX_LATEST_RELEASE_VERSION " (iox-roudi)"; }

}  // namespace

System iceoryx_system() {
  return {"iceoryx", "iceoryx", true, "", false, version, start, run_child};
}

}  // namespace shmbus::compare
