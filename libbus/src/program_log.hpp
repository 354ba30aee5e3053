// The log of shmbus's programs (shmbusd, shmbus-bridge): under systemd, lines go to the
// journal with their syslog priorities; on a terminal, with a timestamp and colour.
// Header-only: included by the programs' main.cpp, which link spdlog themselves.
#pragma once

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>

namespace shmbus {

// Under systemd, stderr goes to the journal: a "<N>" prefix gives each line its syslog
// priority, and the journal adds its own timestamp, so we print none.
template <typename Mutex>
class JournalSink : public spdlog::sinks::base_sink<Mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    int priority = 6;
    switch (msg.level) {
      case spdlog::level::trace:
      case spdlog::level::debug: priority = 7; break;
      case spdlog::level::info: priority = 6; break;
      case spdlog::level::warn: priority = 4; break;
      case spdlog::level::err: priority = 3; break;
      case spdlog::level::critical: priority = 2; break;
      default: break;
    }
    std::fprintf(stderr, "<%d>%.*s\n", priority, static_cast<int>(msg.payload.size()),
                 msg.payload.data());
  }
  void flush_() override { std::fflush(stderr); }
};

// The program's logger, named `name`, at `level` (trace ... error).
inline std::shared_ptr<spdlog::logger> make_program_logger(const std::string& name,
                                                           const std::string& level) {
  std::shared_ptr<spdlog::logger> logger;
  if (std::getenv("JOURNAL_STREAM") != nullptr || std::getenv("INVOCATION_ID") != nullptr) {
    logger = std::make_shared<spdlog::logger>(name, std::make_shared<JournalSink<std::mutex>>());
  } else {
    logger = spdlog::stderr_color_mt(name);
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%-5l%$ %v");
  }
  logger->set_level(spdlog::level::from_str(level));
  logger->flush_on(spdlog::level::info);
  return logger;
}

}  // namespace shmbus
