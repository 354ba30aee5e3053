#include "pattern_adverts.hpp"

#include <algorithm>

#include "glob.hpp"
#include "key_slot.hpp"
#include "state_file.hpp"

namespace shmbus::bridge {

namespace {

constexpr std::string_view kFormat = "shmbus-interest";
constexpr std::string_view kVersion = "1";

// The next space-separated word of `rest`, taken off it; empty at the end.
std::string_view next_word(std::string_view& rest) {
  const size_t end = std::min(rest.find(' '), rest.size());
  const std::string_view word = rest.substr(0, end);
  rest.remove_prefix(std::min(end + 1, rest.size()));
  return word;
}

}  // namespace

std::string encode_advert(const PatternAdvert& advert) {
  std::string out(kFormat);
  out += ' ';
  out += kVersion;
  out += ' ' + std::to_string(advert.host_id) + ' ' + std::to_string(advert.generation) + ' ' +
         (advert.hello ? "1" : "0");
  for (const std::string& glob : advert.globs) out += ' ' + to_hex(glob);
  return out;
}

std::optional<PatternAdvert> decode_advert(std::string_view payload, std::string& why) {
  std::string_view rest = payload;
  if (next_word(rest) != kFormat) {
    why = "not a shmbus interest advertisement";
    return std::nullopt;
  }
  if (next_word(rest) != kVersion) {
    why = "an interest advertisement of another version (this bridge reads version 1)";
    return std::nullopt;
  }
  PatternAdvert advert;
  uint64_t host = 0;
  if (!number(next_word(rest), host) || host == 0 || host > 65534) {
    why = "an interest advertisement without a host id in 1..65534";
    return std::nullopt;
  }
  advert.host_id = static_cast<uint16_t>(host);
  if (!number(next_word(rest), advert.generation)) {
    why = "an interest advertisement without a generation";
    return std::nullopt;
  }
  const std::string_view hello = next_word(rest);
  if (hello != "0" && hello != "1") {
    why = "an interest advertisement whose hello flag is neither 0 nor 1";
    return std::nullopt;
  }
  advert.hello = hello == "1";
  while (!rest.empty()) {
    if (advert.globs.size() == kMaxAdvertGlobs) {
      why = "an interest advertisement of more than " + std::to_string(kMaxAdvertGlobs) + " globs";
      return std::nullopt;
    }
    const std::string_view hex = next_word(rest);
    auto glob = from_hex(hex);
    if (!glob || glob->size() > kMaxAdvertGlobBytes) {
      why = "an interest advertisement with a glob that is not 1 to " +
            std::to_string(kMaxAdvertGlobBytes) + " bytes in lowercase hex";
      return std::nullopt;
    }
    advert.globs.push_back(std::move(*glob));
  }
  std::sort(advert.globs.begin(), advert.globs.end());
  advert.globs.erase(std::unique(advert.globs.begin(), advert.globs.end()), advert.globs.end());
  return advert;
}

bool RemoteInterest::take(const PatternAdvert& advert, Clock::time_point now) {
  if (advert.host_id == own_host_id_) return false;
  auto [it, fresh] = hosts_.try_emplace(advert.host_id);
  Host& host = it->second;
  if (!fresh && advert.generation <= host.generation) {
    if (advert.generation == host.generation) host.heard = now;  // a repeat: still there
    return false;
  }
  forget(host);
  host.generation = advert.generation;
  host.globs = advert.globs;
  host.heard = now;
  for (const std::string& glob : host.globs) ++globs_[glob];
  changed();
  return true;
}

void RemoteInterest::expire(Clock::time_point before) {
  for (auto it = hosts_.begin(); it != hosts_.end();) {
    if (it->second.heard >= before) {
      ++it;
      continue;
    }
    forget(it->second);
    it = hosts_.erase(it);
    changed();
  }
}

void RemoteInterest::forget(const Host& host) {
  for (const std::string& glob : host.globs) {
    auto it = globs_.find(glob);
    if (it != globs_.end() && --it->second == 0) globs_.erase(it);
  }
}

const std::vector<std::string_view>& RemoteInterest::matching(std::string_view channel) {
  if (auto known = matches_.find(channel); known != matches_.end()) return known->second;
  if (matches_.size() >= kMaxCachedChannels) matches_.clear();
  std::vector<std::string_view> found;
  for (const auto& [glob, hosts] : globs_)
    if (glob_match(glob, channel)) found.push_back(glob);
  return matches_.emplace(std::string(channel), std::move(found)).first->second;
}

uint32_t pattern_partition(std::string_view channel) {
  return key_slot(channel) % kPatternPartitions;
}

std::string partition_channel(std::string_view prefix, std::string_view glob, uint32_t k) {
  return std::string(prefix) + "__shmbus:p:{" + to_hex(glob) + "#" + std::to_string(k) + "}";
}

}  // namespace shmbus::bridge
