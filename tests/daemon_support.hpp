// A shmbusd running in-process on a private bus for one test: its own bus name (so its
// shared memory cannot meet another test's), its socket in a temporary directory, and a
// thread running the event loop. Clients connect with options().
#pragma once

#include <spdlog/sinks/null_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "config.hpp"
#include "server.hpp"
#include "shmbus/bus.hpp"

namespace shmbus::test {

inline daemon::Config small_test_config() {
  daemon::Config config;
  config.arena_bytes = 64ull << 20;
  config.max_shared_memory = 512ull << 20;
  config.max_channels = 200000;
  config.max_subscriptions_per_client = 4096;
  config.defaults.ring_bytes = 64 * 1024;
  return config;
}

class TestDaemon {
 public:
  // `logger`: where the daemon logs (null: nowhere).
  explicit TestDaemon(daemon::Config config = small_test_config(), const char* tag = "t",
                      std::shared_ptr<spdlog::logger> logger = nullptr) {
    static std::atomic<uint32_t> counter{0};
    bus_ = std::string(tag) + std::to_string(getpid()) + "x" + std::to_string(counter++);
    dir_ = std::filesystem::temp_directory_path() / ("shmbus-" + bus_);
    std::filesystem::create_directories(dir_);
    daemon::DaemonOptions options;
    options.bus = bus_;
    options.socket_path = (dir_ / "bus.sock").string();
    options.config = std::move(config);
    // What the daemon says of itself, ten times a second.
    options.status_interval = std::chrono::milliseconds(100);
    options.on_status = [this](const daemon::DaemonStatus& status) {
      std::lock_guard<std::mutex> lock(status_mutex_);
      status_ = status;
    };
    // A logger of the test's own; else SHMBUS_TEST_LOG=1 shows the daemon's log on stderr,
    // for a test being debugged.
    if (logger)
      options.logger = std::move(logger);
    else if (std::getenv("SHMBUS_TEST_LOG") != nullptr)
      options.logger = std::make_shared<spdlog::logger>(
          "test-daemon", std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    else
      options.logger = std::make_shared<spdlog::logger>(
          "test-daemon", std::make_shared<spdlog::sinks::null_sink_mt>());
    daemon_ = std::make_unique<daemon::Daemon>(std::move(options));
    thread_ = std::thread([this] { daemon_->run(); });
  }
  ~TestDaemon() {
    stop();
    std::filesystem::remove_all(dir_);
  }
  void stop() {
    if (!daemon_) return;
    daemon_->stop();
    thread_.join();
    daemon_.reset();
  }

  ConnectOptions options() const {
    ConnectOptions options;
    options.bus = bus_;
    options.socket_path = (dir_ / "bus.sock").string();
    options.client_name = "test";
    return options;
  }
  // The daemon's last status report (every 100 ms).
  daemon::DaemonStatus status() const {
    std::lock_guard<std::mutex> lock(status_mutex_);
    return status_;
  }
  const std::string& bus() const { return bus_; }
  std::string socket_path() const { return (dir_ / "bus.sock").string(); }

 private:
  std::string bus_;
  std::filesystem::path dir_;
  mutable std::mutex status_mutex_;
  daemon::DaemonStatus status_;  // guarded by status_mutex_
  std::unique_ptr<daemon::Daemon> daemon_;
  std::thread thread_;
};

}  // namespace shmbus::test
