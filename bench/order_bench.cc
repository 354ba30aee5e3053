// Order across channels (issue 14): one publisher thread publishes a counter, 64 B a
// message, to channels in turn; one subscriber thread reads them all through one
// subscription and counts the deliveries that come out of publish order (a counter below
// one already delivered). Redis delivers none out of order; the figure before and after the
// ordering work, with the rate, is what this prints.
//
//   order_bench [--quick]
//
// Cases: 1 channel by name (the single-channel path, which ordering must not tax); 2 and 64
// channels under one pattern, in turn; 100,000 channels under `user:*` (--quick: 10,000),
// the publisher going round all of them. The daemon runs in this process; rings are 4 MiB
// (4 KiB for the many channels), and what laps the subscriber is counted as lost.
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.hpp"
#include "daemon_support.hpp"
#include "shmbus/bus.hpp"
#include "shmbus/subscription.hpp"

namespace shmbus {
namespace {

using Clock = std::chrono::steady_clock;

struct Result {
  uint64_t published = 0, delivered = 0, lost = 0, out_of_order = 0;
  double seconds = 0;
};

// `channels` names published to in turn; `pattern` empty: the subscriber holds them by name.
Result run_case(const std::vector<std::string>& channels, const std::string& pattern,
                uint64_t messages, uint64_t ring_bytes = 4 << 20) {
  daemon::Config config = test::small_test_config();
  config.defaults.ring_bytes = ring_bytes;
  config.max_channels = 200000;
  config.max_subscriptions_per_client = 200000;
  config.max_shared_memory = 4ull << 30;  // the 2 GiB the cases need at most, and room
  config.arena_bytes = 4ull << 30;
  test::TestDaemon daemon(config, "order");
  auto sub = Subscription::open(daemon.options());
  if (pattern.empty())
    sub.subscribe(channels);
  else
    sub.psubscribe({pattern});
  auto bus = Bus::connect(daemon.options());
  // Open every channel first (a pattern subscriber attaches as they are created), so the
  // timed part is publishing and reading only.
  std::vector<Channel> open;
  open.reserve(channels.size());
  for (const auto& name : channels) open.push_back(bus.channel(name));
  while (sub.next(std::chrono::milliseconds(10))) {
  }

  Result result;
  std::atomic<bool> done{false};
  std::thread subscriber([&] {
    bench::pin_to_cpu(1);
    uint64_t highest = 0;
    bool any = false;
    Clock::time_point first{}, last{};
    while (true) {
      auto m = sub.next_view(std::chrono::milliseconds(200));
      if (!m) {
        if (done.load()) break;
        continue;
      }
      uint64_t counter;
      std::memcpy(&counter, m->payload.data(), sizeof counter);
      if (!sub.intact()) continue;
      last = Clock::now();
      if (!any) first = last;
      ++result.delivered;
      result.lost += m->lost_before;
      if (any && counter < highest) ++result.out_of_order;
      if (!any || counter > highest) highest = counter;
      any = true;
    }
    result.seconds = std::chrono::duration<double>(last - first).count();
  });
  bench::pin_to_cpu(0);
  std::vector<std::byte> payload(64);
  for (uint64_t i = 0; i < messages; ++i) {
    std::memcpy(payload.data(), &i, sizeof i);
    open[i % open.size()].publish(payload);
  }
  result.published = messages;
  done = true;
  subscriber.join();
  return result;
}

void print(const char* name, const Result& r) {
  std::printf("| %s | %s | %s | %.2f M/s | %s (%.1f %%) | %s |\n", name,
              bench::with_commas(r.published).c_str(), bench::with_commas(r.delivered).c_str(),
              r.seconds > 0 ? static_cast<double>(r.delivered) / r.seconds / 1e6 : 0.0,
              bench::with_commas(r.out_of_order).c_str(),
              r.delivered
                  ? 100.0 * static_cast<double>(r.out_of_order) / static_cast<double>(r.delivered)
                  : 0.0,
              bench::with_commas(r.lost).c_str());
  std::fflush(stdout);
}

std::vector<std::string> names(const std::string& prefix, size_t n) {
  std::vector<std::string> out;
  for (size_t i = 0; i < n; ++i) out.push_back(prefix + std::to_string(i));
  return out;
}

}  // namespace
}  // namespace shmbus

int main(int argc, char** argv) {
  using namespace shmbus;
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const uint64_t messages = quick ? 200'000 : 2'000'000;
  const size_t many = quick ? 10'000 : 100'000;
  std::printf("| case | published | delivered | rate | out of publish order | lost (lapped) |\n");
  std::printf("|---|---|---|---|---|---|\n");
  print("1 channel, by name", run_case({"one"}, "", messages));
  print("2 channels in turn, one pattern", run_case(names("two:", 2), "two:*", messages));
  print("64 channels in turn, one pattern", run_case(names("many:", 64), "many:*", messages));
  const std::string label = bench::with_commas(many) + " channels in turn, `user:*`";
  // 4 KiB rings here: 100,000 rings of 4 MiB would reserve 400 GiB.
  print(label.c_str(),
        run_case(names("user:", many), "user:*", std::max<uint64_t>(messages, 2 * many), 4096));
  return 0;
}
