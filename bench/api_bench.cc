// What the public API adds to the ring (Google Benchmark, one thread): Channel::publish
// followed by Subscription::next / next_view on the same channel, against an in-process
// shmbusd. ring_bench's BM_PublishAndReadCopy is the same round without the API, so the
// difference between the two is the library's own cost per message.
#include <benchmark/benchmark.h>

#include <chrono>
#include <optional>
#include <vector>

#include "daemon_support.hpp"
#include "shmbus/bus.hpp"
#include "shmbus/subscription.hpp"

namespace shmbus {
namespace {

using std::chrono::nanoseconds;

struct ApiFixture {
  ApiFixture() {
    daemon::Config config = test::small_test_config();
    config.defaults.ring_bytes = 4 << 20;  // room for the 64 KiB case without lapping
    daemon.emplace(std::move(config), "api");
    bus.emplace(Bus::connect(daemon->options()));
    subscription.emplace(Subscription::open(daemon->options()));
    subscription->subscribe({"bench:api"});
    channel.emplace(bus->channel("bench:api"));
  }
  std::optional<test::TestDaemon> daemon;
  std::optional<Bus> bus;
  std::optional<Subscription> subscription;
  std::optional<Channel> channel;
};

// `zero_copy`: next_view() hands out the ring's bytes; otherwise next() copies them.
void publish_and_receive(benchmark::State& state, bool zero_copy) {
  ApiFixture f;
  std::vector<std::byte> payload(static_cast<size_t>(state.range(0)), std::byte{7});
  uint64_t checksum = 0;
  for (auto _ : state) {
    f.channel->publish(payload);
    auto m = zero_copy ? f.subscription->next_view(nanoseconds(0))
                       : f.subscription->next(nanoseconds(0));
    if (!m) {
      state.SkipWithError("published message not received");
      break;
    }
    // Touch the payload as a consumer would: first and last byte.
    checksum += static_cast<uint64_t>(m->payload.front()) + static_cast<uint64_t>(m->payload.back());
  }
  benchmark::DoNotOptimize(checksum);
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

void BM_PublishNext(benchmark::State& state) { publish_and_receive(state, false); }
void BM_PublishNextView(benchmark::State& state) { publish_and_receive(state, true); }
BENCHMARK(BM_PublishNext)->Arg(64)->Arg(4096)->Arg(65536)->Repetitions(3)->ReportAggregatesOnly(true);
BENCHMARK(BM_PublishNextView)->Arg(64)->Arg(4096)->Arg(65536)->Repetitions(3)->ReportAggregatesOnly(true);

}  // namespace
}  // namespace shmbus

BENCHMARK_MAIN();
