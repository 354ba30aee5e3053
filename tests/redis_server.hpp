// A real redis-server for tests: started on a free loopback port, stopped afterwards.
// Tests that need it skip loudly when redis-server is not installed (CI installs it).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>

#include <hiredis/hiredis.h>

namespace shmbus::test {

inline std::optional<std::string> find_redis_server() {
  for (const char* path : {"/usr/bin/redis-server", "/usr/local/bin/redis-server"})
    if (access(path, X_OK) == 0) return std::string(path);
  return std::nullopt;
}

// A port the kernel just handed out and released; redis-server binds it right after.
inline int free_loopback_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

class RedisServer {
 public:
  // Starts redis-server; `ok()` is false (and `error()` says why) if it could not.
  RedisServer() {
    const auto binary = find_redis_server();
    if (!binary) {
      error_ = "redis-server is not installed (apt-get install redis-server)";
      return;
    }
    for (int attempt = 0; attempt < 5 && pid_ <= 0; ++attempt) {
      port_ = free_loopback_port();
      const std::string port = std::to_string(port_);
      pid_ = fork();
      if (pid_ == 0) {
        execl(binary->c_str(), "redis-server", "--port", port.c_str(), "--bind", "127.0.0.1",
              "--save", "", "--appendonly", "no", "--loglevel", "warning", nullptr);
        _exit(127);
      }
      if (!wait_ready()) stop();
    }
    if (pid_ <= 0) error_ = "redis-server did not start on a loopback port";
  }
  ~RedisServer() { stop(); }
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  bool ok() const { return pid_ > 0; }
  const std::string& error() const { return error_; }
  int port() const { return port_; }
  redisContext* connect() const {
    timeval timeout{2, 0};
    return redisConnectWithTimeout("127.0.0.1", port_, timeout);
  }

 private:
  bool wait_ready() {
    for (int i = 0; i < 100; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      redisContext* c = connect();
      if (c != nullptr && c->err == 0) {
        auto* reply = static_cast<redisReply*>(redisCommand(c, "PING"));
        const bool pong = reply != nullptr && reply->type == REDIS_REPLY_STATUS;
        if (reply) freeReplyObject(reply);
        redisFree(c);
        if (pong) return true;
      } else if (c) {
        redisFree(c);
      }
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {  // exited (port taken?)
        pid_ = -1;
        return false;
      }
    }
    return false;
  }
  void stop() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
    pid_ = -1;
  }

  pid_t pid_ = -1;
  int port_ = 0;
  std::string error_;
};

}  // namespace shmbus::test
