#include "redis_connection.hpp"

#include <hiredis/sds.h>

#include <fcntl.h>

#include <stdexcept>

namespace shmbus::bridge {

namespace {
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
}  // namespace

RedisConnection::RedisConnection(const RedisEndpoint& endpoint)
    : name_("redis " + endpoint.host + ":" + std::to_string(endpoint.port)) {
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
  // From here on the caller's poll loop drives the socket (see the header).
  const int flags = fcntl(context_->fd, F_GETFL);
  fcntl(context_->fd, F_SETFL, flags | O_NONBLOCK);
  context_->flags &= ~REDIS_BLOCK;
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
  // The command in RESP (an array of bulk strings), formatted here into a reused buffer
  // and handed over as is: hiredis's own formatting (redisAppendCommandArgv) allocates an
  // sds and runs sdscatfmt per command, a measurable share of the export thread's time at
  // a million PUBLISHes a second.
  resp_.clear();
  const auto header = [this](char kind, size_t n) {
    resp_ += kind;
    resp_ += std::to_string(n);
    resp_ += "\r\n";
  };
  header('*', args.size());
  for (auto a : args) {
    header('$', a.size());
    resp_.append(a.data(), a.size());
    resp_ += "\r\n";
  }
  if (redisAppendFormattedCommand(context_, resp_.data(), resp_.size()) != REDIS_OK)
    throw std::runtime_error(name_ + ": out of memory appending a command");
  output_pending_ = true;
}

bool RedisConnection::flush() {
  // Each call writes once; a few calls drain a large pipeline, and a socket that stays full
  // (EAGAIN) leaves done at 0 so the caller polls for POLLOUT.
  int done = 0;
  for (int attempt = 0; attempt < 16 && !done; ++attempt)
    if (redisBufferWrite(context_, &done) != REDIS_OK)
      throw std::runtime_error(name_ + ": write failed: " + context_->errstr);
  output_pending_ = !done;
  return done != 0;
}

size_t RedisConnection::output_bytes() const { return sdslen(context_->obuf); }

void RedisConnection::read() {
  if (redisBufferRead(context_) != REDIS_OK)
    throw std::runtime_error(name_ + ": " +
                             (context_->errstr[0] ? context_->errstr : "connection closed"));
}

Reply RedisConnection::next_reply() {
  void* reply = nullptr;
  if (redisGetReplyFromReader(context_, &reply) != REDIS_OK)
    throw std::runtime_error(name_ + ": bad reply: " + context_->errstr);
  return Reply(static_cast<redisReply*>(reply));
}

}  // namespace shmbus::bridge
