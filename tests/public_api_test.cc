// Built against the installed surface only: include/shmbus/ and libshmbus.so (meson gives
// this target no other include directory), so a user's program needs nothing else. It also
// runs the real shmbusd binary, on a private bus, and stops it with SIGTERM.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <shmbus/shmbus.hpp>
#include <string>
#include <thread>

namespace {

using namespace std::chrono_literals;

class ShmbusdProcess {
 public:
  ShmbusdProcess() {
    const char* binary = std::getenv("SHMBUSD");
    if (binary == nullptr) throw std::runtime_error("set SHMBUSD to the shmbusd binary");
    bus_ = "pubapi" + std::to_string(getpid());
    socket_ = (std::filesystem::temp_directory_path() / (bus_ + ".sock")).string();
    pid_ = fork();
    if (pid_ == 0) {
      execl(binary, binary, "--bus", bus_.c_str(), "--socket", socket_.c_str(), "--log-level",
            "warn", static_cast<char*>(nullptr));
      _exit(127);
    }
    for (int i = 0; i < 500; ++i) {
      try {
        shmbus::Bus::connect(options()).ping();
        return;
      } catch (const shmbus::Error&) {
        std::this_thread::sleep_for(10ms);
      }
    }
    throw std::runtime_error("shmbusd did not come up");
  }
  ~ShmbusdProcess() {
    if (pid_ > 0) stop();
  }
  int stop() {
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  shmbus::ConnectOptions options() const { return {bus_, socket_, "public-api-test", {}}; }
  const std::string& bus() const { return bus_; }
  const std::string& socket() const { return socket_; }

 private:
  std::string bus_;
  std::string socket_;
  pid_t pid_ = 0;
};

TEST(PublicApi, PublishSubscribeAgainstTheRealDaemon) {
  ShmbusdProcess daemon;
  auto sub = shmbus::Subscription::open(daemon.options());
  sub.subscribe({"room:1"});
  sub.psubscribe({"room:*"});
  auto bus = shmbus::Bus::connect(daemon.options());
  EXPECT_EQ(bus.publish("room:1", "hello"), 2u);
  auto message = sub.next(2s);
  ASSERT_TRUE(message);
  EXPECT_EQ(message->text(), "hello");
  EXPECT_TRUE(message->pattern.empty());
  message = sub.next(2s);
  ASSERT_TRUE(message);
  EXPECT_EQ(message->pattern, "room:*");
  auto stats = shmbus::StatsReader::open(daemon.options()).read();
  ASSERT_EQ(stats.channels.size(), 1u);
  EXPECT_EQ(stats.channels[0].published, 1u);
  EXPECT_EQ(stats.channels[0].receivers, 2u);
}

TEST(PublicApi, SigtermRemovesSocketAndSharedMemory) {
  ShmbusdProcess daemon;
  shmbus::Bus::connect(daemon.options()).publish("x", "y");
  EXPECT_TRUE(std::filesystem::exists(daemon.socket()));
  EXPECT_EQ(daemon.stop(), 0);
  EXPECT_FALSE(std::filesystem::exists(daemon.socket()));
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm"))
    EXPECT_EQ(entry.path().filename().string().rfind("shmbus." + daemon.bus() + ".", 0),
              std::string::npos)
        << entry.path() << " left behind";
}

}  // namespace
