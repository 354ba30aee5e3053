// Cross-process figures of the channel ring: one-way latency (ping-pong RTT/2, or stamped
// one-way when the reader parks between sparse messages), zero-copy 1 MiB latency, and
// 1 -> 1 throughput. Every latency is reported as percentiles over individual samples.
//
//   ring_ipc_bench [--quick]
//
// Two processes, pinned to CPUs 0 and 1 when there are two. Time is read with the TSC,
// calibrated against CLOCK_MONOTONIC at start (a clock_gettime costs ~20 ns here, too much
// to bracket a 100 ns event).
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "arena.hpp"
#include "bench_support.hpp"
#include "doorbell.hpp"
#include "ring.hpp"

namespace shmbus {
namespace {

using shmbus::bench::percentiles;
using shmbus::bench::Percentiles;
using shmbus::bench::pin_to_cpu;

using namespace std::chrono_literals;

double g_ticks_per_ns = 1.0;

void calibrate_tsc() {
  const auto t0 = std::chrono::steady_clock::now();
  const uint64_t c0 = __rdtsc();
  timespec ts{0, 200'000'000};
  nanosleep(&ts, nullptr);
  const uint64_t c1 = __rdtsc();
  const auto t1 = std::chrono::steady_clock::now();
  g_ticks_per_ns =
      static_cast<double>(c1 - c0) /
      static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count());
}

constexpr int kMaxSamples = 400'000;

struct Control {
  std::atomic<int> child_ready;
  std::atomic<int> go;
  std::atomic<int> child_done;
  std::atomic<uint64_t> child_count;
  double samples[kMaxSamples];  // one-way samples measured by the child, in ns
};

enum class WaitMode { kBusy, kSpinThenPark };

// A bus of two rings (a->b, b->a) plus a control block, in one arena.
struct Pair {
  Pair(uint64_t capacity, bool back_pressure)
      : arena(Arena::create("shmbus-ipcbench", 64ULL << 20, 1)),
        doorbells(Arena::create("shmbus-ipcbench.doorbells", 1 << 20, 2)) {
    RingConfig config;
    config.capacity = capacity;
    config.back_pressure = back_pressure;
    config.reader_capacity = 4;
    for (auto* ring : {&ab, &ba}) {
      ring->block = arena.allocate(RingRef::block_bytes(config)).offset;
      ring->readers = arena.allocate(RingRef::readers_bytes(config)).offset;
      geometry = RingRef::format(arena.base() + ring->block, arena.base() + ring->readers, config)
                     .geometry();
    }
    // Doorbells have an arena of their own, as on a bus (arena 1 there).
    for (auto& offset : doorbell_offsets) {
      offset = doorbells.allocate(layout::doorbell_stride(1)).offset;
      doorbell::format(doorbells.base() + offset, 1);
    }
    control_offset = arena.allocate(sizeof(Control)).offset;
  }
  struct RingOffsets {
    uint64_t block = 0;
    uint64_t readers = 0;
  };
  RingRef open(const Arena& mapped, const RingOffsets& ring) const {
    return RingRef::open(mapped.base() + ring.block, mapped.size() - ring.block,
                         mapped.base() + ring.readers, mapped.size() - ring.readers, geometry);
  }
  Arena arena;
  Arena doorbells;
  RingGeometry geometry;
  RingOffsets ab, ba;
  uint64_t control_offset;
  uint64_t doorbell_offsets[2];
};

// What one side of the pair sees after mapping the segment again (as a separate process
// would, at another address).
struct Side {
  Side(Pair& pair, bool is_a)
      : arena(Arena::attach(dup(pair.arena.read_write_fd()), Arena::Access::kReadWrite,
                            pair.arena.name())),
        doorbells(Arena::attach(dup(pair.doorbells.read_write_fd()), Arena::Access::kReadWrite,
                                pair.doorbells.name())) {
    table.add(arena);
    table.add(doorbells);
    table.set_doorbells(doorbells.id(), 1);
    ab = pair.open(arena, pair.ab);
    ba = pair.open(arena, pair.ba);
    control = arena.at<Control>(pair.control_offset);
    doorbell_offset = pair.doorbell_offsets[is_a ? 0 : 1];
    doorbell_header = doorbell::open(doorbells.base() + doorbell_offset);
  }
  uint64_t doorbell_ref() const { return layout::ShmRef::make(doorbells.id(), doorbell_offset, 0); }
  Arena arena;
  Arena doorbells;
  ArenaTable table;
  RingRef ab, ba;
  Control* control;
  uint64_t doorbell_offset;
  layout::DoorbellHeader* doorbell_header;
};

// Waits for and consumes one message; returns its first 8 bytes (and touches all of it if
// `touch_all`).
uint64_t receive(Reader& reader, WaitMode mode, bool touch_all, std::vector<std::byte>& scratch) {
  for (;;) {
    MessageView view;
    if (reader.try_read(view) == Status::kOk) {
      uint64_t first = 0;
      std::memcpy(&first, view.payload, sizeof first);
      if (touch_all) std::memcpy(scratch.data(), view.payload, view.length);
      if (reader.consume(view)) return first;
      continue;
    }
    if (mode == WaitMode::kSpinThenPark)
      reader.wait(kWaitForever);
    else
      cpu_relax();
  }
}

void send(Publisher& publisher, uint32_t size, uint64_t first, bool touch_all,
          const std::vector<std::byte>& source) {
  RingLoan loan;
  while (publisher.claim(size, loan, kWaitForever) != Status::kOk) {
  }
  if (touch_all) std::memcpy(loan.payload, source.data(), size);
  std::memcpy(loan.payload, &first, sizeof first);  // zero-copy: only what the reader needs
  publisher.commit(loan, size);
}

template <typename Body>
pid_t fork_child(Body&& body) {
  const pid_t pid = fork();
  if (pid == 0) {
    try {
      body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
      _exit(1);
    }
    _exit(0);
  }
  return pid;
}

// Ping-pong: one-way = RTT / 2 for each exchange.
std::vector<double> ping_pong(uint32_t size, WaitMode mode, bool touch_all, int samples,
                              uint64_t capacity) {
  Pair pair(capacity, false);
  const pid_t child = fork_child([&] {
    pin_to_cpu(1);
    Side side(pair, false);
    Reader in(side.ab);
    in.register_slot(false, side.doorbell_ref(), side.doorbell_header, side.table.doorbells());
    Publisher out(side.ba, 2, &side.table);
    std::vector<std::byte> scratch(size), source(size, std::byte{1});
    side.control->child_ready.store(1);
    for (;;) {
      const uint64_t id = receive(in, mode, touch_all, scratch);
      if (id == ~uint64_t{0}) break;
      send(out, size, id, touch_all, source);
    }
  });
  pin_to_cpu(0);
  Side side(pair, true);
  Reader in(side.ba);
  in.register_slot(false, side.doorbell_ref(), side.doorbell_header, side.table.doorbells());
  Publisher out(side.ab, 1, &side.table);
  std::vector<std::byte> scratch(size), source(size, std::byte{2});
  while (side.control->child_ready.load() == 0) cpu_relax();
  const int warmup = std::min(samples, 20000);
  std::vector<double> one_way;
  one_way.reserve(samples);
  for (int i = 0; i < warmup + samples; ++i) {
    const uint64_t t0 = __rdtsc();
    send(out, size, static_cast<uint64_t>(i), touch_all, source);
    const uint64_t echoed = receive(in, mode, touch_all, scratch);
    const uint64_t t1 = __rdtsc();
    if (echoed != static_cast<uint64_t>(i)) std::fprintf(stderr, "ping-pong mismatch\n");
    if (i >= warmup) one_way.push_back(static_cast<double>(t1 - t0) / g_ticks_per_ns / 2);
  }
  send(out, size, ~uint64_t{0}, false, source);
  waitpid(child, nullptr, 0);
  return one_way;
}

// Sparse messages (one per `interval`) to a reader that parks between them: one-way from
// the publisher's TSC stamp to the reader's receipt (TSC is synchronized across cores).
std::vector<double> sparse_one_way(int samples, std::chrono::microseconds interval) {
  Pair pair(1 << 16, false);
  const pid_t child = fork_child([&] {
    pin_to_cpu(1);
    Side side(pair, false);
    Reader in(side.ab);
    in.register_slot(false, side.doorbell_ref(), side.doorbell_header, side.table.doorbells());
    std::vector<std::byte> scratch(64);
    side.control->child_ready.store(1);
    for (int i = 0;; ++i) {
      const uint64_t stamp = receive(in, WaitMode::kSpinThenPark, false, scratch);
      const uint64_t now = __rdtsc();
      if (stamp == ~uint64_t{0}) break;
      if (i < kMaxSamples)
        side.control->samples[i] = static_cast<double>(now - stamp) / g_ticks_per_ns;
      side.control->child_count.store(static_cast<uint64_t>(i + 1));
    }
  });
  pin_to_cpu(0);
  Side side(pair, true);
  Publisher out(side.ab, 1, &side.table);
  std::vector<std::byte> source(64);
  while (side.control->child_ready.load() == 0) cpu_relax();
  for (int i = 0; i < samples; ++i) {
    timespec ts{0, static_cast<long>(std::chrono::nanoseconds(interval).count())};
    nanosleep(&ts, nullptr);
    send(out, 64, __rdtsc(), false, source);
  }
  send(out, 64, ~uint64_t{0}, false, source);
  waitpid(child, nullptr, 0);
  const auto n = std::min<uint64_t>(side.control->child_count.load(), kMaxSamples);
  return std::vector<double>(side.control->samples, side.control->samples + n);
}

struct Throughput {
  double messages_per_second;
  uint64_t delivered, lost;
};

// 1 publisher process -> 1 reader process, `count` messages of `size` bytes, as fast as the
// publisher can go. Back-pressure: lossless, rate set by both. Lossy: the reader counts what
// it got and what it lost.
Throughput throughput(uint32_t size, uint64_t count, bool back_pressure) {
  Pair pair(1 << 20, back_pressure);
  pin_to_cpu(1);
  Side side(pair, false);
  Reader in(side.ab);
  in.register_slot(back_pressure);
  const pid_t child = fork_child([&] {
    pin_to_cpu(0);
    Side pub_side(pair, true);
    Publisher out(pub_side.ab, 1, &pub_side.table);
    std::vector<std::byte> source(size, std::byte{3});
    while (pub_side.control->go.load() == 0) cpu_relax();
    for (uint64_t i = 0; i < count; ++i) send(out, size, i, false, source);
    pub_side.control->child_done.store(1);
  });
  side.control->go.store(1);
  uint64_t received = 0;
  std::chrono::steady_clock::time_point first{}, last{};
  MessageView view;
  for (;;) {
    if (in.try_read(view) == Status::kOk) {
      uint64_t id;
      std::memcpy(&id, view.payload, sizeof id);
      if (in.consume(view)) {
        if (received++ == 0) first = std::chrono::steady_clock::now();
        if (id == count - 1) {
          last = std::chrono::steady_clock::now();
          break;
        }
      }
    } else if (side.control->child_done.load() && !in.has_data()) {
      last = std::chrono::steady_clock::now();
      break;
    }
  }
  waitpid(child, nullptr, 0);
  const double seconds = std::chrono::duration<double>(last - first).count();
  return {static_cast<double>(in.delivered() + in.lost() - 1) / seconds, in.delivered(), in.lost()};
}

// In-process claim+commit per message, timed in batches of 1000.
std::vector<double> inproc_publish(int batches) {
  Pair pair(1 << 20, false);
  ArenaTable table;
  table.add(pair.arena);
  Publisher publisher(pair.open(pair.arena, pair.ab), 1, &table);
  std::vector<std::byte> payload(64, std::byte{4});
  std::vector<double> per_message;
  for (int b = 0; b < batches + 100; ++b) {
    const uint64_t t0 = __rdtsc();
    for (int i = 0; i < 1000; ++i) {
      RingLoan loan;
      publisher.claim(64, loan);
      std::memcpy(loan.payload, payload.data(), 64);
      publisher.commit(loan, 64);
    }
    const uint64_t t1 = __rdtsc();
    if (b >= 100) per_message.push_back(static_cast<double>(t1 - t0) / g_ticks_per_ns / 1000);
  }
  return per_message;
}

void print_row(const char* name, const Percentiles& p, const char* unit = "ns") {
  std::printf("| %-58s | %9.0f | %9.0f | %9.0f | %9.0f | %s\n", name, p.p50, p.p90, p.p99, p.p999,
              unit);
}

}  // namespace
}  // namespace shmbus

int main(int argc, char** argv) {
  using namespace shmbus;
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  const int samples = quick ? 20'000 : 200'000;
  calibrate_tsc();
  std::printf("TSC %.3f ticks/ns; %ld CPUs online; %d samples per latency row\n\n", g_ticks_per_ns,
              sysconf(_SC_NPROCESSORS_ONLN), samples);
  std::printf("| %-58s | %9s | %9s | %9s | %9s |\n", "measure", "p50", "p90", "p99", "p99.9");
  std::printf("|%s|-----------|-----------|-----------|-----------|\n",
              std::string(60, '-').c_str());
  print_row("in-process claim+commit, 64 B (per message, batches of 1000)",
            percentiles(inproc_publish(quick ? 2000 : 20000)));
  const auto busy64 = percentiles(ping_pong(64, WaitMode::kBusy, false, samples, 1 << 16));
  print_row("one-way 64 B, busy-polling reader (ping-pong RTT/2)", busy64);
  print_row("one-way 64 B, spin-then-park reader (ping-pong RTT/2)",
            percentiles(ping_pong(64, WaitMode::kSpinThenPark, false, samples, 1 << 16)));
  print_row("one-way 64 B, parked reader, 1 message per ms (stamped)",
            percentiles(sparse_one_way(quick ? 500 : 3000, 1000us)));
  const auto big =
      percentiles(ping_pong(1 << 20, WaitMode::kBusy, false, quick ? 2000 : 20000, 4 << 20));
  print_row("one-way 1 MiB zero-copy, busy (RTT/2; first 8 B touched)", big);
  print_row("one-way 1 MiB written and read in full, busy (RTT/2)",
            percentiles(ping_pong(1 << 20, WaitMode::kBusy, true, quick ? 500 : 3000, 4 << 20)));
  std::printf("\n1 MiB zero-copy p50 / 64 B p50 = %.2f\n\n", big.p50 / busy64.p50);

  const uint64_t count = quick ? 2'000'000 : 20'000'000;
  for (bool back_pressure : {true, false}) {
    const auto t = throughput(64, count, back_pressure);
    std::printf("throughput 1 -> 1, 64 B, %s: %.2f M msg/s (delivered %llu, lost %llu of %llu)\n",
                back_pressure ? "back-pressure (lossless)" : "lossy", t.messages_per_second / 1e6,
                static_cast<unsigned long long>(t.delivered),
                static_cast<unsigned long long>(t.lost), static_cast<unsigned long long>(count));
  }
  return 0;
}
