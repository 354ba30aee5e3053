// In-process costs of the ring (Google Benchmark): what a publish costs the publishing
// thread, with and without the pieces that may join it (a timestamp, a linked doorbell,
// a reader in the same thread). Cross-process figures come from ring_ipc_bench.
#include <benchmark/benchmark.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "arena.hpp"
#include "ring.hpp"

namespace shmbus {
namespace {

struct Fixture {
  explicit Fixture(uint64_t capacity, bool back_pressure = false)
      : arena(Arena::create("shmbus-bench", 64ULL << 20, 1)) {
    table.add(arena);
    RingConfig config;
    config.capacity = capacity;
    config.back_pressure = back_pressure;
    const auto block = arena.allocate(RingRef::block_bytes(config));
    const auto readers = arena.allocate(RingRef::readers_bytes(config));
    ring = RingRef::format(arena.base() + block.offset, arena.base() + readers.offset, config);
  }
  Arena arena;
  ArenaTable table;
  RingRef ring;
};

uint64_t realtime_ns() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ULL + static_cast<uint64_t>(ts.tv_nsec);
}

// The measured loop: claim, copy the payload in, commit.
void claim_copy_commit(benchmark::State& state, Publisher& publisher,
                       const std::vector<std::byte>& payload, bool stamp_time) {
  const auto size = static_cast<uint32_t>(payload.size());
  RingLoan loan;
  for (auto _ : state) {
    publisher.claim(size, loan);
    std::memcpy(loan.payload, payload.data(), size);
    publisher.commit(loan, size, PublishMeta{stamp_time ? realtime_ns() : 0, 0});
  }
  state.SetItemsProcessed(state.iterations());
}

// Claim + write + commit, lossy ring of 1 MiB, in steady state (every claim retires the
// previous lap's frame, as it does forever after the first lap).
void BM_ClaimCommit(benchmark::State& state) {
  Fixture f(1 << 20);
  Publisher publisher(f.ring, 1, &f.table);
  const auto size = static_cast<uint32_t>(state.range(0));
  std::vector<std::byte> payload(size, std::byte{0x42});
  RingLoan loan;
  for (int i = 0; i < 100000; ++i) {  // warm up past the first lap
    publisher.claim(size, loan);
    publisher.commit(loan, size);
  }
  claim_copy_commit(state, publisher, payload, false);
  state.SetBytesProcessed(state.iterations() * size);
}
BENCHMARK(BM_ClaimCommit)
    ->Arg(64)
    ->Arg(4096)
    ->Arg(65536)
    ->Repetitions(5)
    ->ReportAggregatesOnly(true);

// The same plus a CLOCK_REALTIME stamp, as the public publish() will do.
void BM_ClaimCommitWithTimestamp(benchmark::State& state) {
  Fixture f(1 << 20);
  Publisher publisher(f.ring, 1, &f.table);
  claim_copy_commit(state, publisher, std::vector<std::byte>(64, std::byte{0x42}), true);
}
BENCHMARK(BM_ClaimCommitWithTimestamp)->Repetitions(5)->ReportAggregatesOnly(true);

// With a reader's doorbell linked (nobody asleep): the fence and the doorbell check.
void BM_ClaimCommitDoorbellLinked(benchmark::State& state) {
  Fixture f(1 << 20);
  // Doorbells have an arena of their own, as on a bus (arena 1 there).
  Arena doorbells = Arena::create("shmbus-bench.doorbells", 1 << 20, 2);
  f.table.add(doorbells);
  f.table.set_doorbells(2, 1);
  const auto block = doorbells.allocate(layout::doorbell_stride(1));
  auto* d = doorbell::format(doorbells.base() + block.offset, 1);
  Reader reader(f.ring);
  reader.register_slot(false, layout::ShmRef::make(2, block.offset, 0), d, f.table.doorbells());
  Publisher publisher(f.ring, 1, &f.table);
  claim_copy_commit(state, publisher, std::vector<std::byte>(64, std::byte{0x42}), false);
}
BENCHMARK(BM_ClaimCommitDoorbellLinked)->Repetitions(5)->ReportAggregatesOnly(true);

// Publish then read back in the same thread: the reader's per-message cost on warm lines.
void BM_PublishAndReadCopy(benchmark::State& state) {
  Fixture f(1 << 20);
  Publisher publisher(f.ring, 1, &f.table);
  Reader reader(f.ring);
  std::vector<std::byte> payload(64, std::byte{0x42});
  std::vector<std::byte> buffer;
  MessageInfo info;
  for (auto _ : state) {
    publisher.publish(payload);
    benchmark::DoNotOptimize(reader.try_read_copy(buffer, info));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PublishAndReadCopy)->Repetitions(5)->ReportAggregatesOnly(true);

}  // namespace
}  // namespace shmbus

BENCHMARK_MAIN();
