#include "cluster_topology.hpp"

#include <charconv>
#include <stdexcept>

namespace shmbus::bridge {

namespace {

[[noreturn]] void malformed(const std::string& what) {
  throw std::runtime_error("malformed cluster topology reply: " + what);
}

std::string_view text_of(const redisReply* r, const char* what) {
  if (r == nullptr || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_STATUS))
    malformed(std::string(what) + " is not a string");
  return std::string_view(r->str, r->len);
}

// A number sent as an integer reply or as digits (CLUSTER SHARDS sends integers; some
// servers and proxies send strings), within [low, high].
long long number_of(const redisReply* r, long long low, long long high, const char* what) {
  long long value = 0;
  if (r != nullptr && r->type == REDIS_REPLY_INTEGER) {
    value = r->integer;
  } else {
    const std::string_view digits = text_of(r, what);
    const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (error != std::errc() || end != digits.data() + digits.size())
      malformed(std::string(what) + " is not a number");
  }
  if (value < low || value > high)
    malformed(std::string(what) + " " + std::to_string(value) + " is outside " +
              std::to_string(low) + ".." + std::to_string(high));
  return value;
}

const redisReply* array_of(const redisReply* r, const char* what) {
  if (r == nullptr || r->type != REDIS_REPLY_ARRAY)
    malformed(std::string(what) + " is not an array");
  return r;
}

SlotRange range_of(const redisReply* first, const redisReply* last) {
  SlotRange range{static_cast<uint16_t>(number_of(first, 0, kClusterSlots - 1, "slot")),
                  static_cast<uint16_t>(number_of(last, 0, kClusterSlots - 1, "slot"))};
  if (range.first > range.last) malformed("slot range ends before it starts");
  return range;
}

// One node of CLUSTER SHARDS: a flat array of field / value pairs. Fields it does not
// know are skipped, so newer servers' additions do no harm.
ClusterNode shards_node(const redisReply* r) {
  array_of(r, "node");
  if (r->elements % 2 != 0) malformed("node has an odd number of fields");
  ClusterNode node;
  std::string_view ip, endpoint, role;
  for (size_t i = 0; i < r->elements; i += 2) {
    const std::string_view field = text_of(r->element[i], "node field");
    const redisReply* value = r->element[i + 1];
    if (field == "id")
      node.id = text_of(value, "node id");
    else if (field == "port")
      node.port = static_cast<int>(number_of(value, 1, 65535, "port"));
    else if (field == "ip")
      ip = text_of(value, "ip");
    else if (field == "endpoint")
      endpoint = text_of(value, "endpoint");
    else if (field == "role")
      role = text_of(value, "role");
    else if (field == "health") {
      node.online = text_of(value, "health") == "online";
      node.failed = text_of(value, "health") == "fail";
    }
  }
  // "?" is a node whose preferred endpoint is unknown: its IP is the next best. Neither
  // known leaves the host empty: the node asked (discover_cluster fills it in).
  node.host = std::string(!endpoint.empty() && endpoint != "?" ? endpoint : ip);
  if (node.port == 0) malformed("node without a port");
  if (role != "master" && role != "replica") malformed("node role is neither master nor replica");
  node.primary = role == "master";
  return node;
}

// [host, port, id, metadata] of CLUSTER SLOTS. The host is "?" when the preferred endpoint
// is a hostname the node does not have, and nil for cluster-preferred-endpoint-type
// unknown-endpoint: then the metadata's "ip" if any, else empty (the node asked).
ClusterNode slots_node(const redisReply* r, bool primary) {
  array_of(r, "node");
  if (r->elements < 2) malformed("node without host and port");
  ClusterNode node;
  if (r->element[0] != nullptr && r->element[0]->type != REDIS_REPLY_NIL) {
    const std::string_view host = text_of(r->element[0], "host");
    if (host != "?") node.host = std::string(host);
  }
  node.port = static_cast<int>(number_of(r->element[1], 1, 65535, "port"));
  if (r->elements >= 3 && r->element[2] != nullptr && r->element[2]->type == REDIS_REPLY_STRING)
    node.id = std::string(text_of(r->element[2], "node id"));
  if (node.host.empty() && r->elements >= 4 && r->element[3] != nullptr &&
      r->element[3]->type == REDIS_REPLY_ARRAY) {
    const redisReply* metadata = r->element[3];
    for (size_t i = 0; i + 1 < metadata->elements; i += 2)
      if (text_of(metadata->element[i], "metadata field") == "ip")
        node.host = std::string(text_of(metadata->element[i + 1], "ip"));
  }
  node.primary = primary;
  return node;
}

}  // namespace

SlotMap::SlotMap() {
  owner_.fill(kUnserved);
}

SlotMap::SlotMap(std::vector<ClusterShard> shards) : shards_(std::move(shards)) {
  owner_.fill(kUnserved);
  if (shards_.size() >= kUnserved) malformed("more shards than slots");
  // A true map claims each slot once, so the claims add up to at most 16,384: more is a
  // malformed (or hostile) reply, refused before it costs a pass over the table per range.
  uint64_t claimed = 0;
  for (size_t index = 0; index < shards_.size(); ++index) {
    const ClusterShard& shard = shards_[index];
    if (!shard.slots.empty() && shard.primary.port == 0)
      malformed("a shard serving slots has no primary");
    for (const SlotRange& range : shard.slots) {
      if (range.first > range.last || range.last >= kClusterSlots)
        malformed("slot range " + std::to_string(range.first) + ".." + std::to_string(range.last) +
                  " is outside 0..16383 or ends before it starts");
      claimed += range.last - range.first + 1u;
      if (claimed > kClusterSlots) malformed("the shards claim more than 16384 slots");
      for (uint32_t slot = range.first; slot <= range.last; ++slot) {
        if (owner_[slot] != kUnserved)
          malformed("slot " + std::to_string(slot) + " is claimed twice");
        owner_[slot] = static_cast<uint16_t>(index);
      }
    }
  }
}

std::optional<size_t> SlotMap::shard_of(uint16_t slot) const {
  if (slot >= kClusterSlots || owner_[slot] == kUnserved) return std::nullopt;
  return owner_[slot];
}

uint32_t SlotMap::slots_served() const {
  uint32_t served = 0;
  for (const uint16_t owner : owner_) served += owner != kUnserved ? 1 : 0;
  return served;
}

SlotMap parse_cluster_shards(const redisReply* reply) {
  array_of(reply, "CLUSTER SHARDS reply");
  std::vector<ClusterShard> shards;
  for (size_t s = 0; s < reply->elements; ++s) {
    const redisReply* fields = array_of(reply->element[s], "shard");
    if (fields->elements % 2 != 0) malformed("shard has an odd number of fields");
    ClusterShard shard;
    bool have_primary = false;
    for (size_t i = 0; i < fields->elements; i += 2) {
      const std::string_view field = text_of(fields->element[i], "shard field");
      const redisReply* value = fields->element[i + 1];
      if (field == "slots") {
        array_of(value, "slots");
        if (value->elements % 2 != 0) malformed("slots has an odd number of bounds");
        for (size_t b = 0; b < value->elements; b += 2)
          shard.slots.push_back(range_of(value->element[b], value->element[b + 1]));
      } else if (field == "nodes") {
        array_of(value, "nodes");
        for (size_t n = 0; n < value->elements; ++n) {
          ClusterNode node = shards_node(value->element[n]);
          if (node.primary && !have_primary) {
            shard.primary = std::move(node);
            have_primary = true;
          } else if (node.primary) {
            // A failed primary lingers beside the one that replaced it: keep the online one.
            if (node.online && !shard.primary.online) shard.primary = std::move(node);
          } else {
            shard.replicas.push_back(std::move(node));
          }
        }
      }
    }
    // A shard with no slots (a primary just added, or one emptied by a reshard) serves
    // nothing and is left out.
    if (!shard.slots.empty()) {
      if (!have_primary) malformed("a shard serving slots has no primary");
      shards.push_back(std::move(shard));
    }
  }
  return SlotMap(std::move(shards));
}

SlotMap parse_cluster_slots(const redisReply* reply) {
  array_of(reply, "CLUSTER SLOTS reply");
  // CLUSTER SLOTS lists one entry per range; a shard with several ranges appears several
  // times, under the same primary.
  std::vector<ClusterShard> shards;
  for (size_t e = 0; e < reply->elements; ++e) {
    const redisReply* entry = array_of(reply->element[e], "slot range");
    if (entry->elements < 3) malformed("slot range without a primary");
    const SlotRange range = range_of(entry->element[0], entry->element[1]);
    ClusterNode primary = slots_node(entry->element[2], true);
    ClusterShard* shard = nullptr;
    // The same primary: by node id when the reply gives one (hosts may all read "?" or be
    // empty), else by address.
    for (ClusterShard& known : shards)
      if (primary.id.empty()
              ? known.primary.host == primary.host && known.primary.port == primary.port
              : known.primary.id == primary.id)
        shard = &known;
    if (shard == nullptr) {
      shard = &shards.emplace_back();
      shard->primary = std::move(primary);
      for (size_t r = 3; r < entry->elements; ++r)
        shard->replicas.push_back(slots_node(entry->element[r], false));
    }
    shard->slots.push_back(range);
  }
  return SlotMap(std::move(shards));
}

std::optional<Redirect> parse_redirect(std::string_view error) {
  Redirect redirect;
  if (error.starts_with("MOVED "))
    redirect.kind = Redirect::Kind::kMoved;
  else if (error.starts_with("ASK "))
    redirect.kind = Redirect::Kind::kAsk;
  else
    return std::nullopt;
  std::string_view rest = error.substr(error.find(' ') + 1);
  const size_t space = rest.find(' ');
  if (space == std::string_view::npos) return std::nullopt;
  unsigned slot = 0;
  const std::string_view slot_text = rest.substr(0, space);
  if (const auto [end, ec] =
          std::from_chars(slot_text.data(), slot_text.data() + slot_text.size(), slot);
      ec != std::errc() || end != slot_text.data() + slot_text.size() || slot >= kClusterSlots)
    return std::nullopt;
  redirect.slot = static_cast<uint16_t>(slot);
  const std::string_view address = rest.substr(space + 1);
  // host:port, split at the last colon (an IPv6 host holds colons of its own). An empty
  // host means "the node you asked" (cluster-preferred-endpoint-type unknown-endpoint).
  const size_t colon = address.rfind(':');
  if (colon == std::string_view::npos) return std::nullopt;
  const std::string_view port_text = address.substr(colon + 1);
  int port = 0;
  if (const auto [end, ec] =
          std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
      ec != std::errc() || end != port_text.data() + port_text.size() || port < 1 || port > 65535)
    return std::nullopt;
  const std::string_view host = address.substr(0, colon);
  if (host.find(' ') != std::string_view::npos) return std::nullopt;
  // "?": a hostname the node does not know; the caller fills it in as for an empty one.
  redirect.host = host == "?" ? std::string() : std::string(host);
  redirect.port = port;
  return redirect;
}

}  // namespace shmbus::bridge
