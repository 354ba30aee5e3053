// shmbusd: command line, logging sinks and signals around the Daemon (server.hpp).
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>

#include "config.hpp"
#include "naming.hpp"
#include "program_log.hpp"
#include "server.hpp"
#include "shmbus/error.hpp"

#ifdef SHMBUS_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace {

// Read by the signal handlers: a lock-free atomic, so they see it whole.
std::atomic<shmbus::daemon::Daemon*> g_daemon{nullptr};

void on_signal(int) {
  if (auto* daemon = g_daemon.load()) daemon->stop();  // async-signal-safe (an eventfd write)
}

void on_reload_signal(int) {
  if (auto* daemon = g_daemon.load()) daemon->reload();  // the same
}

// Each client costs a socket, and a crashed one a pidfd until its process is gone: take the
// whole hard limit rather than the soft 1024 a shell or service usually starts with.
void raise_open_file_limit(uint32_t max_clients, spdlog::logger& logger) {
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) != 0) return;
  if (files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }
  constexpr rlim_t kOwnDescriptors = 64;  // socket, epoll, timers, arenas, log
  if (files.rlim_cur != RLIM_INFINITY && files.rlim_cur < 2 * rlim_t{max_clients} + kOwnDescriptors)
    logger.warn(
        "open file limit {} is low for max_clients = {} (a client may need two); "
        "clients beyond it wait to connect. Raise LimitNOFILE= (systemd) or ulimit -n",
        files.rlim_cur, max_clients);
}

#ifdef SHMBUS_HAVE_SYSTEMD
// Under systemd: take the listening socket of a .socket unit (socket activation), and
// report STATUS= each second and WATCHDOG=1 at half the watchdog interval, both from the
// event loop, so a wedged loop stops the pings and systemd restarts the daemon.
void supervise_with_systemd(shmbus::daemon::DaemonOptions& options, spdlog::logger& logger) {
  const int passed = sd_listen_fds(1);  // 1: unset LISTEN_FDS, so children don't inherit it
  if (passed < 0)
    throw std::runtime_error(std::string("LISTEN_FDS is set but its socket is unusable: ") +
                             std::strerror(-passed) +
                             "; check the .socket unit (ListenStream=/run/shmbus/<bus>.sock)");
  if (passed > 1)
    throw std::runtime_error("systemd passed " + std::to_string(passed) +
                             " sockets; shmbusd serves one bus on one socket (one "
                             "ListenStream= per .socket unit)");
  if (passed == 1) {
    options.listen_fd = SD_LISTEN_FDS_START;
    logger.info("serving the socket passed by systemd (socket activation)");
  }
  uint64_t watchdog_usec = 0;
  const bool watchdog = sd_watchdog_enabled(1, &watchdog_usec) > 0 && watchdog_usec > 0;
  if (watchdog)
    options.status_interval = std::min<std::chrono::milliseconds>(
        std::chrono::milliseconds(1000), std::chrono::milliseconds(watchdog_usec / 2000));
  if (std::getenv("NOTIFY_SOCKET") == nullptr) return;
  options.on_status = [watchdog,
                       last = std::string()](const shmbus::daemon::DaemonStatus& s) mutable {
    std::string status = "STATUS=" + std::to_string(s.channels) + " channels, " +
                         std::to_string(s.clients) + " clients, " + std::to_string(s.patterns) +
                         " patterns, " + shmbus::human_bytes(s.reserved_bytes) +
                         " of shared memory";
    if (status == last && !watchdog) return;  // unchanged: nothing to say
    last = status;
    if (watchdog) status += "\nWATCHDOG=1";
    sd_notify(0, status.c_str());
  };
}
#endif

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"shmbusd - the shmbus daemon: owns a bus's shared memory, channels and clients"};
  std::string bus, socket_path, config_path, log_level = "info";
  bool check_config = false;
  app.add_option("--bus", bus, "Bus name (default: $SHMBUS_BUS or 'default')");
  app.add_option("--socket", socket_path,
                 "Control socket (default: $SHMBUS_SOCKET or /run/shmbus/<bus>.sock)");
  app.add_option("-c,--config", config_path, "Config file (TOML; see shmbusd.toml)");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  app.add_flag("--check-config", check_config, "Validate the config file and exit");
  CLI11_PARSE(app, argc, argv);

  // Until the daemon can reload, a SIGHUP (an early systemctl reload) must not end it.
  signal(SIGHUP, SIG_IGN);
  auto logger = shmbus::make_program_logger("shmbusd", log_level);
  spdlog::set_default_logger(logger);
  try {
    shmbus::daemon::DaemonOptions options;
    options.bus = bus;
    options.socket_path = socket_path;
    options.logger = logger;
    if (!config_path.empty()) options.config = shmbus::daemon::load_config(config_path);
    options.config_path = config_path;
    if (check_config) {
      std::cout << options.config.source << ": OK\n";
      return 0;
    }
    raise_open_file_limit(options.config.max_clients, *logger);
#ifdef SHMBUS_HAVE_SYSTEMD
    supervise_with_systemd(options, *logger);
#endif
    shmbus::daemon::Daemon daemon(std::move(options));
    g_daemon = &daemon;
    // Cleared however this scope ends (run() may throw), before the daemon goes: a signal
    // then finds no daemon rather than a destroyed one.
    struct ClearOnExit {
      ~ClearOnExit() { g_daemon = nullptr; }
    } clear_on_exit;
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;  // a signal must not fail the system call it interrupts
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    // SIGHUP (ExecReload=, systemctl reload) reads the config again instead of ending the
    // daemon the default way, without its cleanup.
    sa.sa_handler = on_reload_signal;
    sigaction(SIGHUP, &sa, nullptr);
    signal(SIGPIPE, SIG_IGN);
#ifdef SHMBUS_HAVE_SYSTEMD
    sd_notify(0, "READY=1");
#endif
    daemon.run();
#ifdef SHMBUS_HAVE_SYSTEMD
    sd_notify(0, "STOPPING=1");
#endif
    g_daemon = nullptr;
    logger->info("stopped; shared memory of bus '{}' removed", daemon.bus());
    return 0;
  } catch (const std::exception& e) {
    logger->error("{}", e.what());
    return 1;
  }
}
