// What the comparison harness's processes share: the clock, the control page through which
// a cell's processes pace and coordinate each other (outside the system under test), the
// description of a child's job, and the two payload words every receiver reads.
//
// Every workload runs in child processes that the harness execs (`compare --child SPEC`),
// one per publisher and per subscriber. The children of one cell map the same control page
// (a memfd passed as fd 3) and write one JSON result to fd 4.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace shmbus::compare {

// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the host, so a stamp taken
// by a publisher can be compared with the subscriber's reading.
int64_t mono_ns();

// A counter in the control page that one process advances and others wait on: spinning for
// a while (so a fast partner is seen at once), then sleeping on a futex (so a waiting process
// leaves its CPU to the system under test).
struct alignas(64) Signal {
  std::atomic<uint32_t> value{0};
  std::atomic<uint32_t> sleepers{0};

  void set(uint32_t v);
  void add(uint32_t n = 1);
  uint32_t get() const { return value.load(std::memory_order_acquire); }
  // True once value >= target; false at `deadline_ns`.
  bool wait_at_least(uint32_t target, int64_t spin_ns, int64_t deadline_ns);
};

inline constexpr int kMaxPublishers = 8;
inline constexpr int kControlFd = 3;
inline constexpr int kResultFd = 4;

// One per cell, zeroed by the harness, shared by the cell's children and the harness.
struct ControlPage {
  Signal ready;      // subscribers that have seen a probe from every publisher (or hold patterns)
  Signal ack;        // latency: the last sequence the receiver took
  Signal warmed;     // throughput: subscribers that got the last warm-up message of every publisher
  Signal measuring;  // throughput: publishers that are about to start the measured phase
  Signal finished;   // throughput: publishers that have sent their last message
  Signal published;  // late subscriber: the publisher has published everything
  Signal stop;       // everyone may exit (set by the harness or the latency sender)
  // Throughput: the sequence of a publisher's last message, stored before it is sent, so
  // a subscriber knows the last one when it arrives; 0 while the publisher is running.
  std::atomic<uint64_t> last_sequence[kMaxPublishers];
};
static_assert(std::atomic<uint32_t>::is_always_lock_free && std::atomic<int64_t>::is_always_lock_free,
              "the control page is shared between processes: its atomics must be lock-free");

// Maps the control page a child inherited as kControlFd.
ControlPage& map_inherited_control_page();

enum class Wait { kBusy, kBlocking };
NLOHMANN_JSON_SERIALIZE_ENUM(Wait, {{Wait::kBusy, "busy"}, {Wait::kBlocking, "blocking"}})

// A child's job. Durations in nanoseconds.
struct ChildSpec {
  std::string system;  // shmbus, iceoryx, redis, zeromq, uds
  std::string role;    // latency-sender, latency-receiver, throughput-publisher, ...
  std::string topic;   // channel / service / socket name of the cell
  uint64_t payload_bytes = 64;
  Wait wait = Wait::kBlocking;
  int cpu = -1;  // pinned to this CPU; -1: not pinned
  int publisher_index = 0;
  int publishers = 1;
  int subscribers = 1;
  bool lossless = false;  // the system's lossless mode (back-pressure, blocking producer...)
  bool history = false;   // a late subscriber asking for what the system retains
  // latency
  uint64_t warmup = 0;
  uint64_t max_samples = 0;
  int64_t measure_ns = 0;   // measured phase ends after this or max_samples, first reached
  int64_t gap_ns = 0;       // > 0: one message per gap (sparse); else back to back
  int64_t ack_spin_ns = 0;  // how long the sender spins for the acknowledgement before sleeping
  // throughput, publish rate
  int64_t duration_ns = 0;
  uint64_t warmup_messages = 0;
  // patterns, late subscriber
  uint64_t patterns = 0;
  uint64_t messages = 0;
  // where the servers listen
  std::string shmbus_bus, shmbus_socket, ipc_dir;
  int redis_port = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(ChildSpec, system, role, topic, payload_bytes,
                                                wait, cpu, publisher_index, publishers,
                                                subscribers, lossless, history, warmup,
                                                max_samples, measure_ns, gap_ns, ack_spin_ns,
                                                duration_ns, warmup_messages, patterns,
                                                messages, shmbus_bus, shmbus_socket, ipc_dir,
                                                redis_port)

// A failure of the system under test or of a child, reported in the cell instead of figures.
class Failure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The payload rule, the same for every system: the sender writes only the first and the last
// 8 bytes (the rest is whatever the buffer or loaned chunk holds), and the receiver reads
// exactly those two words, nothing else. Payloads are at least 16 bytes.
inline void put_words(std::span<std::byte> payload, uint64_t first, uint64_t last) {
  std::memcpy(payload.data() + payload.size() - sizeof last, &last, sizeof last);
  std::memcpy(payload.data(), &first, sizeof first);
}
struct Words {
  uint64_t first = 0, last = 0;
};
inline Words read_words(std::span<const std::byte> payload) {
  Words w;
  std::memcpy(&w.first, payload.data(), sizeof w.first);
  std::memcpy(&w.last, payload.data() + payload.size() - sizeof w.last, sizeof w.last);
  return w;
}

}  // namespace shmbus::compare
