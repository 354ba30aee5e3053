// shmbusd's core: the control socket, the channel registry, the shared-memory arenas and
// client liveness. Built as a library so tests run a daemon in-process (Daemon::run on a
// thread); daemon/main.cpp adds the command line, signals and logging sinks.
//
// Ownership: the daemon creates and alone allocates in every arena of its bus; clients map
// them and write only what the ring protocol lets them (frames, their reader slots,
// doorbell bits). Nothing the daemon relies on is protected by a lock in shared memory, so
// a client can die at any instruction.
//
// Thread safety: run() runs the whole daemon on the calling thread. stop() may be called
// from any thread or a signal handler. Everything else is private to the run() thread.
#pragma once

#include <spdlog/logger.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "config.hpp"

namespace shmbus::daemon {

// What the daemon reports to its supervisor (systemd STATUS=) on each status tick.
struct DaemonStatus {
  uint64_t clients = 0;
  uint64_t channels = 0;
  uint64_t patterns = 0;
  uint64_t reserved_bytes = 0;      // shared memory reserved for rings, tables and doorbells
  uint64_t unread_reply_bytes = 0;  // control messages waiting for clients to read them
};

struct DaemonOptions {
  std::string bus;          // empty: $SHMBUS_BUS or "default"
  std::string socket_path;  // empty: $SHMBUS_SOCKET or /run/shmbus/<bus>.sock
  // A socket already bound and listening (systemd socket activation): served as it is and
  // never unlinked, since its owner (the .socket unit) keeps it across daemon restarts.
  // The daemon takes ownership of the descriptor. -1: create socket_path.
  int listen_fd = -1;
  Config config;
  // The file `config` came from, read again on reload(); empty: built-in defaults, which
  // a reload leaves as they are.
  std::string config_path;
  std::shared_ptr<spdlog::logger> logger;  // null: spdlog's default logger
  // Called on the run() thread every status_interval while the event loop turns (so a
  // wedged loop stops calling it: a watchdog ping belongs here).
  std::function<void(const DaemonStatus&)> on_status;
  std::chrono::milliseconds status_interval{1000};
};

class Daemon {
 public:
  // Takes the bus (one daemon per bus: a lock beside the control socket), creates the
  // shared memory and listens. Throws std::runtime_error with a message fit for the user
  // (e.g. another daemon already runs this bus) on failure.
  explicit Daemon(DaemonOptions options);
  ~Daemon();  // closes the socket and releases the lock; the memory goes with its last user
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Serves until stop(). Throws only on a broken event loop (not on client errors).
  void run();
  // Asks run() to return. Async-signal-safe.
  void stop();
  // Asks run() to read config_path again and apply what may change while it runs
  // (reload.hpp), logging what changed and what needs a restart. Async-signal-safe.
  void reload();

  const std::string& bus() const;
  const std::string& socket_path() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shmbus::daemon
