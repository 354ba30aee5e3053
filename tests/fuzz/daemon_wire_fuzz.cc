// Fuzz target: the bytes a client may send to a live shmbusd.
//
// One daemon runs in this process (TestDaemon: a private bus, its socket under /tmp) for all
// inputs. Each input is sent on a fresh connection:
//   byte 0   greeting put before the rest: 0 none, 1 HELLO, 2 HELLO asking for a doorbell
//            (needed to subscribe), 3 the same from a client that speaks only version 1;
//            the fuzzer gets past the greeting without having to find it
//   byte 1   how the rest is cut into sends: 1 to 4 pieces, the cuts shifted by byte 1 >> 2
//   rest     the request stream, sent piece by piece
// Between pieces that complete a frame, the reply is awaited briefly, so requests are read
// one after another as well as in one batch. After the last piece the connection is
// half-closed and the replies are read to the daemon's close.
//
// Bugs, each an abort(): a reply a real client could not parse (protocol_readers.hpp), a
// reply to a request that was never sent, and, checked after every input, a daemon that no
// longer answers PING on a fresh connection of a real client (Bus::connect().ping()).
// Anything the daemon does to the fuzzed connection (an error reply, closing it) is fine.
//
// The daemon keeps state across inputs (channels, pattern subscribers, freed ids), so a
// crash may need the inputs before it; libFuzzer's crash file is where to start, replayed
// after the corpus if it does not crash alone.
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "daemon_support.hpp"
#include "protocol.hpp"
#include "protocol_readers.hpp"
#include "shmbus/bus.hpp"
#include "shmbus/error.hpp"

namespace {

using namespace shmbus::protocol;
using Clock = std::chrono::steady_clock;

shmbus::daemon::Config fuzz_config() {
  // Small limits, so that inputs reach them (and the refusals) within a few requests, and
  // the state the daemon keeps across inputs stays bounded: 4 KiB rings, idle channels
  // reclaimed after a second.
  shmbus::daemon::Config config;
  config.arena_bytes = 32ull << 20;
  config.max_shared_memory = 8ull << 20;
  config.max_channels = 512;
  config.max_subscriptions_per_client = 64;
  config.max_clients = 16;
  config.defaults.ring_bytes = 4096;
  config.idle_ttl = std::chrono::seconds(1);
  return config;
}

shmbus::test::TestDaemon& the_daemon() {
  // Created on first use and destroyed at exit, which removes its shared memory and socket.
  static shmbus::test::TestDaemon daemon(fuzz_config(), "fz");
  return daemon;
}

struct ConnectArgs {
  sockaddr_un addr;
  long fd;
};

// Runs as a short-lived child process sharing our memory and descriptor table (see
// connect_as_child): system calls only, since the sanitizer runtimes do not know it.
__attribute__((no_sanitize("address", "undefined", "thread"))) int connect_in_child(void* arg) {
  auto* a = static_cast<ConnectArgs*>(arg);
  long fd = syscall(SYS_socket, AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0 && syscall(SYS_connect, fd, &a->addr, sizeof(a->addr)) != 0) {
    syscall(SYS_close, fd);
    fd = -1;
  }
  a->fd = fd;
  return 0;
}

// A connection whose peer credentials name a process that has already exited. The daemon
// keeps what a connection held without a goodbye until its process exits (it cannot tell a
// crashed client from a slow one); connected from this process, every fuzzed connection
// would hold its doorbell, slots and a pidfd for the whole run. Connected from a child that
// is gone, it is released as a crashed client's would be, which is also a path worth
// fuzzing. CLONE_VM | CLONE_FILES | CLONE_VFORK: no copy of this (large, sanitized) process,
// and the socket lands in our descriptor table.
int connect_as_child(const std::string& path) {
  ConnectArgs args{};
  args.addr.sun_family = AF_UNIX;
  std::memcpy(args.addr.sun_path, path.c_str(), path.size() + 1);
  args.fd = -1;
  alignas(64) static char stack[64 * 1024];
  const pid_t pid = clone(connect_in_child, stack + sizeof(stack),
                          CLONE_VM | CLONE_FILES | CLONE_VFORK | SIGCHLD, &args);
  if (pid < 0) {
    std::perror("clone");
    std::abort();
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (args.fd < 0) {
    std::fprintf(stderr, "cannot connect to the daemon on %s\n", path.c_str());
    std::abort();
  }
  return static_cast<int>(args.fd);
}

std::vector<std::byte> hello(bool doorbell, uint16_t min_version, uint16_t max_version) {
  Writer w(Type::kHello, 1);
  w.u32(kProtocolMagic).u16(min_version).u16(max_version).str("fuzz").u8(doorbell ? 1 : 0);
  return w.frame();
}

// Reads what is there (waiting up to `wait` for the first bytes); false once the daemon
// closed the connection.
bool drain(int fd, std::chrono::milliseconds wait, std::vector<std::byte>& received) {
  pollfd pfd{fd, POLLIN, 0};
  if (::poll(&pfd, 1, static_cast<int>(wait.count())) <= 0) return true;
  std::byte buf[64 * 1024];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
      received.insert(received.end(), buf, buf + n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);  // else closed (or reset)
  }
}

// Every complete frame the daemon sent must be one a client reads, answering a request we
// sent (or 0: an event, or a refusal before HELLO was read).
void check_replies(std::span<const std::byte> received, const std::set<uint32_t>& requests) {
  FrameAssembler in;
  try {
    in.feed(received);
    std::span<const std::byte> body;
    while (in.next(body)) {
      const Frame f = Frame::parse(body);
      if (!shmbus::fuzz::read_client_frame(f)) {
        std::fprintf(stderr, "daemon sent a %s frame, which clients do not read\n",
                     type_name(f.type));
        std::abort();
      }
      if (f.request != 0 && requests.count(f.request) == 0) {
        std::fprintf(stderr, "daemon answered request %u, which was never sent\n", f.request);
        std::abort();
      }
    }
  } catch (const ProtocolError& e) {
    std::fprintf(stderr, "daemon sent a frame a client cannot parse: %s\n", e.what());
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  shmbus::test::TestDaemon& daemon = the_daemon();

  std::vector<std::byte> stream;
  switch (data[0] % 4) {
    case 1:
      stream = hello(false, kMinProtocolVersion, kProtocolVersion);
      break;
    case 2:
      stream = hello(true, kMinProtocolVersion, kProtocolVersion);
      break;
    case 3:
      stream = hello(true, 1, 1);
      break;
    default:
      break;
  }
  const auto* rest = reinterpret_cast<const std::byte*>(data + 2);
  stream.insert(stream.end(), rest, rest + (size - 2));

  // Where each complete frame ends, and the request ids the daemon may answer.
  std::vector<size_t> frame_ends;
  std::set<uint32_t> requests;
  for (size_t at = 0; at + 4 <= stream.size();) {
    uint32_t length = 0;
    std::memcpy(&length, stream.data() + at, 4);  // little-endian, as the host
    if (length > kMaxFrameBytes || stream.size() - at - 4 < length) break;
    if (length >= 6) {
      uint32_t request = 0;
      std::memcpy(&request, stream.data() + at + 6, 4);
      requests.insert(request);
    }
    at += 4 + length;
    frame_ends.push_back(at);
  }

  const size_t pieces = 1 + (data[1] & 3);
  const size_t shift = data[1] >> 2;
  const int fd = connect_as_child(daemon.socket_path());
  std::vector<std::byte> received;
  bool open = true;
  size_t sent = 0, frames_sent = 0;
  for (size_t i = 1; i <= pieces && open; ++i) {
    const size_t cut =
        i == pieces ? stream.size() : std::min(stream.size(), i * stream.size() / pieces + shift);
    if (cut <= sent) continue;
    if (::send(fd, stream.data() + sent, cut - sent, MSG_NOSIGNAL) < 0) break;  // closed
    sent = cut;
    size_t frames = frames_sent;
    while (frames < frame_ends.size() && frame_ends[frames] <= sent) ++frames;
    // A complete request is answered (or the connection closed): wait for that before the
    // next piece, so the daemon does not always read the whole input in one batch.
    const auto wait =
        frames > frames_sent ? std::chrono::milliseconds(20) : std::chrono::milliseconds(0);
    frames_sent = frames;
    open = drain(fd, wait, received);
  }
  ::shutdown(fd, SHUT_WR);
  // The daemon closes a connection at its end of stream, after answering what came before.
  const auto deadline = Clock::now() + std::chrono::seconds(2);
  while (open && Clock::now() < deadline)
    open = drain(fd, std::chrono::milliseconds(100), received);
  ::close(fd);
  check_replies(received, requests);

  try {
    shmbus::Bus::connect(daemon.options()).ping();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "the daemon no longer answers PING after this input: %s\n", e.what());
    std::abort();
  }
  return 0;
}
