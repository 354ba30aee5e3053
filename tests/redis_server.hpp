// A real redis-server for tests: started on a free loopback port, stopped afterwards.
// Tests that need it skip loudly when redis-server is not installed (CI installs it).
#pragma once

#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <vector>

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

struct RedisServerOptions {
  // Keep an append-only file (fsync every write) in a private directory, so a killed and
  // restarted server still holds its streams: for durable tests.
  bool append_only = false;
  // More redis-server arguments (a cluster node's, say).
  std::vector<std::string> extra_args;
};

class RedisServer {
 public:
  // Starts redis-server; `ok()` is false (and `error()` says why) if it could not.
  explicit RedisServer(RedisServerOptions options = {}) : options_(options) {
    const auto binary = find_redis_server();
    if (!binary) {
      error_ = "redis-server is not installed (apt-get install redis-server)";
      return;
    }
    binary_ = *binary;
    if (options_.append_only) {
      char dir[] = "/tmp/shmbus-redis-XXXXXX";
      if (mkdtemp(dir) != nullptr) dir_ = dir;
    }
    for (int attempt = 0; attempt < 5 && pid_ <= 0; ++attempt) {
      port_ = free_loopback_port();
      if (!start()) stop();
    }
    if (pid_ <= 0) error_ = "redis-server did not start on a loopback port";
  }
  ~RedisServer() {
    stop();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // SIGKILL, as a crash: no goodbye to clients, nothing flushed beyond what was written.
  void kill_hard() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    pid_ = -1;
  }
  // SIGSTOP / SIGCONT: a server that keeps its connections open but answers nothing, as
  // behind a dead network path.
  void pause() const { kill(pid_, SIGSTOP); }
  void resume() const { kill(pid_, SIGCONT); }
  // Starts again on the same port (and the same append-only file); false if it could not.
  bool restart() {
    stop();
    return start();
  }
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  bool ok() const { return pid_ > 0; }
  // One command on a fresh connection; nullptr if the server does not answer.
  template <typename... Args>
  redisReply* command(const char* format, Args... args) const {
    redisContext* c = connect();
    if (c == nullptr || c->err) {
      if (c) redisFree(c);
      return nullptr;
    }
    auto* reply = static_cast<redisReply*>(redisCommand(c, format, args...));
    redisFree(c);
    return reply;
  }
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
  bool start() {
    const std::string port = std::to_string(port_);
    const pid_t parent = getpid();
    // Built before fork(): the child only execs (no allocation in a child of threads).
    std::vector<std::string> args = {"redis-server", "--port", port,         "--bind", "127.0.0.1",
                                     "--save",       "",       "--loglevel", "warning"};
    if (options_.append_only)
      args.insert(args.end(), {"--appendonly", "yes", "--appendfsync", "always", "--dir", dir_});
    else
      args.insert(args.end(), {"--appendonly", "no"});
    args.insert(args.end(), options_.extra_args.begin(), options_.extra_args.end());
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      // A test that crashes must not leave its server running: it would hold the test's
      // output pipe open, and meson would wait on it until the suite's timeout. The signal
      // comes when the *thread* that forked ends: start() and restart() are called from the
      // test's main thread, which lives as long as the server should.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);  // the test died before prctl took effect
      execv(binary_.c_str(), argv.data());
      _exit(127);
    }
    return wait_ready();
  }
  void stop() {
    if (pid_ > 0) {
      kill(pid_, SIGCONT);  // a paused server cannot act on SIGTERM
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
    pid_ = -1;
  }

  RedisServerOptions options_;
  std::string binary_;
  std::string dir_;  // append-only file, when asked for
  pid_t pid_ = -1;
  int port_ = 0;
  std::string error_;
};

}  // namespace shmbus::test
