// Redis Pub/Sub through hiredis: PUBLISH pipelined (flush() collects the replies), SUBSCRIBE
// and PSUBSCRIBE on their own connections. The subscriber reads the socket itself (busy:
// non-blocking recv; blocking: recv) and lets hiredis's reader parse the replies. The
// harness runs its own redis-server on a free loopback port.
#include <sys/socket.h>

#include <cstdio>
#include <string_view>
#include <thread>

#include <hiredis/hiredis.h>

#include "process.hpp"
#include "redis_server.hpp"
#include "systems.hpp"
#include "workloads.hpp"

namespace shmbus::compare {
namespace {

// PUBLISH commands in flight before the publisher reads their replies (a latency sender
// flushes after every message, so it waits for each reply).
constexpr int kPipelineDepth = 64;
constexpr size_t kReadBytes = 256 * 1024;
constexpr size_t kPatternsPerCommand = 1000;
constexpr std::string_view kPsubscribe = "PSUBSCRIBE";

struct ContextDeleter {
  void operator()(redisContext* c) const { redisFree(c); }
};
using Context = std::unique_ptr<redisContext, ContextDeleter>;
struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

Context connect(int port) {
  const timeval timeout{2, 0};
  Context c(redisConnectWithTimeout("127.0.0.1", port, timeout));
  if (!c) throw Failure("hiredis: out of memory");
  if (c->err) throw Failure(std::string("cannot connect to redis-server: ") + c->errstr);
  return c;
}

Reply next_reply(redisContext* c) {
  void* reply = nullptr;
  if (redisGetReply(c, &reply) != REDIS_OK) throw Failure(std::string("redis: ") + c->errstr);
  return Reply(static_cast<redisReply*>(reply));
}

class RedisPublisher {
 public:
  explicit RedisPublisher(const ChildSpec& spec)
      : context_(connect(spec.redis_port)), topic_(spec.topic), buffer_(spec.payload_bytes) {}

  std::span<std::byte> prepare(size_t bytes) { return {buffer_.data(), bytes}; }
  void send(size_t bytes) {
    if (redisAppendCommand(context_.get(), "PUBLISH %b %b", topic_.data(), topic_.size(),
                           buffer_.data(), bytes) != REDIS_OK)
      throw Failure(std::string("redis: ") + context_->errstr);
    if (++pending_ == kPipelineDepth) flush();
  }
  void flush() {
    for (; pending_ > 0; --pending_) {
      const Reply reply = next_reply(context_.get());
      if (reply->type != REDIS_REPLY_INTEGER)
        throw Failure("redis: PUBLISH answered " + std::string(reply->str ? reply->str : "?"));
    }
  }

 private:
  Context context_;
  std::string topic_;
  std::vector<std::byte> buffer_;
  int pending_ = 0;
};

class RedisSubscriber {
 public:
  explicit RedisSubscriber(const ChildSpec& spec) : context_(connect(spec.redis_port)), buffer_(kReadBytes) {
    const Reply reply(static_cast<redisReply*>(
        redisCommand(context_.get(), "SUBSCRIBE %b", spec.topic.data(), spec.topic.size())));
    if (!reply || reply->type != REDIS_REPLY_ARRAY)
      throw Failure(std::string("redis: SUBSCRIBE failed: ") + context_->errstr);
    // A blocking recv() returns after this long without data, so deadlines are kept.
    const timeval slice{0, 20'000};
    setsockopt(context_->fd, SOL_SOCKET, SO_RCVTIMEO, &slice, sizeof slice);
  }

  std::optional<std::span<const std::byte>> receive(Wait wait, int64_t timeout_ns) {
    Patience patience(timeout_ns);
    for (;;) {
      void* parsed = nullptr;
      if (redisReaderGetReply(context_->reader, &parsed) != REDIS_OK)
        throw Failure("redis: unreadable reply from the server");
      if (parsed != nullptr) {
        reply_.reset(static_cast<redisReply*>(parsed));
        if (reply_->type != REDIS_REPLY_ARRAY || reply_->elements != 3 ||
            reply_->element[2]->type != REDIS_REPLY_STRING)
          throw Failure("redis: a subscriber got something other than a message");
        const redisReply* payload = reply_->element[2];
        return std::span<const std::byte>(reinterpret_cast<const std::byte*>(payload->str),
                                          payload->len);
      }
      const ssize_t n = recv(context_->fd, buffer_.data(), buffer_.size(),
                             wait == Wait::kBusy ? MSG_DONTWAIT : 0);
      if (n > 0) {
        redisReaderFeed(context_->reader, buffer_.data(), static_cast<size_t>(n));
        continue;
      }
      if (n == 0) throw Failure("redis-server closed the subscriber's connection");
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        throw Failure(std::string("redis: recv: ") + std::strerror(errno));
      if (patience.exhausted()) return std::nullopt;
    }
  }
  void release() { reply_.reset(); }

 private:
  Context context_;
  std::vector<char> buffer_;
  Reply reply_;
};

struct Redis {
  using Publisher = RedisPublisher;
  using Subscriber = RedisSubscriber;

  static nlohmann::json hold_patterns(const ChildSpec& spec, ControlPage& page) {
    return compare::hold_patterns(spec, page, [&](const std::vector<std::string>& patterns) {
      Context context = connect(spec.redis_port);
      for (size_t first = 0; first < patterns.size(); first += kPatternsPerCommand) {
        const size_t end = std::min(patterns.size(), first + kPatternsPerCommand);
        std::vector<const char*> argv{kPsubscribe.data()};
        std::vector<size_t> lengths{kPsubscribe.size()};
        for (size_t i = first; i < end; ++i) {
          argv.push_back(patterns[i].c_str());
          lengths.push_back(patterns[i].size());
        }
        redisAppendCommandArgv(context.get(), static_cast<int>(argv.size()), argv.data(),
                               lengths.data());
        for (size_t i = first; i < end; ++i) next_reply(context.get());  // one per pattern
      }
      return context;
    });
  }
};

class RedisServerProcess : public Server {
 public:
  explicit RedisServerProcess(const Session& session) {
    const auto binary = test::find_redis_server();
    if (!binary) throw Failure("redis-server is not installed (apt-get install redis-server)");
    // The port is free when chosen but another process may take it first: then try again.
    for (int attempt = 0; attempt < 5; ++attempt) {
      port_ = test::free_loopback_port();
      process_ = std::make_unique<ServerProcess>(
          std::vector<std::string>{*binary, "--port", std::to_string(port_), "--bind",
                                   "127.0.0.1", "--save", "", "--appendonly", "no",
                                   "--loglevel", "warning"},
          session.dir + "/redis.log");
      if (wait_ready()) break;
      process_.reset();
    }
    if (!process_) throw Failure("redis-server did not start: " + log_tail(session.dir + "/redis.log"));
    // Redis disconnects a subscriber 32 MB behind (client-output-buffer-limit pubsub): in the
    // lossless throughput runs it must keep it and let the publisher's pipeline wait instead.
    Context c = connect(port_);
    const Reply reply(static_cast<redisReply*>(
        redisCommand(c.get(), "CONFIG SET client-output-buffer-limit %s", "pubsub 0 0 0")));
    if (!reply || reply->type == REDIS_REPLY_ERROR)
      throw Failure("redis-server refused CONFIG SET client-output-buffer-limit");
  }
  void locate(ChildSpec& spec) const override { spec.redis_port = port_; }

 private:
  bool wait_ready() {
    const int64_t deadline = mono_ns() + 5 * kSecond;
    while (mono_ns() < deadline && process_->running()) {
      const timeval timeout{1, 0};
      Context c(redisConnectWithTimeout("127.0.0.1", port_, timeout));
      if (c && c->err == 0) {
        const Reply pong(static_cast<redisReply*>(redisCommand(c.get(), "PING")));
        if (pong && pong->type == REDIS_REPLY_STATUS) return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  int port_ = 0;
  std::unique_ptr<ServerProcess> process_;
};

nlohmann::json run_child(const ChildSpec& spec, ControlPage& page) {
  return run_role<Redis>(spec, page);
}

std::unique_ptr<Server> start(const Session& session) {
  return std::make_unique<RedisServerProcess>(session);
}

std::string version() {
  std::string version = "Redis";
  if (FILE* p = popen("redis-server --version 2>/dev/null", "r")) {
    char line[256] = {};
    if (std::fgets(line, sizeof line, p)) {
      const std::string text(line);
      const auto at = text.find("v=");
      if (at != std::string::npos) version += " " + text.substr(at + 2, text.find(' ', at) - at - 2);
    }
    pclose(p);
  }
  return version + " (redis-server, hiredis " + std::to_string(HIREDIS_MAJOR) + "." +
         std::to_string(HIREDIS_MINOR) + "." + std::to_string(HIREDIS_PATCH) + ")";
}

}  // namespace

System redis_system() { return {"redis", "Redis", true, "", true, version, start, run_child}; }

}  // namespace shmbus::compare
