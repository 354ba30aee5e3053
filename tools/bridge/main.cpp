// shmbus-bridge: command line, logging and signals around the Bridge (bridge.hpp).
#include <signal.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <iostream>

#include "bridge.hpp"
#include "program_log.hpp"
#include "shmbus/error.hpp"

int main(int argc, char** argv) {
  CLI::App app{"shmbus-bridge - relays chosen channels between the local bus and Redis"};
  std::string bus, socket_path, config_path, log_level = "info";
  bool check_config = false;
  app.add_option("--bus", bus, "Bus name (default: $SHMBUS_BUS or 'default')");
  app.add_option("--socket", socket_path,
                 "Control socket (default: $SHMBUS_SOCKET or /run/shmbus/<bus>.sock)");
  app.add_option("-c,--config", config_path, "Config file (TOML; see shmbus-bridge.toml)")
      ->required();
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  app.add_flag("--check-config", check_config, "Validate the config file and exit");
  CLI11_PARSE(app, argc, argv);

  // Under systemd, lines reach the journal with their priorities, as shmbusd's do.
  auto logger = shmbus::make_program_logger("shmbus-bridge", log_level);
  try {
    auto config = shmbus::bridge::load_bridge_config(config_path);
    if (check_config) {
      std::cout << config.source << ": OK\n";
      return 0;
    }
    // Signals are taken by sigwait below; blocked before the bridge starts its threads, so
    // they inherit the mask and none of them is interrupted.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
    shmbus::bridge::Bridge bridge(std::move(config), {bus, socket_path, "shmbus-bridge", {}},
                                  logger);
    logger->info("relaying; counters every stats_interval_ms on local channel '{}'",
                 bridge.stats_channel());
    // Wait for a stop signal, looking once a second whether the local daemon went away.
    const timespec second{1, 0};
    int signal_number = -1;
    while (signal_number < 0 && !bridge.local_bus_gone())
      signal_number = sigtimedwait(&stop_signals, nullptr, &second);
    if (signal_number > 0) logger->info("signal {}: stopping", signal_number);
    bridge.stop();
    logger->info("stopped: {}", bridge.counters_json());
    return bridge.local_bus_gone() ? 1 : 0;
  } catch (const std::exception& e) {
    logger->error("{}", e.what());
    return 1;
  }
}
