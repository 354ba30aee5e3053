// A real Redis Cluster for tests: `primaries` primaries with `replicas` replicas each, every
// node a redis-server on free loopback ports (its client port and its cluster-bus port both
// chosen free, since the default bus port, client + 10000, may be taken or past 65535),
// joined by `redis-cli --cluster create`. About 2 s to be ready on 2 vCPUs (replicas sync
// at once: no diskless-sync delay, which is 5 s by default).
// Tests skip loudly when redis-server or redis-cli is missing (CI installs both).
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "redis_server.hpp"

namespace shmbus::test {

class RedisCluster {
 public:
  RedisCluster(int primaries, int replicas) {
    if (!find_redis_server()) {
      error_ = missing_ = "redis-server is not installed (apt-get install redis-server)";
      return;
    }
    for (const char* path : {"/usr/bin/redis-cli", "/usr/local/bin/redis-cli"})
      if (cli_.empty() && access(path, X_OK) == 0) cli_ = path;
    if (cli_.empty()) {
      error_ = missing_ = "redis-cli is not installed (apt-get install redis-tools)";
      return;
    }
    char dir[] = "/tmp/shmbus-cluster-XXXXXX";
    if (mkdtemp(dir) == nullptr) {
      error_ = "no temporary directory for the cluster's nodes";
      return;
    }
    dir_ = dir;
    const int count = primaries * (1 + replicas);
    std::string addresses;
    for (int i = 0; i < count; ++i) {
      const std::string node_dir = dir_ + "/node" + std::to_string(i);
      std::filesystem::create_directories(node_dir);
      // A fresh bus port on each try: one taken between its choice and the server's start
      // fails every retry RedisServer makes with it (those only change the client port).
      for (int attempt = 0; attempt < 3; ++attempt) {
        RedisServerOptions options;
        options.extra_args = {"--cluster-enabled",
                              "yes",
                              "--cluster-config-file",
                              "nodes.conf",
                              "--cluster-node-timeout",
                              "2000",
                              "--repl-diskless-sync-delay",
                              "0",
                              "--cluster-port",
                              std::to_string(free_loopback_port()),
                              "--dir",
                              node_dir,
                              "--logfile",
                              node_dir + "/log"};
        auto node = std::make_unique<RedisServer>(options);
        if (node->ok() || attempt == 2) {
          nodes_.push_back(std::move(node));
          break;
        }
      }
      if (!nodes_.back()->ok()) {
        error_ = "cluster node " + std::to_string(i) + ": " + nodes_.back()->error();
        return;
      }
      addresses += " 127.0.0.1:" + std::to_string(nodes_.back()->port());
    }
    // redis-cli assigns the first `primaries` addresses as primaries.
    const std::string create = cli_ + " --cluster create" + addresses + " --cluster-replicas " +
                               std::to_string(replicas) + " --cluster-yes > " + dir_ +
                               "/create.log 2>&1";
    if (std::system(create.c_str()) != 0) {
      std::ifstream log(dir_ + "/create.log");
      error_ = "redis-cli --cluster create failed: " +
               std::string(std::istreambuf_iterator<char>(log), {});
      return;
    }
    if (!wait_healthy(std::chrono::seconds(30)))
      error_ = "the cluster did not become healthy in 30 s";
  }
  ~RedisCluster() {
    nodes_.clear();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  RedisCluster(const RedisCluster&) = delete;
  RedisCluster& operator=(const RedisCluster&) = delete;

  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  // Set (and error() too) when redis-server or redis-cli is not installed: the one reason
  // for a test to skip rather than fail.
  const std::string& missing() const { return missing_; }
  size_t size() const { return nodes_.size(); }
  RedisServer& node(size_t i) { return *nodes_[i]; }

  // The node's cluster id (CLUSTER MYID), or "" if it does not answer.
  std::string node_id(size_t i) {
    redisReply* r = nodes_[i]->command("CLUSTER MYID");
    std::string id = r && r->type == REDIS_REPLY_STRING ? std::string(r->str, r->len) : "";
    if (r) freeReplyObject(r);
    return id;
  }

  // Moves `slot` from primary `from` to primary `to` as a reshard does: IMPORTING on the
  // target, MIGRATING on the source, its keys moved with MIGRATE, then NODE on every node.
  // False if a node refused a step.
  bool move_slot(uint16_t slot, size_t from, size_t to) {
    const std::string from_id = node_id(from), to_id = node_id(to);
    const std::string number = std::to_string(slot);
    const auto ok = [](redisReply* r) {
      const bool fine = r != nullptr && r->type == REDIS_REPLY_STATUS;
      if (r) freeReplyObject(r);
      return fine;
    };
    if (!ok(nodes_[to]->command("CLUSTER SETSLOT %s IMPORTING %s", number.c_str(),
                                from_id.c_str())) ||
        !ok(nodes_[from]->command("CLUSTER SETSLOT %s MIGRATING %s", number.c_str(),
                                  to_id.c_str())))
      return false;
    // The keys, a batch at a time, while clients are redirected with ASK.
    for (;;) {
      redisReply* keys = nodes_[from]->command("CLUSTER GETKEYSINSLOT %s 100", number.c_str());
      const bool none = keys == nullptr || keys->type != REDIS_REPLY_ARRAY || keys->elements == 0;
      bool moved = !none;
      for (size_t k = 0; !none && k < keys->elements; ++k) {
        const std::string key(keys->element[k]->str, keys->element[k]->len);
        moved = ok(nodes_[from]->command("MIGRATE 127.0.0.1 %d %b 0 5000", nodes_[to]->port(),
                                         key.data(), key.size())) &&
                moved;
      }
      if (keys) freeReplyObject(keys);
      if (none) break;
      if (!moved) return false;
    }
    // The target first, then the source (as redis-cli does), then everyone else.
    bool all = ok(nodes_[to]->command("CLUSTER SETSLOT %s NODE %s", number.c_str(), to_id.c_str()));
    all = ok(nodes_[from]->command("CLUSTER SETSLOT %s NODE %s", number.c_str(), to_id.c_str())) &&
          all;
    for (size_t i = 0; i < nodes_.size(); ++i) {
      if (i == from || i == to || !nodes_[i]->ok()) continue;
      // A replica refuses SETSLOT; it learns the move from its primary.
      redisReply* r =
          nodes_[i]->command("CLUSTER SETSLOT %s NODE %s", number.c_str(), to_id.c_str());
      if (r) freeReplyObject(r);
    }
    return all;
  }

  // True once every live node reports cluster_state:ok and every replica is linked to its
  // primary, within `limit`.
  bool wait_healthy(std::chrono::milliseconds limit) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < until) {
      if (healthy()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

 private:
  bool healthy() {
    for (auto& node : nodes_) {
      if (!node->ok()) continue;
      redisReply* info = node->command("CLUSTER INFO");
      const bool up =
          info != nullptr && info->type == REDIS_REPLY_STRING &&
          std::string_view(info->str, info->len).find("cluster_state:ok") != std::string_view::npos;
      if (info) freeReplyObject(info);
      if (!up) return false;
      // Gossip has reached this node: the shards that serve slots list every live node
      // (a node it has not yet learnt is a replica shows as a primary of no slots).
      redisReply* shards = node->command("CLUSTER SHARDS");
      const size_t listed = shards != nullptr ? nodes_in_serving_shards(shards) : 0;
      if (shards) freeReplyObject(shards);
      if (listed != live_nodes()) return false;
      // A replica counts once its link to its primary is up (ROLE: slave, host, port,
      // "connected", offset). CLUSTER SHARDS's health is no guide here: it says "loading"
      // while the replication offset is 0, which in an empty cluster lasts until the
      // primary's first replication ping (10 s).
      redisReply* role = node->command("ROLE");
      bool linked = false;
      if (role != nullptr && role->type == REDIS_REPLY_ARRAY && role->elements >= 1 &&
          role->element[0]->type == REDIS_REPLY_STRING) {
        const std::string_view kind(role->element[0]->str, role->element[0]->len);
        linked = kind == "master" ||
                 (kind == "slave" && role->elements >= 4 &&
                  role->element[3]->type == REDIS_REPLY_STRING &&
                  std::string_view(role->element[3]->str, role->element[3]->len) == "connected");
      }
      if (role) freeReplyObject(role);
      if (!linked) return false;
    }
    return true;
  }

  size_t live_nodes() const {
    size_t n = 0;
    for (const auto& node : nodes_) n += node->ok() ? 1 : 0;
    return n;
  }
  // The nodes CLUSTER SHARDS lists under shards that serve at least one slot.
  static size_t nodes_in_serving_shards(const redisReply* r) {
    if (r->type != REDIS_REPLY_ARRAY) return 0;
    size_t count = 0;
    for (size_t s = 0; s < r->elements; ++s) {
      const redisReply* shard = r->element[s];
      if (shard->type != REDIS_REPLY_ARRAY) continue;
      size_t slots = 0, nodes = 0;
      for (size_t i = 0; i + 1 < shard->elements; i += 2) {
        const redisReply* key = shard->element[i];
        if (key->type != REDIS_REPLY_STRING) continue;
        const std::string_view name(key->str, key->len);
        if (name == "slots") slots = shard->element[i + 1]->elements;
        if (name == "nodes") nodes = shard->element[i + 1]->elements;
      }
      if (slots > 0) count += nodes;
    }
    return count;
  }

  std::string dir_;
  std::string cli_;  // redis-cli's path
  std::vector<std::unique_ptr<RedisServer>> nodes_;
  std::string error_;
  std::string missing_;
};

}  // namespace shmbus::test
