// The systems compared: shmbus and each peer that was found at build time. Each peer_*.cc
// supplies its server (started once for the session) and its child entry point; the
// registry in systems.cc lists them all, built or not, so a missing peer is reported.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "harness.hpp"

namespace shmbus::compare {

// What every server and child of one harness run shares.
struct Session {
  std::string dir;        // private temporary directory: configs, logs, ipc:// and Unix sockets
  pid_t harness_pid = 0;  // names everything this run creates, so cleanup finds it
};

// A system's server process (or in-process daemon) for the whole session; destroying it stops
// it and removes what it left behind.
class Server {
 public:
  virtual ~Server() = default;
  // Tells a child where the server is.
  virtual void locate(ChildSpec& spec) const = 0;
};

// A server-less system (ZeroMQ ipc://, Unix sockets): children meet in the session directory.
class SessionDirectory : public Server {
 public:
  explicit SessionDirectory(std::string dir) : dir_(std::move(dir)) {}
  void locate(ChildSpec& spec) const override { spec.ipc_dir = dir_; }

 private:
  std::string dir_;
};

struct System {
  std::string id;     // shmbus, iceoryx, redis, zeromq, uds: in specs and JSON
  std::string label;  // in tables
  bool built = false;
  std::string not_built;  // why, when not built: "libiceoryx-posh-dev missing"
  bool has_patterns = false;
  std::string (*version)() = nullptr;
  // Starts the server for the session; throws Failure naming what went wrong.
  std::unique_ptr<Server> (*start)(const Session&) = nullptr;
  // Runs spec.role in this (child) process.
  nlohmann::json (*run_child)(const ChildSpec&, ControlPage&) = nullptr;
};

// shmbus first, then the peers in the order of the tables.
const std::vector<System>& all_systems();
const System* find_system(const std::string& id);

// Each peer_*.cc that meson builds defines its entry.
System shmbus_system();
System iceoryx_system();
System redis_system();
System zeromq_system();
System uds_system();

// The start() of the server-less peers.
inline std::unique_ptr<Server> start_in_session_directory(const Session& session) {
  return std::make_unique<SessionDirectory>(session.dir);
}

}  // namespace shmbus::compare
