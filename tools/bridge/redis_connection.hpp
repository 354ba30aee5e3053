// One connection to Redis over hiredis 0.14's plain (synchronous) context, driven
// non-blockingly by the caller's poll() loop.
//
// After connecting, hiredis is the parser only: this class owns the bytes in both directions.
// Commands are formatted into a buffer it reuses and written with send(); replies are
// read into a buffer of its own, fed to hiredis's reader a slice at a time, and built in an
// arena that the next reply reuses. At a million messages a second, hiredis's own buffers
// cost more than the rest of a relay: its output buffer is freed and regrown after every
// complete write, its reader moves the unread bytes to the front after each reply once 1 KiB
// is consumed (so a 16 KiB read is moved about eight times over), and each reply is
// several calloc()s and free()s (a pub/sub message is eight).
//
// Why not hiredis's async API: 0.14 mis-dispatches PING replies on subscribed connections,
// asserts on commands sent between UNSUBSCRIBE and its reply, and ignores timeouts in pub/sub
// (research/redis.md §4). Here hiredis only frames commands and parses replies; this class and
// its owner decide what every reply means, so none of those code paths is used.
//
// Connecting (TCP connect, AUTH, SELECT) blocks for at most the connect timeout; afterwards the
// socket is non-blocking and the context's REDIS_BLOCK flag is cleared, so read() and flush()
// treat EAGAIN as "later" instead of a fatal error.
//
// Thread safety: one thread at a time (the thread that holds the connection).
#pragma once

#include <hiredis/hiredis.h>
#include <poll.h>

#include <chrono>
#include <cstdlib>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace shmbus::bridge {

inline std::string_view reply_text(const redisReply* r) {
  return r && r->str ? std::string_view(r->str, r->len) : std::string_view();
}

// Whether an error reply's text starts with one of `prefixes` (its error code).
inline bool starts_with_any(std::string_view error,
                            std::initializer_list<std::string_view> prefixes) {
  for (std::string_view prefix : prefixes)
    if (error.starts_with(prefix)) return true;
  return false;
}

struct RedisEndpoint {
  std::string host;
  int port = 6379;
  std::string user;
  std::string password;
  int db = 0;
  std::chrono::milliseconds connect_timeout{1000};

  std::string address() const { return host + ":" + std::to_string(port); }  // host:port
};

class RedisConnection {
 public:
  // Connects, authenticates and selects the database; throws std::runtime_error naming the
  // server and what failed.
  explicit RedisConnection(const RedisEndpoint& endpoint);
  ~RedisConnection();
  RedisConnection(const RedisConnection&) = delete;
  RedisConnection& operator=(const RedisConnection&) = delete;

  int fd() const { return context_->fd; }
  // Queues one command (binary-safe arguments) in the output buffer.
  void append(std::span<const std::string_view> args);
  // The same for a braced list, without building a vector for it (once per exported
  // message on the export path).
  void append(std::initializer_list<std::string_view> args) {
    append(std::span<const std::string_view>(args.begin(), args.size()));
  }
  // Writes what it can without blocking. Returns true when the output buffer is empty;
  // throws std::runtime_error when the connection is broken.
  bool flush();
  bool output_pending() const { return out_sent_ < out_.size(); }
  // The poll() entry for its socket: replies to read, and room to write while output waits.
  pollfd poll_entry() const {
    return {fd(), static_cast<short>(POLLIN | (output_pending() ? POLLOUT : 0)), 0};
  }
  // Bytes appended and not yet written to the socket.
  size_t output_bytes() const;
  // Reads what arrived without blocking; throws std::runtime_error on EOF or error.
  void read();
  // The next complete reply already read, if any. It stays valid until the next call to
  // next_reply() (its memory is reused then) or the connection's end.
  const redisReply* next_reply();

  // Where next_reply() builds its replies: bump allocation from chunks that are kept and
  // reused, so a reply costs no malloc() once the first few have been read.
  class ReplyArena {
   public:
    void* allocate(size_t bytes);  // aligned for redisReply, not zeroed; nullptr if out of memory
    // Forgets every reply built so far; keeps the ordinary chunks for the next ones.
    void reset();

   private:
    static constexpr size_t kChunkBytes = 64 << 10;  // one chunk, unless a reply needs more
    struct FreeDeleter {
      void operator()(std::byte* p) const { std::free(p); }
    };
    struct Chunk {
      std::unique_ptr<std::byte, FreeDeleter> bytes;  // from malloc(): see allocate()
      size_t size;
    };
    std::vector<Chunk> chunks_;
    size_t current_ = 0;  // chunk being filled
    size_t used_ = 0;     // bytes of it handed out
  };

 private:
  // Frees the context and throws, naming the server, `what` and hiredis's reason.
  [[noreturn]] void fail(const std::string& what);
  std::string name_;
  redisContext* context_ = nullptr;
  std::string out_;  // formatted commands; [out_sent_, size) not yet written
  size_t out_sent_ = 0;
  std::vector<char> in_;  // bytes read; [in_fed_, in_read_) not yet given to the reader
  size_t in_fed_ = 0, in_read_ = 0;
  ReplyArena arena_;
};

// For the Redis thread's occasional questions (topology, capabilities), never the relay's
// path: one command on `connection` and its reply, waiting at most `timeout`. The reply lives
// until the connection's next reply. Throws std::runtime_error on a timeout or a broken
// connection.
const redisReply* round_trip(RedisConnection& connection,
                             std::initializer_list<std::string_view> args,
                             std::chrono::milliseconds timeout);

}  // namespace shmbus::bridge
