// Plain Unix domain sockets: each publisher is a server that listens in the session
// directory and writes every message to each connected subscriber (SOCK_STREAM, one send()
// of an 8-byte length followed by the payload). Stream sockets carry any size, where
// SOCK_SEQPACKET stops at the socket buffer (about 200 KiB). A subscriber connects to every
// publisher and cuts frames out of what it reads; sends block while a subscriber's socket
// buffer is full, so nothing is lost.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>
#include <utility>

#include "systems.hpp"
#include "workloads.hpp"

namespace shmbus::compare {
namespace {

constexpr size_t kFrameHeaderBytes = sizeof(uint64_t);
constexpr size_t kMinReadBufferBytes = 256 * 1024;

sockaddr_un address_of(const ChildSpec& spec, int publisher) {
  const std::string path =
      spec.ipc_dir + "/uds-" + spec.topic + "-" + std::to_string(publisher) + ".sock";
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) throw Failure("socket path too long: " + path);
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return a;
}

[[noreturn]] void fail(const std::string& what) {
  throw Failure("unix socket: " + what + ": " + std::strerror(errno));
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    std::swap(fd_, other.fd_);
    return *this;
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

class UdsPublisher {
 public:
  explicit UdsPublisher(const ChildSpec& spec)
      : address_(address_of(spec, spec.publisher_index)),
        listener_(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)),
        expected_subscribers_(static_cast<size_t>(spec.subscribers)),
        frame_(kFrameHeaderBytes + spec.payload_bytes) {
    if (listener_.get() < 0) fail("socket");
    ::unlink(address_.sun_path);
    if (bind(listener_.get(), reinterpret_cast<const sockaddr*>(&address_), sizeof address_) != 0)
      fail("bind");
    if (listen(listener_.get(), 16) != 0) fail("listen");
  }
  ~UdsPublisher() { ::unlink(address_.sun_path); }
  UdsPublisher(const UdsPublisher&) = delete;
  UdsPublisher& operator=(const UdsPublisher&) = delete;

  std::span<std::byte> prepare(size_t bytes) { return {frame_.data() + kFrameHeaderBytes, bytes}; }

  void send(size_t bytes) {
    // Subscribers arrive while the harness probes; a late one is never taken in.
    if (subscribers_.size() < expected_subscribers_) accept_waiting();
    const uint64_t length = bytes;
    std::memcpy(frame_.data(), &length, sizeof length);
    for (size_t i = 0; i < subscribers_.size();) {
      if (send_all(subscribers_[i].get(), kFrameHeaderBytes + bytes)) {
        ++i;
      } else {
        subscribers_.erase(subscribers_.begin() + static_cast<std::ptrdiff_t>(i));  // it left
      }
    }
  }
  void flush() {}

 private:
  void accept_waiting() {
    for (;;) {
      const int fd = accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        if (errno == EINTR) continue;
        fail("accept");
      }
      subscribers_.emplace_back(fd);
    }
  }
  bool send_all(int fd, size_t bytes) {
    const std::byte* p = frame_.data();
    while (bytes > 0) {
      const ssize_t n = ::send(fd, p, bytes, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) return false;
      if (n < 0) fail("send");
      p += n;
      bytes -= static_cast<size_t>(n);
    }
    return true;
  }

  sockaddr_un address_;
  Fd listener_;
  size_t expected_subscribers_;
  std::vector<Fd> subscribers_;
  std::vector<std::byte> frame_;  // length, then the payload
};

// One connection's bytes, cut into frames.
class FrameStream {
 public:
  FrameStream(int fd, size_t max_payload)
      : fd_(fd), buffer_(std::max(kMinReadBufferBytes, 2 * (kFrameHeaderBytes + max_payload))) {}

  std::optional<std::span<const std::byte>> frame() {
    if (end_ - begin_ < kFrameHeaderBytes) return std::nullopt;
    uint64_t length = 0;
    std::memcpy(&length, buffer_.data() + begin_, sizeof length);
    if (kFrameHeaderBytes + length > buffer_.size() / 2) throw Failure("unix socket: frame too large");
    if (end_ - begin_ < kFrameHeaderBytes + length) return std::nullopt;
    taken_ = kFrameHeaderBytes + length;
    return std::span<const std::byte>(buffer_.data() + begin_ + kFrameHeaderBytes, length);
  }
  void consume() {
    begin_ += taken_;
    taken_ = 0;
    if (begin_ == end_) begin_ = end_ = 0;
  }
  // Reads what is there (waits for it unless `flags` has MSG_DONTWAIT); true if it got bytes.
  bool read(int flags) {
    if (buffer_.size() - end_ < buffer_.size() / 2) {  // keep room for a whole frame
      std::memmove(buffer_.data(), buffer_.data() + begin_, end_ - begin_);
      end_ -= begin_;
      begin_ = 0;
    }
    const ssize_t n = recv(fd_.get(), buffer_.data() + end_, buffer_.size() - end_, flags);
    if (n > 0) {
      end_ += static_cast<size_t>(n);
      return true;
    }
    if (n == 0) {  // the publisher is done (or gone: the harness hears that from it)
      closed_ = true;
      return false;
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) fail("recv");
    return false;
  }
  int fd() const { return fd_.get(); }
  bool closed() const { return closed_; }

 private:
  Fd fd_;
  bool closed_ = false;
  std::vector<std::byte> buffer_;
  size_t begin_ = 0, end_ = 0, taken_ = 0;
};

class UdsSubscriber {
 public:
  explicit UdsSubscriber(const ChildSpec& spec) {
    for (int i = 0; i < spec.publishers; ++i) streams_.emplace_back(connect_to(spec, i), spec.payload_bytes);
  }

  std::optional<std::span<const std::byte>> receive(Wait wait, int64_t timeout_ns) {
    const size_t n = streams_.size();
    Patience patience(timeout_ns);
    for (;;) {
      for (size_t k = 0; k < n; ++k) {  // round robin over the publishers
        const size_t i = (next_ + k) % n;
        if (auto f = streams_[i].frame()) {
          current_ = i;
          next_ = (i + 1) % n;
          return f;
        }
      }
      bool got = false;
      const bool all_closed = std::all_of(streams_.begin(), streams_.end(),
                                          [](const FrameStream& s) { return s.closed(); });
      if (all_closed) {
        if (patience.exhausted()) return std::nullopt;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));  // nothing more can come
        continue;
      }
      if (wait == Wait::kBusy) {
        for (auto& s : streams_) got |= !s.closed() && s.read(MSG_DONTWAIT);
      } else if (n == 1) {
        got = streams_[0].read(0);  // SO_RCVTIMEO bounds the wait
      } else {
        std::vector<pollfd> fds;
        for (auto& s : streams_) fds.push_back({s.fd(), POLLIN, 0});
        if (::poll(fds.data(), fds.size(), 20) > 0)
          for (size_t i = 0; i < n; ++i)
            if (fds[i].revents != 0 && !streams_[i].closed()) got |= streams_[i].read(MSG_DONTWAIT);
      }
      if (!got && patience.exhausted()) return std::nullopt;
    }
  }
  void release() { streams_[current_].consume(); }

 private:
  // The publisher may not listen yet: retry until it does.
  static int connect_to(const ChildSpec& spec, int publisher) {
    const sockaddr_un address = address_of(spec, publisher);
    const int64_t deadline = mono_ns() + kConnectTimeoutNs;
    for (;;) {
      const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) fail("socket");
      if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0) {
        const timeval slice{0, 20'000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &slice, sizeof slice);
        return fd;
      }
      const int error = errno;
      ::close(fd);
      if ((error != ENOENT && error != ECONNREFUSED) || mono_ns() > deadline) {
        errno = error;
        fail(std::string("connect to ") + address.sun_path);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }

  std::vector<FrameStream> streams_;
  size_t next_ = 0, current_ = 0;
};

struct UnixSockets {
  using Publisher = UdsPublisher;
  using Subscriber = UdsSubscriber;
};

nlohmann::json run_child(const ChildSpec& spec, ControlPage& page) {
  return run_role<UnixSockets>(spec, page);
}

std::string version() {
  utsname u{};
  uname(&u);
  return std::string("Unix domain sockets (SOCK_STREAM, Linux ") + u.release + ")";
}

}  // namespace

System uds_system() {
  return {"uds", "Unix sockets", true, "", false, version, start_in_session_directory, run_child};
}

}  // namespace shmbus::compare
