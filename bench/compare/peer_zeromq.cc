// ZeroMQ PUB/SUB over ipc:// (libzmq): each publisher binds its own endpoint in the session
// directory, each subscriber connects to every publisher and subscribes to everything.
// Lossless runs set ZMQ_XPUB_NODROP, so a full subscriber queue makes send() wait instead of
// dropping.
#include <zmq.h>

#include <cerrno>
#include <cstring>

#include "systems.hpp"
#include "workloads.hpp"

namespace shmbus::compare {
namespace {

std::string endpoint(const ChildSpec& spec, int publisher) {
  return "ipc://" + spec.ipc_dir + "/zmq-" + spec.topic + "-" + std::to_string(publisher);
}

[[noreturn]] void fail(const std::string& what) {
  throw Failure("zeromq: " + what + ": " + zmq_strerror(zmq_errno()));
}

// A context and one socket, closed in that order's reverse. Linger 0: nothing queued may
// hold up exit (publishers only leave once the subscribers have everything).
class Socket {
 public:
  explicit Socket(int type) : context_(zmq_ctx_new()) {
    if (!context_) fail("zmq_ctx_new");
    socket_ = zmq_socket(context_, type);
    if (!socket_) fail("zmq_socket");
    set(ZMQ_LINGER, 0);
  }
  ~Socket() {
    zmq_close(socket_);
    zmq_ctx_term(context_);
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  void set(int option, int value) {
    if (zmq_setsockopt(socket_, option, &value, sizeof value) != 0) fail("zmq_setsockopt");
  }
  void* get() const { return socket_; }

 private:
  void* context_;
  void* socket_ = nullptr;
};

class ZeromqPublisher {
 public:
  explicit ZeromqPublisher(const ChildSpec& spec) : socket_(ZMQ_PUB), buffer_(spec.payload_bytes) {
    if (spec.lossless) socket_.set(ZMQ_XPUB_NODROP, 1);
    if (zmq_bind(socket_.get(), endpoint(spec, spec.publisher_index).c_str()) != 0) fail("zmq_bind");
  }
  std::span<std::byte> prepare(size_t bytes) { return {buffer_.data(), bytes}; }
  void send(size_t bytes) {
    while (zmq_send(socket_.get(), buffer_.data(), bytes, 0) < 0)
      if (zmq_errno() != EINTR) fail("zmq_send");
  }
  void flush() {}

 private:
  Socket socket_;
  std::vector<std::byte> buffer_;
};

class ZeromqSubscriber {
 public:
  explicit ZeromqSubscriber(const ChildSpec& spec) : socket_(ZMQ_SUB) {
    // A blocking receive returns after this long without a message, so deadlines are kept.
    socket_.set(ZMQ_RCVTIMEO, 20);
    // Publishers may bind after we connect: retry soon rather than after the default 100 ms.
    socket_.set(ZMQ_RECONNECT_IVL, 10);
    if (zmq_setsockopt(socket_.get(), ZMQ_SUBSCRIBE, "", 0) != 0) fail("ZMQ_SUBSCRIBE");
    for (int i = 0; i < spec.publishers; ++i)
      if (zmq_connect(socket_.get(), endpoint(spec, i).c_str()) != 0) fail("zmq_connect");
    zmq_msg_init(&message_);
  }
  ~ZeromqSubscriber() { zmq_msg_close(&message_); }
  ZeromqSubscriber(const ZeromqSubscriber&) = delete;
  ZeromqSubscriber& operator=(const ZeromqSubscriber&) = delete;

  std::optional<std::span<const std::byte>> receive(Wait wait, int64_t timeout_ns) {
    Patience patience(timeout_ns);
    for (;;) {
      if (zmq_msg_recv(&message_, socket_.get(), wait == Wait::kBusy ? ZMQ_DONTWAIT : 0) >= 0)
        return std::span<const std::byte>(static_cast<const std::byte*>(zmq_msg_data(&message_)),
                                          zmq_msg_size(&message_));
      if (zmq_errno() != EAGAIN && zmq_errno() != EINTR) fail("zmq_msg_recv");
      if (patience.exhausted()) return std::nullopt;
    }
  }
  void release() {}  // the next zmq_msg_recv releases the message

 private:
  Socket socket_;
  zmq_msg_t message_;
};

struct Zeromq {
  using Publisher = ZeromqPublisher;
  using Subscriber = ZeromqSubscriber;
};

nlohmann::json run_child(const ChildSpec& spec, ControlPage& page) {
  return run_role<Zeromq>(spec, page);
}

std::string version() {
  int major = 0, minor = 0, patch = 0;
  zmq_version(&major, &minor, &patch);
  return "ZeroMQ " + std::to_string(major) + "." + std::to_string(minor) + "." +
         std::to_string(patch) + " (ipc:// PUB/SUB)";
}

}  // namespace

System zeromq_system() {
  return {"zeromq", "ZeroMQ", true, "", false, version, start_in_session_directory, run_child};
}

}  // namespace shmbus::compare
