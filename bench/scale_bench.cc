// Scale figures of the bus as a whole: many channels, many patterns, new channels. Prints a
// Markdown report for docs/BENCHMARKS.md.
//
//   scale_bench [--quick]
//
// 1. N live channels (100,000; --quick 10,000) read by one `user:*` pattern subscriber:
//    creation rate, shared memory, mappings and fds per client, publish -> deliver latency
//    across the N channels against one channel, and the subscriber's CPU while idle.
// 2. Publish rate on one channel with 0 and with 10,000 (--quick 1,000) non-matching pattern
//    subscriptions on the bus.
// 3. A channel created by its first publish: publish-call start -> pattern subscriber
//    receives, and the cost of that first publish call (it opens the channel at the daemon).
//
// The daemon runs in this process on a thread. Publishers and subscribers are child
// processes that use only the public client API; they are forked before the daemon of their
// section exists (so they inherit none of its descriptors or mappings) and take commands
// and return results through pipes. Latencies are one-way: the publisher stamps
// CLOCK_MONOTONIC (shared by all processes) into the payload just before the publish call,
// the subscriber reads the clock as next() returns. Each message is acknowledged (a word in
// an anonymous shared page, spin or futex) before the next one is sent, so none queues.
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.hpp"
#include "config.hpp"
#include "ring.hpp"
#include "server.hpp"
#include "shmbus/bus.hpp"
#include "shmbus/subscription.hpp"

namespace {

using shmbus::bench::percentiles;
using shmbus::bench::Percentiles;
using shmbus::bench::pin_to_cpu;
using shmbus::bench::with_commas;

using namespace std::chrono_literals;
namespace fs = std::filesystem;

// ---- small helpers ------------------------------------------------------------------------

int64_t mono_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

double seconds_since(int64_t t0) {
  return static_cast<double>(mono_ns() - t0) / 1e9;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

std::string us(double ns) {
  char b[32];
  if (ns < 10'000)
    std::snprintf(b, sizeof b, "%.2f µs", ns / 1e3);
  else if (ns < 1e6)
    std::snprintf(b, sizeof b, "%.1f µs", ns / 1e3);
  else
    std::snprintf(b, sizeof b, "%.2f ms", ns / 1e6);
  return b;
}

std::string mib(double bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f MiB", bytes / (1024.0 * 1024.0));
  return b;
}

std::string rate(double per_second) {
  char b[32];
  if (per_second >= 1e6)
    std::snprintf(b, sizeof b, "%.2f M/s", per_second / 1e6);
  else if (per_second >= 1e3)
    std::snprintf(b, sizeof b, "%.1f K/s", per_second / 1e3);
  else
    std::snprintf(b, sizeof b, "%.0f /s", per_second);
  return b;
}

int g_failures = 0;
void fail(const std::string& what) {
  ++g_failures;
  std::fprintf(stderr, "FAILED: %s\n", what.c_str());
  std::printf("\n**FAILED: %s**\n\n", what.c_str());
}

// ---- acknowledgements in an anonymous shared page -----------------------------------------

struct alignas(64) Ack {
  std::atomic<uint32_t> value;
  std::atomic<uint32_t> waiting;
};
static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));

long futex(std::atomic<uint32_t>* word, int op, uint32_t value, const timespec* timeout) {
  return syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), op, value, timeout, nullptr, 0);
}

void signal_ack(Ack& a, uint32_t value) {
  a.value.store(value, std::memory_order_seq_cst);
  if (a.waiting.load(std::memory_order_seq_cst) != 0) futex(&a.value, FUTEX_WAKE, INT_MAX, nullptr);
}

// Waits until the ack reaches `target`: spinning (the subscriber stays in its spin window)
// or sleeping on the futex. False after `timeout`.
bool wait_ack(Ack& a, uint32_t target, bool spin, std::chrono::nanoseconds timeout = 10s) {
  const int64_t deadline = mono_ns() + timeout.count();
  if (spin) {
    for (uint32_t i = 1;; ++i) {
      if (a.value.load(std::memory_order_acquire) >= target) return true;
      if ((i & 0xfff) == 0 && mono_ns() > deadline) return false;
      __builtin_ia32_pause();
    }
  }
  for (;;) {
    if (a.value.load(std::memory_order_acquire) >= target) return true;
    a.waiting.store(1, std::memory_order_seq_cst);
    const uint32_t v = a.value.load(std::memory_order_seq_cst);
    if (v < target) {
      const timespec ts{0, 100'000'000};
      futex(&a.value, FUTEX_WAIT, v, &ts);
    }
    a.waiting.store(0, std::memory_order_relaxed);
    if (a.value.load(std::memory_order_acquire) >= target) return true;
    if (mono_ns() > deadline) return false;
  }
}

struct SharedPage {
  Ack acks[4];
};
SharedPage* g_shared = nullptr;

// ---- child processes ----------------------------------------------------------------------

std::vector<pid_t> g_children;

void write_all(int fd, const void* data, size_t bytes) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw std::runtime_error(std::string("pipe write: ") + std::strerror(errno));
    p += n;
    bytes -= static_cast<size_t>(n);
  }
}

// Reads exactly `bytes`; false on EOF. Throws on timeout (a negative timeout waits forever).
bool read_all(int fd, void* data, size_t bytes, double timeout_s, const std::string& who) {
  char* p = static_cast<char*>(data);
  const int64_t deadline = mono_ns() + static_cast<int64_t>(timeout_s * 1e9);
  while (bytes > 0) {
    if (timeout_s >= 0) {
      const int64_t left_ms = (deadline - mono_ns()) / 1'000'000;
      if (left_ms <= 0) throw std::runtime_error(who + ": timed out waiting for a result");
      pollfd pfd{fd, POLLIN, 0};
      const int r = ::poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left_ms, 1000)));
      if (r < 0 && errno != EINTR) throw std::runtime_error(who + ": poll failed");
      if (r <= 0) continue;
    }
    const ssize_t n = ::read(fd, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw std::runtime_error(who + ": pipe read: " + std::strerror(errno));
    if (n == 0) return false;
    p += n;
    bytes -= static_cast<size_t>(n);
  }
  return true;
}

// In a child: commands arrive on fd 3, results leave on fd 4.
constexpr int kCmdFd = 3;
constexpr int kResultFd = 4;

template <typename T>
void put(const T& value) {
  write_all(kResultFd, &value, sizeof value);
}
template <typename T>
void put_vector(const std::vector<T>& v) {
  const uint64_t n = v.size();
  put(n);
  if (n) write_all(kResultFd, v.data(), n * sizeof(T));
}
// The next command; the child exits quietly when the parent is gone.
uint32_t command() {
  uint32_t c = 0;
  if (!read_all(kCmdFd, &c, sizeof c, -1, "child")) _exit(3);
  return c;
}

struct Proc {
  std::string name;
  pid_t pid = -1;
  int cmd = -1;
  int result = -1;

  void send(uint32_t c) const { write_all(cmd, &c, sizeof c); }
  template <typename T>
  T get(double timeout_s = 300) const {
    T value;
    if (!read_all(result, &value, sizeof value, timeout_s, name))
      throw std::runtime_error(name + " (pid " + std::to_string(pid) + ") exited early");
    return value;
  }
  template <typename T>
  std::vector<T> get_vector(double timeout_s = 300) const {
    const auto n = get<uint64_t>(timeout_s);
    std::vector<T> v(n);
    if (n && !read_all(result, v.data(), n * sizeof(T), timeout_s, name))
      throw std::runtime_error(name + " exited early");
    return v;
  }
  // Waits for the child to exit; false if it failed.
  bool join() {
    if (pid < 0) return true;
    ::close(cmd);
    ::close(result);
    int status = 0;
    const int64_t deadline = mono_ns() + 120'000'000'000;
    for (;;) {
      const pid_t r = waitpid(pid, &status, WNOHANG);
      if (r == pid) break;
      if (mono_ns() > deadline) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        break;
      }
      std::this_thread::sleep_for(5ms);
    }
    std::erase(g_children, pid);
    pid = -1;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }
};

// Forks a child running `body`, which sees only stdio, its command and result pipes and the
// shared ack page.
Proc spawn(const std::string& name, const std::function<void()>& body) {
  int cmd[2], result[2];
  if (pipe2(cmd, O_CLOEXEC) != 0 || pipe2(result, O_CLOEXEC) != 0)
    throw std::runtime_error("pipe2 failed");
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    const int c = fcntl(cmd[0], F_DUPFD, 100), r = fcntl(result[1], F_DUPFD, 100);
    dup2(c, kCmdFd);
    dup2(r, kResultFd);
    close_range(kResultFd + 1, ~0U, 0);
    try {
      body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s (pid %d): %s\n", name.c_str(), getpid(), e.what());
      _exit(1);
    }
    std::fflush(stdout);
    _exit(0);
  }
  ::close(cmd[0]);
  ::close(result[1]);
  g_children.push_back(pid);
  return Proc{name, pid, cmd[1], result[0]};
}

void kill_children() {
  for (pid_t pid : g_children) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  g_children.clear();
}

// ---- the daemon, in this process ----------------------------------------------------------

class InProcessDaemon {
 public:
  InProcessDaemon(const std::string& bus, shmbus::daemon::Config config)
      : bus_(bus), socket_("/tmp/shmbus-" + bus + ".sock") {
    shmbus::daemon::DaemonOptions options;
    options.bus = bus_;
    options.socket_path = socket_;
    options.config = std::move(config);
    options.logger = std::make_shared<spdlog::logger>(
        "scale-daemon", std::make_shared<spdlog::sinks::null_sink_mt>());
    daemon_ = std::make_unique<shmbus::daemon::Daemon>(std::move(options));
    thread_ = std::thread([this] { daemon_->run(); });
  }
  ~InProcessDaemon() { stop(); }
  void stop() {
    if (!daemon_) return;
    daemon_->stop();
    thread_.join();
    daemon_.reset();
  }
  shmbus::ConnectOptions options(const char* client) const { return {bus_, socket_, client, {}}; }
  const std::string& bus() const { return bus_; }

 private:
  std::string bus_, socket_;
  std::unique_ptr<shmbus::daemon::Daemon> daemon_;
  std::thread thread_;
};

// What `options` will be once the daemon of `bus` exists (children are forked before).
shmbus::ConnectOptions options_for(const std::string& bus, const char* client) {
  return {bus, "/tmp/shmbus-" + bus + ".sock", client, {}};
}

// ---- /proc and /dev/shm -------------------------------------------------------------------

struct ShmUsage {
  uint64_t allocated = 0;  // st_blocks * 512
  uint64_t apparent = 0;   // st_size
  int segments = 0;
};
// The bus's segments are memfds of the daemon, which runs in this process: found through
// /proc/self/fd ("/memfd:shmbus.<bus>.<id> (deleted)").
ShmUsage shm_usage(const std::string& bus) {
  ShmUsage u;
  const std::string prefix = "/memfd:shmbus." + bus + ".";
  std::set<ino_t> seen;  // the daemon holds a read-write and a read-only descriptor of each
  std::error_code ec;
  for (auto it = fs::directory_iterator("/proc/self/fd", ec); !ec && it != fs::directory_iterator();
       it.increment(ec)) {
    std::error_code link_ec;
    const std::string target = fs::read_symlink(it->path(), link_ec).string();
    if (link_ec || target.rfind(prefix, 0) != 0) continue;
    struct stat st;
    if (::stat(it->path().c_str(), &st) != 0 || !seen.insert(st.st_ino).second) continue;
    u.allocated += static_cast<uint64_t>(st.st_blocks) * 512;
    u.apparent += static_cast<uint64_t>(st.st_size);
    ++u.segments;
  }
  return u;
}

int count_fds(pid_t pid) {
  int n = 0;
  std::error_code ec;
  for (auto it = fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != fs::directory_iterator(); it.increment(ec))
    ++n;
  return n;
}

// What a process's descriptors above `first` are: "socket ×1, /dev/shm/shmbus.x.0, ...".
std::string describe_fds(pid_t pid, int first) {
  std::vector<std::string> kinds;
  std::error_code ec;
  for (auto it = fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != fs::directory_iterator(); it.increment(ec)) {
    int fd = -1;
    const std::string name = it->path().filename().string();
    std::from_chars(name.data(), name.data() + name.size(), fd);
    if (fd < first) continue;
    std::error_code link_ec;
    std::string target = fs::read_symlink(it->path(), link_ec).string();
    if (target.rfind("socket:", 0) == 0)
      target = "socket";
    else if (target.rfind("pipe:", 0) == 0)
      target = "pipe";
    kinds.push_back(target);
  }
  std::sort(kinds.begin(), kinds.end());
  std::string out;
  for (size_t i = 0; i < kinds.size();) {
    size_t j = i;
    while (j < kinds.size() && kinds[j] == kinds[i]) ++j;
    out += (out.empty() ? "" : ", ") + kinds[i] + (j - i > 1 ? " ×" + std::to_string(j - i) : "");
    i = j;
  }
  return out.empty() ? "none" : out;
}

int count_shmbus_maps(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/maps");
  int n = 0;
  for (std::string line; std::getline(in, line);)
    if (line.find("shmbus.") != std::string::npos) ++n;
  return n;
}

uint64_t rss_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6));
  return 0;
}

// utime + stime of the whole process, in clock ticks.
uint64_t cpu_ticks(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close = all.rfind(')');
  if (close == std::string::npos) return 0;
  std::vector<std::string> fields;
  std::string field;
  for (char c : all.substr(close + 2)) {
    if (c == ' ') {
      fields.push_back(field);
      field.clear();
    } else {
      field += c;
    }
  }
  fields.push_back(field);
  if (fields.size() < 13) return 0;
  return std::stoull(fields[11]) + std::stoull(fields[12]);  // fields 14 and 15 of stat(5)
}

int count_own_fds() {
  return count_fds(getpid()) - 1;
}  // minus the directory being listed

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

// ---- what flows through the rings ---------------------------------------------------------

struct Stamp {
  uint32_t mode;  // which measurement the message belongs to
  uint32_t k;     // channel index (<prefix><k>)
  uint64_t seq;   // per mode
  int64_t sent_ns;
};
struct Sample {
  uint32_t mode;
  uint32_t ok;  // channel and payload as expected, nothing lost before it
  uint64_t seq;
  int64_t latency_ns;
};

std::span<const std::byte> bytes_of(const Stamp& s) {
  return std::as_bytes(std::span<const Stamp>(&s, 1));
}

bool parse_index(std::string_view channel, std::string_view prefix, uint32_t& k) {
  if (channel.substr(0, prefix.size()) != prefix) return false;
  const auto rest = channel.substr(prefix.size());
  const auto r = std::from_chars(rest.data(), rest.data() + rest.size(), k);
  return r.ec == std::errc() && r.ptr == rest.data() + rest.size();
}

// Subscriber side of a latency run: `total` messages, each acknowledged. Samples carry
// whether the message was the one expected.
std::vector<Sample> receive_stamped(shmbus::Subscription& sub, std::string_view prefix,
                                    uint64_t total, Ack& ack) {
  std::vector<Sample> samples;
  samples.reserve(total);
  for (uint64_t i = 0; i < total; ++i) {
    auto m = sub.next(120s);
    const int64_t now = mono_ns();
    if (!m) {
      std::fprintf(stderr, "subscriber: message %llu of %llu never arrived\n",
                   static_cast<unsigned long long>(i), static_cast<unsigned long long>(total));
      break;
    }
    Stamp s{};
    bool ok = m->payload.size() == sizeof s && m->lost_before == 0;
    if (ok) std::memcpy(&s, m->payload.data(), sizeof s);
    uint32_t k = 0;
    ok = ok && parse_index(m->channel, prefix, k) && k == s.k;
    samples.push_back({s.mode, ok ? 1u : 0u, s.seq, now - s.sent_ns});
    signal_ack(ack, static_cast<uint32_t>(i + 1));
  }
  return samples;
}

// ---- section 1: N channels under one pattern subscriber -----------------------------------

enum : uint32_t {
  kCmdGo = 1,
  kCmdCreate,
  kCmdOpen,
  kCmdLatency,
  kCmdQuit,
  kCmdRun,
  kCmdPsub,
  kCmdPunsub
};
enum : uint32_t {
  kModeCreate = 0,
  kModeBackToBack = 1,
  kModePaced = 2,
  kModeFirst = 3,
  kModeSecond = 4,
  kModeOneChannel = 5,  // back-to-back, always to channel 0 of the n
  kModeSubset = 6,      // back-to-back, random among the first kSubset channels
  kModePacedHot = 7,    // paced, always to channel 0
};
constexpr uint32_t kSubset = 64;

// Per round (rounds of the one-channel pair and of the N-channel pair alternate, so that
// drift of this shared machine hits both alike).
struct LatencyPlan {
  uint32_t rounds, warmup_b2b, samples_b2b, warmup_paced, samples_paced;
  int64_t gap_ns;
  uint64_t round_total() const {
    return 3ull * (warmup_b2b + samples_b2b) + 2ull * (warmup_paced + samples_paced);
  }
  uint64_t total() const { return rounds * round_total(); }
};

struct CreateResult {
  int64_t t0, t1;
  uint64_t bad_receivers;
};
struct VerifyResult {
  uint64_t received, duplicates, unexpected, lost, wrong_pattern;
  int64_t t_last;
};

// The pattern subscriber of a pair: psubscribe `<prefix>*`, verify the first message of
// each of n channels, then the latency run, then idle until "quit" arrives.
void pattern_subscriber(const std::string& bus, std::string prefix, uint32_t n, LatencyPlan plan,
                        Ack& ack) {
  pin_to_cpu(1);
  if (command() != kCmdGo) return;
  put(static_cast<int32_t>(count_own_fds()));
  auto sub = shmbus::Subscription::open(options_for(bus, "scale-sub"));
  sub.psubscribe({prefix + "*"});
  put(uint32_t{1});  // ready
  if (command() != kCmdCreate) return;

  // First message of every channel, each exactly once.
  std::vector<uint8_t> seen(n, 0);
  VerifyResult v{};
  const std::string pattern = prefix + "*";
  while (v.received + v.unexpected < n) {
    auto m = sub.next(15s);
    if (!m) break;
    v.t_last = mono_ns();
    uint32_t k = 0;
    if (!parse_index(m->channel, prefix, k) || k >= n) {
      ++v.unexpected;
      continue;
    }
    if (m->pattern != pattern) ++v.wrong_pattern;
    v.lost += m->lost_before;
    if (seen[k]++)
      ++v.duplicates;
    else
      ++v.received;
  }
  put(v);

  put_vector(receive_stamped(sub, prefix, plan.total(), ack));
  put(uint32_t{2});  // about to idle
  for (;;) {
    auto m = sub.next(-1ns);
    if (m && m->text() == "quit") break;
  }
}

struct LatencyReport {
  uint64_t bad_receivers;
  uint64_t ack_timeouts;
  int64_t paced_ns;  // how long the paced run took
};

void pattern_publisher(const std::string& bus, std::string prefix, uint32_t n, LatencyPlan plan,
                       Ack& ack) {
  pin_to_cpu(0);
  if (command() != kCmdGo) return;
  put(static_cast<int32_t>(count_own_fds()));
  auto bus_handle = shmbus::Bus::connect(options_for(bus, "scale-pub"));
  put(uint32_t{1});

  if (command() != kCmdCreate) return;
  CreateResult c{};
  c.t0 = mono_ns();
  for (uint32_t k = 0; k < n; ++k) {
    const Stamp s{kModeCreate, k, k, mono_ns()};
    if (bus_handle.publish(prefix + std::to_string(k), bytes_of(s)) != 1) ++c.bad_receivers;
  }
  c.t1 = mono_ns();
  put(c);

  if (command() != kCmdOpen) return;
  std::vector<shmbus::Channel> handles;
  handles.reserve(n);
  const int64_t t0 = mono_ns();
  for (uint32_t k = 0; k < n; ++k)
    handles.push_back(bus_handle.channel(prefix + std::to_string(k)));
  put(mono_ns() - t0);

  std::mt19937_64 rng(12345);
  uint32_t sent = 0;
  LatencyReport r{};
  std::vector<Sample> calls;  // how long each publish call took
  auto run = [&](uint32_t mode, uint32_t count, int64_t gap_ns) {
    for (uint32_t i = 0; i < count; ++i) {
      const auto k = mode == kModeOneChannel || mode == kModePacedHot ? 0u
                     : mode == kModeSubset ? static_cast<uint32_t>(rng() % std::min(n, kSubset))
                                           : static_cast<uint32_t>(rng() % n);
      if (gap_ns > 0) {
        const timespec ts{0, static_cast<long>(gap_ns)};
        nanosleep(&ts, nullptr);
      }
      const Stamp s{mode, k, i, mono_ns()};
      if (handles[k].publish(bytes_of(s)) != 1) ++r.bad_receivers;
      calls.push_back({mode, 1, i, mono_ns() - s.sent_ns});
      if (!wait_ack(ack, ++sent, gap_ns == 0)) {
        ++r.ack_timeouts;
        return;
      }
    }
  };
  uint32_t cmd;
  while ((cmd = command()) == kCmdLatency) {
    r = LatencyReport{};
    calls.clear();
    run(kModeBackToBack, plan.warmup_b2b + plan.samples_b2b, 0);
    run(kModeOneChannel, plan.warmup_b2b + plan.samples_b2b, 0);
    run(kModeSubset, plan.warmup_b2b + plan.samples_b2b, 0);
    const int64_t paced_t0 = mono_ns();
    run(kModePaced, plan.warmup_paced + plan.samples_paced, plan.gap_ns);
    r.paced_ns = mono_ns() - paced_t0;
    run(kModePacedHot, plan.warmup_paced + plan.samples_paced, plan.gap_ns);
    put(r);
    put_vector(calls);
  }
  if (cmd != kCmdQuit) return;
  handles[0].publish("quit");
  put(uint32_t{3});
}

struct PairLatency {
  Percentiles b2b, one, subset, paced, paced_hot;
  Percentiles call_b2b, call_one, call_subset, call_paced, call_paced_hot;  // publish call alone
  uint64_t bad = 0;
};

struct ByMode {
  std::vector<double> b2b, one, subset, paced, paced_hot;
};
ByMode by_mode(const std::vector<Sample>& samples, const LatencyPlan& plan) {
  ByMode m;
  for (const auto& s : samples) {
    const bool b2b_kind =
        s.mode == kModeBackToBack || s.mode == kModeOneChannel || s.mode == kModeSubset;
    if (s.seq < (b2b_kind ? plan.warmup_b2b : plan.warmup_paced)) continue;
    const auto v = static_cast<double>(s.latency_ns);
    switch (s.mode) {
      case kModeBackToBack: m.b2b.push_back(v); break;
      case kModeOneChannel: m.one.push_back(v); break;
      case kModeSubset: m.subset.push_back(v); break;
      case kModePaced: m.paced.push_back(v); break;
      case kModePacedHot: m.paced_hot.push_back(v); break;
      default: break;
    }
  }
  return m;
}

PairLatency split_samples(const std::vector<Sample>& samples, const std::vector<Sample>& calls,
                          const LatencyPlan& plan, const std::string& who) {
  PairLatency out;
  for (const auto& s : samples)
    if (!s.ok) ++out.bad;
  if (samples.size() != plan.total())
    fail(who + ": subscriber received " + std::to_string(samples.size()) + " of " +
         std::to_string(plan.total()) + " latency messages");
  if (out.bad)
    fail(who + ": " + std::to_string(out.bad) +
         " latency messages on the wrong channel, malformed or after a loss");
  ByMode m = by_mode(samples, plan), c = by_mode(calls, plan);
  out.b2b = percentiles(std::move(m.b2b));
  out.one = percentiles(std::move(m.one));
  out.subset = percentiles(std::move(m.subset));
  out.paced = percentiles(std::move(m.paced));
  out.paced_hot = percentiles(std::move(m.paced_hot));
  out.call_b2b = percentiles(std::move(c.b2b));
  out.call_one = percentiles(std::move(c.one));
  out.call_subset = percentiles(std::move(c.subset));
  out.call_paced = percentiles(std::move(c.paced));
  out.call_paced_hot = percentiles(std::move(c.paced_hot));
  return out;
}

void print_latency_header() {
  std::printf(
      "| measure | channels | samples | p50 | p90 | p99 | p99.9 | max | `publish` call alone, p50 "
      "/ p99 |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
}
void print_latency_row(const std::string& name, const std::string& channels, const Percentiles& p,
                       const Percentiles& call) {
  std::printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s / %s |\n", name.c_str(),
              channels.c_str(), with_commas(p.n).c_str(), us(p.p50).c_str(), us(p.p90).c_str(),
              us(p.p99).c_str(), us(p.p999).c_str(), us(p.max).c_str(), us(call.p50).c_str(),
              us(call.p99).c_str());
}

void section_many_channels(bool quick) {
  const uint32_t n = quick ? 10'000 : 100'000;
  const std::string bus = "scale" + std::to_string(getpid()) + "a";
  const LatencyPlan plan{quick ? 3u : 5u,   quick ? 500u : 1'000u, quick ? 3'000u : 10'000u,
                         quick ? 30u : 40u, quick ? 300u : 1'000u, 100'000};

  auto* shared = g_shared;
  shared->acks[0].value = 0;
  shared->acks[1].value = 0;
  // Forked before the daemon exists: none of its descriptors or mappings leak into them.
  Proc solo_sub =
      spawn("solo subscriber", [&] { pattern_subscriber(bus, "solo:", 1, plan, shared->acks[0]); });
  Proc solo_pub =
      spawn("solo publisher", [&] { pattern_publisher(bus, "solo:", 1, plan, shared->acks[0]); });
  Proc sub = spawn("user:* subscriber",
                   [&] { pattern_subscriber(bus, "user:", n, plan, shared->acks[1]); });
  Proc pub =
      spawn("user publisher", [&] { pattern_publisher(bus, "user:", n, plan, shared->acks[1]); });

  shmbus::daemon::Config config;
  config.arena_bytes = 1ull << 30;
  config.max_shared_memory = 4ull << 30;
  config.max_channels = 200'000;
  config.max_subscriptions_per_client = 200'000;
  config.idle_ttl = 0s;
  for (const char* pattern : {"user:*", "solo:*"}) {
    shmbus::daemon::ChannelRule rule;
    rule.pattern = pattern;
    rule.ring_bytes = 4096;
    rule.max_subscribers = 4;
    config.rules.push_back(rule);
  }
  shmbus::RingConfig ring_config;
  ring_config.capacity = 4096;
  ring_config.reader_capacity = 4;
  const uint64_t ring_block =
      shmbus::RingRef::block_bytes(ring_config) + shmbus::RingRef::readers_bytes(ring_config);

  InProcessDaemon daemon(bus, config);
  for (Proc* p : {&solo_sub, &solo_pub, &sub, &pub}) p->send(kCmdGo);
  const auto sub_fds_before = sub.get<int32_t>();
  const auto pub_fds_before = pub.get<int32_t>();
  solo_sub.get<int32_t>();
  solo_pub.get<int32_t>();
  for (Proc* p : {&solo_sub, &solo_pub, &sub, &pub}) p->get<uint32_t>();  // connected
  const ShmUsage shm_before = shm_usage(bus);

  // Baseline: one channel, one pattern subscriber, same ring settings.
  solo_sub.send(kCmdCreate);
  solo_pub.send(kCmdCreate);
  const auto solo_create = solo_pub.get<CreateResult>();
  const auto solo_verify = solo_sub.get<VerifyResult>();
  if (solo_verify.received != 1 || solo_create.bad_receivers != 0)
    fail(
        "baseline channel solo:0: first message not received, or publish did not count 1 receiver");
  solo_pub.send(kCmdOpen);
  solo_pub.get<int64_t>();

  // N channels, created by their first publish.
  sub.send(kCmdCreate);
  pub.send(kCmdCreate);
  const auto create = pub.get<CreateResult>(900);
  const auto verify = sub.get<VerifyResult>(900);
  const ShmUsage shm_after = shm_usage(bus);
  if (verify.received != n || verify.duplicates || verify.unexpected || verify.lost ||
      verify.wrong_pattern)
    fail("user:* subscriber got " + std::to_string(verify.received) + " of " + std::to_string(n) +
         " channels' first messages (" + std::to_string(verify.duplicates) + " duplicates, " +
         std::to_string(verify.unexpected) + " unexpected, " + std::to_string(verify.lost) +
         " lost, " + std::to_string(verify.wrong_pattern) + " with the wrong pattern)");
  if (create.bad_receivers)
    fail(std::to_string(create.bad_receivers) + " first publishes did not count 1 receiver");

  pub.send(kCmdOpen);
  const auto open_ns = pub.get<int64_t>(900);

  // Latency rounds, alternating which pair goes first.
  LatencyReport solo_report{}, report{};
  std::vector<Sample> solo_calls, calls;
  int64_t paced_ns = 0;
  for (uint32_t round = 0; round < plan.rounds; ++round) {
    for (int i = 0; i < 2; ++i) {
      const bool solo_turn = (i == 0) == (round % 2 == 0);
      Proc& p = solo_turn ? solo_pub : pub;
      LatencyReport& total = solo_turn ? solo_report : report;
      p.send(kCmdLatency);
      const auto r = p.get<LatencyReport>(600);
      const auto round_calls = p.get_vector<Sample>(600);
      auto& all_calls = solo_turn ? solo_calls : calls;
      all_calls.insert(all_calls.end(), round_calls.begin(), round_calls.end());
      total.bad_receivers += r.bad_receivers;
      total.ack_timeouts += r.ack_timeouts;
      if (!solo_turn) paced_ns += r.paced_ns;
      if (r.ack_timeouts)
        throw std::runtime_error(p.name + ": a message was not acknowledged within 10 s");
    }
  }
  const auto solo =
      split_samples(solo_sub.get_vector<Sample>(600), solo_calls, plan, "one channel");
  const auto many =
      split_samples(sub.get_vector<Sample>(600), calls, plan, std::to_string(n) + " channels");
  if (solo_report.bad_receivers)
    fail("one channel: " + std::to_string(solo_report.bad_receivers) +
         " publishes did not count 1 receiver");
  if (report.bad_receivers)
    fail(std::to_string(n) + " channels: " + std::to_string(report.bad_receivers) +
         " publishes did not count 1 receiver");
  solo_sub.get<uint32_t>();
  solo_pub.send(kCmdQuit);
  solo_pub.get<uint32_t>();
  if (!solo_sub.join() || !solo_pub.join()) fail("one-channel processes exited with an error");

  // Idle: the subscriber blocks in next(-1); the publisher waits on its pipe.
  sub.get<uint32_t>();
  std::this_thread::sleep_for(500ms);
  const int sub_maps = count_shmbus_maps(sub.pid), pub_maps = count_shmbus_maps(pub.pid);
  const int sub_fds = count_fds(sub.pid), pub_fds = count_fds(pub.pid);
  const std::string sub_fd_kinds = describe_fds(sub.pid, sub_fds_before);
  const std::string pub_fd_kinds = describe_fds(pub.pid, pub_fds_before);
  const uint64_t sub_rss = rss_kib(sub.pid), pub_rss = rss_kib(pub.pid);
  const long hz = sysconf(_SC_CLK_TCK);
  const uint64_t sub_ticks0 = cpu_ticks(sub.pid), self_ticks0 = cpu_ticks(getpid());
  const int64_t idle_t0 = mono_ns();
  std::this_thread::sleep_for(2s);
  const uint64_t sub_ticks = cpu_ticks(sub.pid) - sub_ticks0;
  const uint64_t self_ticks = cpu_ticks(getpid()) - self_ticks0;
  const double idle_s = seconds_since(idle_t0);
  pub.send(kCmdQuit);
  pub.get<uint32_t>();
  const int64_t teardown_t0 = mono_ns();
  const bool sub_ok = sub.join(), pub_ok = pub.join();
  const double teardown_s = seconds_since(teardown_t0);
  if (!sub_ok || !pub_ok) fail("section 1 processes exited with an error");
  daemon.stop();

  const double create_s = static_cast<double>(create.t1 - create.t0) / 1e9;
  const double all_received_s = static_cast<double>(verify.t_last - create.t0) / 1e9;
  const double per_channel = static_cast<double>(shm_after.allocated - shm_before.allocated) / n;

  std::printf("## 1. %s live channels under one `user:*` pattern subscriber\n\n",
              with_commas(n).c_str());
  std::printf(
      "Rule `[[channel]] pattern = \"user:*\"`, `ring_bytes = 4096`, `max_subscribers = 4` "
      "(ring block %s bytes); `idle_ttl = 0`. One process subscribes `psubscribe(\"user:*\")`, "
      "another creates `user:0` .. `user:%u` by publishing one 24-byte message to each "
      "with `Bus::publish` (which keeps 4,096 channels open and closes the least used "
      "quarter beyond that, so most creations also cost a CLOSE).\n\n",
      with_commas(ring_block).c_str(), n - 1);
  std::printf("| measure | result | target |\n|---|---|---|\n");
  std::printf("| channels created by a first `Bus::publish` | %s in %.2f s = **%s** | |\n",
              with_commas(n).c_str(), create_s, rate(n / create_s).c_str());
  std::printf(
      "| subscriber had every first message | after %.2f s; %s of %s channels, each once, "
      "%llu lost | all |\n",
      all_received_s, with_commas(verify.received).c_str(), with_commas(n).c_str(),
      static_cast<unsigned long long>(verify.lost));
  std::printf(
      "| opening the existing channels again (`Bus::channel`, one OPEN round trip each) | "
      "%s in %.2f s = %s | |\n",
      with_commas(n).c_str(), static_cast<double>(open_ns) / 1e9,
      rate(n / (static_cast<double>(open_ns) / 1e9)).c_str());
  std::printf(
      "| shared memory reserved (st_blocks of the memfds shmbus.%s.*) | %s with %s channels "
      "(%s before any channel; %d arena segments, %s apparent size) | |\n",
      "&lt;bus&gt;", mib(static_cast<double>(shm_after.allocated)).c_str(), with_commas(n).c_str(),
      mib(static_cast<double>(shm_before.allocated)).c_str(), shm_after.segments,
      mib(static_cast<double>(shm_after.apparent)).c_str());
  std::printf("| shared memory per channel | **%.0f bytes** (%.1f KiB) | |\n", per_channel,
              per_channel / 1024);
  std::printf(
      "| subscriber: mappings of shmbus segments (/proc/pid/maps lines) | **%d** | O(1) |\n",
      sub_maps);
  std::printf(
      "| subscriber: open fds | **%d** (%d before connecting: stdio and 2 benchmark pipes; "
      "the library's: %s) | O(1) |\n",
      sub_fds, sub_fds_before, sub_fd_kinds.c_str());
  std::printf("| subscriber: resident memory | %s | |\n",
              mib(static_cast<double>(sub_rss) * 1024).c_str());
  std::printf(
      "| publisher (a Bus + %s open `Channel`s): mappings / fds / RSS | %d / %d (%d before; %s) / "
      "%s | |\n",
      with_commas(n).c_str(), pub_maps, pub_fds, pub_fds_before, pub_fd_kinds.c_str(),
      mib(static_cast<double>(pub_rss) * 1024).c_str());
  std::printf(
      "| subscriber idle in `next(-1)`, CPU over %.1f s | **%llu ticks** (%.2f %% of a CPU; %ld "
      "ticks/s) | 0 ticks |\n",
      idle_s, static_cast<unsigned long long>(sub_ticks),
      100.0 * static_cast<double>(sub_ticks) / static_cast<double>(hz) / idle_s, hz);
  std::printf(
      "| daemon thread (with this bench's main thread) over the same %.1f s | %llu ticks (%.2f %%) "
      "| |\n",
      idle_s, static_cast<unsigned long long>(self_ticks),
      100.0 * static_cast<double>(self_ticks) / static_cast<double>(hz) / idle_s);
  std::printf("| both clients exiting (publisher closes %s channels) | %.2f s | |\n",
              with_commas(n).c_str(), teardown_s);
  std::printf(
      "\nRSS counts the shared-memory pages a process touched: both clients touched every ring.\n");
  std::printf(
      "\nPublish -> deliver, one way: the publisher's CLOCK_MONOTONIC just before "
      "`Channel::publish` (on a handle opened beforehand) to the subscriber's clock when "
      "`next()` returns; each message is acknowledged before the next is sent. "
      "*Back-to-back*: the next message goes as soon as the ack arrives (the subscriber "
      "is still in its 20 µs spin). *Paced*: %.0f µs of sleep between messages (%s "
      "measured), so the subscriber is parked in the futex each time. *Random channel*: "
      "a uniformly random `user:k` of all %s (%s of rings, far beyond the caches). "
      "*Hot channel*: every message to `user:0` while the subscriber holds all of them. "
      "*%u channels*: random among `user:0` .. `user:%u` (rings that stay in cache, a "
      "different doorbell bit each time). The 1-channel rows are the same code, run by "
      "a second subscriber/publisher pair on `solo:0` under `psubscribe(\"solo:*\")` "
      "(same ring settings) on the same daemon. The two pairs take turns in %u rounds "
      "(each with its own warm-up), so drift of this shared VM hits both alike.\n\n",
      static_cast<double>(plan.gap_ns) / 1e3,
      rate(plan.rounds * (plan.warmup_paced + plan.samples_paced) /
           (static_cast<double>(paced_ns) / 1e9))
          .c_str(),
      with_commas(n).c_str(), mib(static_cast<double>(ring_block) * n).c_str(), kSubset,
      kSubset - 1, plan.rounds);
  print_latency_header();
  print_latency_row("back-to-back, the one channel", "1", solo.b2b, solo.call_b2b);
  print_latency_row("back-to-back, random channel", with_commas(n), many.b2b, many.call_b2b);
  print_latency_row("back-to-back, hot channel `user:0`", with_commas(n), many.one, many.call_one);
  print_latency_row("back-to-back, random among " + std::to_string(kSubset) + " channels",
                    with_commas(n), many.subset, many.call_subset);
  print_latency_row("paced, the one channel", "1", solo.paced, solo.call_paced);
  print_latency_row("paced, random channel", with_commas(n), many.paced, many.call_paced);
  print_latency_row("paced, hot channel `user:0`", with_commas(n), many.paced_hot,
                    many.call_paced_hot);
  std::printf(
      "\nRatio %s channels / 1 channel (target ≤ 2×): back-to-back, random channel "
      "p50 **%.2f×**, p99 %.2f×; back-to-back to one hot channel p50 **%.2f×**, p99 %.2f×; "
      "random among %u p50 %.2f×, p99 %.2f×; "
      "paced (parked subscriber) p50 **%.2f×**, p99 %.2f×.\n\n",
      with_commas(n).c_str(), many.b2b.p50 / solo.b2b.p50, many.b2b.p99 / solo.b2b.p99,
      many.one.p50 / solo.b2b.p50, many.one.p99 / solo.b2b.p99, kSubset,
      many.subset.p50 / solo.b2b.p50, many.subset.p99 / solo.b2b.p99,
      many.paced.p50 / solo.paced.p50, many.paced.p99 / solo.paced.p99);
  std::fflush(stdout);
}

// ---- section 2: publish rate with many non-matching patterns ------------------------------

struct RunSpec {
  uint32_t reps;
  uint32_t messages;
};

void hot_publisher(const std::string& bus, RunSpec spec, uint32_t fresh_channels) {
  pin_to_cpu(0);
  if (command() != kCmdGo) return;
  auto bus_handle = shmbus::Bus::connect(options_for(bus, "scale-hot"));
  auto hot = bus_handle.channel("hot");
  put(uint32_t{1});
  std::vector<std::byte> payload(64, std::byte{7});
  uint32_t round = 0;
  for (;;) {
    const uint32_t c = command();
    if (c != kCmdRun) return;
    std::vector<double> rates;
    uint64_t receivers = 0;
    for (uint32_t r = 0; r < spec.reps; ++r) {
      const int64_t t0 = mono_ns();
      for (uint32_t i = 0; i < spec.messages; ++i) receivers += hot.publish(payload);
      rates.push_back(spec.messages / seconds_since(t0));
    }
    // Channel creation with the same patterns present (each new channel is matched against
    // every pattern once, at creation).
    const int64_t t0 = mono_ns();
    for (uint32_t i = 0; i < fresh_channels; ++i)
      bus_handle.publish("fresh" + std::to_string(round) + ":" + std::to_string(i), "x");
    const double create_rate = fresh_channels / seconds_since(t0);
    ++round;
    put_vector(rates);
    put(receivers);
    put(create_rate);
    put(bus_handle.numpat());
  }
}

void pattern_holder(const std::string& bus, uint32_t first, uint32_t count) {
  if (command() != kCmdGo) return;
  auto sub = shmbus::Subscription::open(options_for(bus, "scale-patterns"));
  put(uint32_t{1});
  for (;;) {
    const uint32_t c = command();
    if (c == kCmdPsub) {
      std::vector<std::string> patterns;
      patterns.reserve(count);
      for (uint32_t i = first; i < first + count; ++i)
        patterns.push_back("nomatch:" + std::to_string(i) + ":*");
      sub.psubscribe(patterns);
      put(static_cast<uint64_t>(sub.count()));
    } else if (c == kCmdPunsub) {
      sub.punsubscribe();
      put(static_cast<uint64_t>(sub.count()));
    } else {
      return;
    }
  }
}

void section_patterns(bool quick) {
  const uint32_t holders = 10;
  const uint32_t per_holder = quick ? 100 : 1'000;
  const uint32_t patterns = holders * per_holder;
  const uint32_t cycles = quick ? 3 : 5;
  const RunSpec spec{1, quick ? 200'000u : 2'000'000u};
  const uint32_t fresh = quick ? 100 : 200;  // per run
  const std::string bus = "scale" + std::to_string(getpid()) + "b";

  Proc pub = spawn("hot publisher", [&] { hot_publisher(bus, spec, fresh); });
  std::vector<Proc> holder_procs;
  for (uint32_t h = 0; h < holders; ++h)
    holder_procs.push_back(spawn("pattern holder " + std::to_string(h),
                                 [&, h] { pattern_holder(bus, h * per_holder, per_holder); }));

  shmbus::daemon::Config config;
  config.arena_bytes = 256ull << 20;
  config.max_subscriptions_per_client = 200'000;
  config.idle_ttl = 0s;
  InProcessDaemon daemon(bus, config);
  pub.send(kCmdGo);
  for (auto& h : holder_procs) h.send(kCmdGo);
  pub.get<uint32_t>();
  for (auto& h : holder_procs) h.get<uint32_t>();

  struct Phase {
    std::vector<double> rates, create_rates;
    uint64_t receivers = 0;
    std::vector<uint64_t> numpat;
  };
  auto run = [&](Phase& p) {
    pub.send(kCmdRun);
    const auto rates = pub.get_vector<double>(600);
    p.rates.insert(p.rates.end(), rates.begin(), rates.end());
    p.receivers += pub.get<uint64_t>();
    p.create_rates.push_back(pub.get<double>());
    p.numpat.push_back(pub.get<uint64_t>());
  };
  Phase without, with;
  std::vector<double> psub_seconds;
  uint64_t held_bad = 0;
  for (uint32_t cycle = 0; cycle < cycles; ++cycle) {
    run(without);
    const int64_t t0 = mono_ns();
    for (auto& h : holder_procs) h.send(kCmdPsub);
    for (auto& h : holder_procs)
      if (h.get<uint64_t>() != per_holder) ++held_bad;
    psub_seconds.push_back(seconds_since(t0));
    run(with);
    for (auto& h : holder_procs) h.send(kCmdPunsub);
    for (auto& h : holder_procs)
      if (h.get<uint64_t>() != 0) ++held_bad;
  }
  pub.send(kCmdQuit);
  for (auto& h : holder_procs) h.send(kCmdQuit);
  bool ok = pub.join();
  for (auto& h : holder_procs) ok = h.join() && ok;
  if (!ok) fail("section 2 processes exited with an error");
  daemon.stop();

  if (held_bad) fail("pattern holders: " + std::to_string(held_bad) + " wrong subscription counts");
  for (uint64_t v : with.numpat)
    if (v != patterns)
      fail("numpat with patterns held is " + std::to_string(v) + ", expected " +
           std::to_string(patterns));
  for (uint64_t v : without.numpat)
    if (v != 0) fail("numpat without patterns is " + std::to_string(v));
  if (without.receivers || with.receivers)
    fail("publishes on 'hot' counted receivers although nothing subscribes to it");

  auto list = [](const std::vector<double>& rates) {
    std::string s;
    for (double r : rates) s += (s.empty() ? "" : ", ") + rate(r);
    return s;
  };
  const double m0 = median(without.rates), m1 = median(with.rates);
  std::printf("## 2. Publish rate with %s pattern subscriptions present, none matching\n\n",
              with_commas(patterns).c_str());
  std::printf(
      "One publisher process, `Bus::channel(\"hot\")` then `Channel::publish` of 64 bytes, "
      "%s messages per run as fast as it goes, no subscriber on `hot`. The patterns are "
      "held by %u subscriber processes × %s (`nomatch:<i>:*`, %s distinct; `Bus::numpat()` "
      "checked). %u cycles of: a run without patterns, all processes `psubscribe` (took "
      "%.0f ms, median), a run with them, all `punsubscribe()`. After each run the publisher "
      "also creates %u new channels with `Bus::publish` (last column).\n\n",
      with_commas(spec.messages).c_str(), holders, with_commas(per_holder).c_str(),
      with_commas(patterns).c_str(), cycles, median(psub_seconds) * 1e3, fresh);
  std::printf(
      "| patterns on the bus | publish rate, median of %u runs | runs | channel creation "
      "(`Bus::publish` to a new channel), median |\n",
      cycles);
  std::printf("|---|---:|---|---:|\n");
  std::printf("| 0 | **%s** | %s | %s |\n", rate(m0).c_str(), list(without.rates).c_str(),
              rate(median(without.create_rates)).c_str());
  std::printf("| %s | **%s** | %s | %s |\n", with_commas(patterns).c_str(), rate(m1).c_str(),
              list(with.rates).c_str(), rate(median(with.create_rates)).c_str());
  std::printf(
      "\nPublish rate with %s patterns / without: **%.3f×** (target within 5%%: "
      "0.95–1.05). Patterns are matched when a channel is created, never per message, "
      "so what they cost shows in the last column instead (%.2f× the creation rate). "
      "For reference, from the issue (not measured here): Redis drops from ~665K/s to "
      "~2.5K/s publishes in this situation.\n\n",
      with_commas(patterns).c_str(), m1 / m0,
      median(with.create_rates) / median(without.create_rates));
  std::fflush(stdout);
}

// ---- section 3: a new channel's first message ---------------------------------------------

void new_channel_subscriber(const std::string& bus, uint64_t total, Ack& ack) {
  pin_to_cpu(1);
  if (command() != kCmdGo) return;
  auto sub = shmbus::Subscription::open(options_for(bus, "scale-new-sub"));
  sub.psubscribe({"new:*"});
  put(uint32_t{1});
  put_vector(receive_stamped(sub, "new:", total, ack));
}

void new_channel_publisher(const std::string& bus, uint32_t k_total, Ack& ack) {
  pin_to_cpu(0);
  if (command() != kCmdGo) return;
  auto bus_handle = shmbus::Bus::connect(options_for(bus, "scale-new-pub"));
  put(uint32_t{1});
  if (command() != kCmdRun) return;
  std::vector<int64_t> first_call;
  uint64_t bad_receivers = 0, timeouts = 0;
  uint32_t sent = 0;
  for (uint32_t i = 0; i < k_total && timeouts == 0; ++i) {
    const std::string name = "new:" + std::to_string(i);
    const Stamp first{kModeFirst, i, i, mono_ns()};
    if (bus_handle.publish(name, bytes_of(first)) != 1) ++bad_receivers;
    first_call.push_back(mono_ns() - first.sent_ns);
    if (!wait_ack(ack, ++sent, false)) ++timeouts;
    const Stamp second{kModeSecond, i, i, mono_ns()};
    if (bus_handle.publish(name, bytes_of(second)) != 1) ++bad_receivers;
    if (!wait_ack(ack, ++sent, false)) ++timeouts;
  }
  put_vector(first_call);
  put(bad_receivers);
  put(timeouts);
}

void section_new_channels(bool quick) {
  const uint32_t k = quick ? 300 : 2'000;
  const uint32_t warmup = 20;
  const std::string bus = "scale" + std::to_string(getpid()) + "c";
  g_shared->acks[2].value = 0;
  Ack& ack = g_shared->acks[2];
  Proc sub = spawn("new:* subscriber", [&] { new_channel_subscriber(bus, 2ull * k, ack); });
  Proc pub = spawn("new publisher", [&] { new_channel_publisher(bus, k, ack); });

  shmbus::daemon::Config config;  // default rings (64 KiB)
  config.idle_ttl = 0s;
  InProcessDaemon daemon(bus, config);
  sub.send(kCmdGo);
  pub.send(kCmdGo);
  sub.get<uint32_t>();
  pub.get<uint32_t>();
  pub.send(kCmdRun);
  const auto calls = pub.get_vector<int64_t>(600);
  const auto bad_receivers = pub.get<uint64_t>();
  const auto timeouts = pub.get<uint64_t>();
  const auto samples = sub.get_vector<Sample>(600);
  const bool ok = sub.join() && pub.join();
  daemon.stop();
  if (!ok) fail("section 3 processes exited with an error");
  if (timeouts || bad_receivers)
    fail("new channels: " + std::to_string(timeouts) + " messages not acknowledged within 10 s, " +
         std::to_string(bad_receivers) + " publishes not counting 1 receiver");

  std::vector<double> first, second, call;
  uint64_t bad = 0;
  for (const auto& s : samples) {
    if (!s.ok) ++bad;
    if (s.seq < warmup) continue;
    (s.mode == kModeFirst ? first : second).push_back(static_cast<double>(s.latency_ns));
  }
  for (size_t i = warmup; i < calls.size(); ++i) call.push_back(static_cast<double>(calls[i]));
  if (samples.size() != 2ull * k || bad)
    fail("new channels: subscriber received " + std::to_string(samples.size()) + " of " +
         std::to_string(2ull * k) + " messages, " + std::to_string(bad) + " wrong");

  std::printf("## 3. Creating a channel and delivering its first message\n\n");
  std::printf(
      "One process subscribes `psubscribe(\"new:*\")`; another publishes once to each of "
      "`new:0` .. `new:%u` with `Bus::publish` (default 64 KiB rings), waiting (futex) for "
      "the subscriber to acknowledge before going on, then publishes a second message on "
      "the same channel the same way. The first %u channels are warm-up. The first publish "
      "to a channel asks the daemon to create it (an OPEN round trip); the daemon attaches "
      "the pattern subscriber's reader before it replies and tells the subscriber over "
      "its socket.\n\n",
      k - 1, warmup);
  std::printf(
      "| measure | samples | p50 | p90 | p99 | p99.9 | max "
      "|\n|---|---:|---:|---:|---:|---:|---:|\n");
  auto row = [](const char* name, const Percentiles& p) {
    std::printf("| %s | %s | %s | %s | %s | %s | %s |\n", name, with_commas(p.n).c_str(),
                us(p.p50).c_str(), us(p.p90).c_str(), us(p.p99).c_str(), us(p.p999).c_str(),
                us(p.max).c_str());
  };
  row("first message on a new channel: publish-call start → subscriber receives",
      percentiles(first));
  row("the first `Bus::publish` call itself (creates the channel)", percentiles(call));
  row("for reference: second message on that channel, publish start → receive",
      percentiles(second));
  std::printf("\n");
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--quick") {
      quick = true;
    } else {
      std::fprintf(stderr, "usage: %s [--quick]\n", argv[0]);
      return 2;
    }
  }
  signal(SIGPIPE, SIG_IGN);
  void* page =
      mmap(nullptr, sizeof(SharedPage), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) {
    std::perror("mmap");
    return 1;
  }
  g_shared = new (page) SharedPage{};

  const int64_t start = mono_ns();
  char date[64];
  const time_t now = time(nullptr);
  strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&now));
  utsname u{};
  uname(&u);
  std::printf("# shmbus scale benchmark%s\n\n", quick ? " (--quick)" : "");
  std::printf("%s; %ld CPUs online, %s; %.1f GiB memory; Linux %s. `bench/scale_bench%s`.\n\n",
              date, sysconf(_SC_NPROCESSORS_ONLN), cpu_model().c_str(),
              static_cast<double>(sysconf(_SC_PHYS_PAGES)) *
                  static_cast<double>(sysconf(_SC_PAGE_SIZE)) / (1024.0 * 1024 * 1024),
              u.release, quick ? " --quick" : "");
  std::printf(
      "The daemon runs on a thread of the benchmark process; every publisher and "
      "subscriber is a separate child process using the public client API. Latencies "
      "are percentiles of individual one-way samples (CLOCK_MONOTONIC, shared by all "
      "processes); the publisher is pinned to CPU 0 and the subscriber to CPU 1, the "
      "daemon is not pinned.\n\n");
  std::fflush(stdout);

  try {
    section_many_channels(quick);
    section_patterns(quick);
    section_new_channels(quick);
  } catch (const std::exception& e) {
    kill_children();
    fail(std::string("benchmark aborted: ") + e.what());
    std::fprintf(stderr, "scale_bench: %s\n", e.what());
    return 1;
  }
  std::printf("Total run time %.0f s.\n", seconds_since(start));
  if (g_failures) {
    std::fprintf(stderr, "scale_bench: %d check(s) failed\n", g_failures);
    return 1;
  }
  return 0;
}
