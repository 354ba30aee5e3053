#include "redis_connection.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <system_error>

namespace shmbus::bridge {

namespace {

struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

Reply command(redisContext* c, const std::vector<std::string_view>& args) {
  std::vector<const char*> argv;
  std::vector<size_t> lengths;
  for (auto a : args) {
    argv.push_back(a.data());
    lengths.push_back(a.size());
  }
  return Reply(static_cast<redisReply*>(
      redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lengths.data())));
}
// hiredis's reader hands each value it parses to these, with the connection's arena as
// the task's privdata (the reader copies its own privdata into every task). They build
// the same redisReply tree as hiredis's defaults, in the arena instead of the heap. The
// arena's memory is not zeroed: each field is written here. An array's element slots are
// filled by hiredis as it parses them, and a reply is only handed out once complete.
using ReplyArena = RedisConnection::ReplyArena;

redisReply* new_reply(const redisReadTask* task, int type) {
  auto* arena = static_cast<ReplyArena*>(task->privdata);
  auto* reply = static_cast<redisReply*>(arena->allocate(sizeof(redisReply)));
  if (reply == nullptr) return nullptr;
  *reply = redisReply{};
  reply->type = type;
  if (task->parent != nullptr) {
    // An element: hiredis created the parent array with room for it at task->idx.
    auto* parent = static_cast<redisReply*>(task->parent->obj);
    parent->element[task->idx] = reply;
  }
  return reply;
}

void* create_string(const redisReadTask* task, char* str, size_t len) {
  redisReply* reply = new_reply(task, task->type);  // STRING, STATUS or ERROR
  if (reply == nullptr) return nullptr;
  auto* copy = static_cast<char*>(static_cast<ReplyArena*>(task->privdata)->allocate(len + 1));
  if (copy == nullptr) return nullptr;
  std::memcpy(copy, str, len);
  copy[len] = '\0';  // NUL-terminated, like hiredis's own
  reply->str = copy;
  reply->len = len;
  return reply;
}

void* create_array(const redisReadTask* task, int elements) {
  redisReply* reply = new_reply(task, REDIS_REPLY_ARRAY);
  if (reply == nullptr) return nullptr;
  if (elements > 0) {
    reply->element = static_cast<redisReply**>(
        static_cast<ReplyArena*>(task->privdata)
            ->allocate(static_cast<size_t>(elements) * sizeof(redisReply*)));
    if (reply->element == nullptr) return nullptr;
    reply->elements = static_cast<size_t>(elements);
  }
  return reply;
}

void* create_integer(const redisReadTask* task, long long value) {
  redisReply* reply = new_reply(task, REDIS_REPLY_INTEGER);
  if (reply == nullptr) return nullptr;
  reply->integer = value;
  return reply;
}

void* create_nil(const redisReadTask* task) {
  return new_reply(task, REDIS_REPLY_NIL);
}

// The reader frees a half-built reply on a protocol error and at redisFree(): the arena
// owns that memory, so there is nothing to do.
void free_in_arena(void*) {}

redisReplyObjectFunctions arena_functions = {create_string, create_array, create_integer,
                                             create_nil, free_in_arena};

// Reads and feeds: a slice fed at a time keeps hiredis's reader buffer near 1 KiB, so the
// unread bytes it moves to the front after each reply stay few. A reply larger than a
// slice doubles the slice while it is incomplete, so a 1 MiB payload is fed in ~10 steps.
constexpr size_t kReadChunk = 64 << 10;
constexpr size_t kFeedSlice = 1 << 10;
// Kept between bursts: larger output buffers are released once written out.
constexpr size_t kKeptOutputCapacity = 1 << 20;

}  // namespace

void* RedisConnection::ReplyArena::allocate(size_t bytes) {
  constexpr size_t kAlign = alignof(std::max_align_t);
  bytes = (bytes + kAlign - 1) / kAlign * kAlign;
  while (current_ < chunks_.size() && used_ + bytes > chunks_[current_].size) {
    ++current_;
    used_ = 0;
  }
  if (current_ == chunks_.size()) {
    // No exception may cross hiredis's C frames: a reply too large for memory (a corrupt
    // or hostile length) is a nullptr, which hiredis turns into an out-of-memory error
    // that next_reply() reports. Never zeroed here: a huge chunk costs pages only as
    // they are used.
    const size_t size = std::max(bytes, kChunkBytes);
    Chunk chunk{std::unique_ptr<std::byte, FreeDeleter>(static_cast<std::byte*>(std::malloc(size))),
                size};
    if (!chunk.bytes) return nullptr;
    try {
      chunks_.push_back(std::move(chunk));
    } catch (const std::bad_alloc&) {
      return nullptr;
    }
    used_ = 0;
  }
  std::byte* at = chunks_[current_].bytes.get() + used_;
  used_ += bytes;
  return at;
}

void RedisConnection::ReplyArena::reset() {
  // Only one reply lives here at a time. A chunk larger than the usual held a very large
  // string, and chunks past the first few held a very long array (XREAD of many entries):
  // give those back rather than keep the largest reply ever seen.
  constexpr size_t kKeptChunks = 4;
  std::erase_if(chunks_, [](const Chunk& c) { return c.size > kChunkBytes; });
  if (chunks_.size() > kKeptChunks) chunks_.resize(kKeptChunks);
  current_ = 0;
  used_ = 0;
}

RedisConnection::RedisConnection(const RedisEndpoint& endpoint)
    : name_("redis " + endpoint.address()) {
  const auto ms = endpoint.connect_timeout.count();
  const timeval timeout{static_cast<time_t>(ms / 1000), static_cast<suseconds_t>(ms % 1000 * 1000)};
  context_ = redisConnectWithTimeout(endpoint.host.c_str(), endpoint.port, timeout);
  if (context_ == nullptr) throw std::runtime_error(name_ + ": out of memory");
  if (context_->err) fail("cannot connect");
  // Commands during setup wait at most the connect timeout too.
  redisSetTimeout(context_, timeout);
  if (!endpoint.password.empty()) {
    Reply r = endpoint.user.empty() ? command(context_, {"AUTH", endpoint.password})
                                    : command(context_, {"AUTH", endpoint.user, endpoint.password});
    if (!r) fail("AUTH got no reply");
    if (r->type == REDIS_REPLY_ERROR) {
      const std::string why(reply_text(r.get()));
      redisFree(context_);
      context_ = nullptr;
      throw std::runtime_error(name_ + ": AUTH refused: " + why +
                               "; check [redis] user and password");
    }
  }
  if (endpoint.db != 0) {
    const std::string db = std::to_string(endpoint.db);
    Reply r = command(context_, {"SELECT", db});
    if (!r || r->type == REDIS_REPLY_ERROR) {
      const std::string why = r ? std::string(reply_text(r.get())) : "no reply";
      redisFree(context_);
      context_ = nullptr;
      throw std::runtime_error(name_ + ": SELECT " + db + " failed: " + why);
    }
  }
  redisEnableKeepAlive(context_);
  // From here on the caller's poll loop drives the socket, and this class its bytes (see
  // the header); hiredis's reader only parses, into the arena.
  const int flags = fcntl(context_->fd, F_GETFL);
  fcntl(context_->fd, F_SETFL, flags | O_NONBLOCK);
  context_->flags &= ~REDIS_BLOCK;
  context_->reader->fn = &arena_functions;
  context_->reader->privdata = &arena_;
  in_.resize(kReadChunk);
}

RedisConnection::~RedisConnection() {
  if (context_) redisFree(context_);
}

void RedisConnection::fail(const std::string& what) {
  const std::string why = context_->errstr[0] ? context_->errstr : "connection closed";
  redisFree(context_);
  context_ = nullptr;
  throw std::runtime_error(name_ + ": " + what + ": " + why);
}

void RedisConnection::append(std::span<const std::string_view> args) {
  // RESP: an array of bulk strings, formatted straight after what is still unwritten.
  const auto header = [this](char kind, size_t n) {
    out_ += kind;
    out_ += std::to_string(n);
    out_ += "\r\n";
  };
  header('*', args.size());
  for (auto a : args) {
    header('$', a.size());
    out_.append(a.data(), a.size());
    out_ += "\r\n";
  }
}

bool RedisConnection::flush() {
  while (out_sent_ < out_.size()) {
    const ssize_t n =
        ::send(context_->fd, out_.data() + out_sent_, out_.size() - out_sent_, MSG_NOSIGNAL);
    if (n > 0) {
      out_sent_ += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;  // POLLOUT, then again
    throw std::runtime_error(
        name_ + ": write failed: " + (n < 0 ? std::strerror(errno) : "connection closed"));
  }
  if (out_sent_ == out_.size()) {
    out_.clear();
    out_sent_ = 0;
    if (out_.capacity() > kKeptOutputCapacity) out_.shrink_to_fit();
    return true;
  }
  // A socket that stays full: drop the written front once it is half of the buffer, so
  // appends behind it do not grow the buffer without end.
  if (out_sent_ >= out_.size() / 2) {
    out_.erase(0, out_sent_);
    out_sent_ = 0;
  }
  return false;
}

size_t RedisConnection::output_bytes() const {
  return out_.size() - out_sent_;
}

void RedisConnection::read() {
  if (in_fed_ == in_read_) {
    in_fed_ = in_read_ = 0;
  } else if (in_fed_ > 0) {  // a caller that stopped taking replies: keep the rest
    std::memmove(in_.data(), in_.data() + in_fed_, in_read_ - in_fed_);
    in_read_ -= in_fed_;
    in_fed_ = 0;
  }
  if (in_read_ == in_.size()) return;  // full: next_reply() must take some first
  for (;;) {
    const ssize_t n = ::recv(context_->fd, in_.data() + in_read_, in_.size() - in_read_, 0);
    if (n > 0) {
      in_read_ += static_cast<size_t>(n);
      return;
    }
    if (n == 0) throw std::runtime_error(name_ + ": connection closed");
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    throw std::runtime_error(name_ + ": read failed: " + std::strerror(errno));
  }
}

const redisReply* RedisConnection::next_reply() {
  redisReader* reader = context_->reader;
  // Between replies (no half-built one in the arena), the previous one is done with.
  if (reader->ridx == -1) arena_.reset();
  for (;;) {
    void* reply = nullptr;
    if (redisReaderGetReply(reader, &reply) != REDIS_OK)
      throw std::runtime_error(name_ + ": bad reply: " + reader->errstr);
    if (reply != nullptr) return static_cast<const redisReply*>(reply);
    if (in_fed_ == in_read_) return nullptr;
    const size_t buffered = reader->len - reader->pos;  // an incomplete reply's bytes
    const size_t slice = std::min(std::max(kFeedSlice, buffered), in_read_ - in_fed_);
    if (redisReaderFeed(reader, in_.data() + in_fed_, slice) != REDIS_OK)
      throw std::runtime_error(name_ + ": out of memory reading a reply");
    in_fed_ += slice;
  }
}

const redisReply* round_trip(RedisConnection& connection,
                             std::initializer_list<std::string_view> args,
                             std::chrono::milliseconds timeout) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + timeout;
  connection.append(args);
  for (;;) {
    if (connection.output_pending()) connection.flush();
    connection.read();
    if (const redisReply* reply = connection.next_reply()) return reply;
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0)
      throw std::runtime_error("no answer to " + std::string(*args.begin()) + " within " +
                               std::to_string(timeout.count()) + " ms");
    pollfd fd = connection.poll_entry();
    if (poll(&fd, 1, static_cast<int>(left.count())) < 0 && errno != EINTR)
      throw std::system_error(errno, std::generic_category(), "poll");
  }
}

}  // namespace shmbus::bridge
