// Differential test: our glob matcher against a live redis-server on thousands of random
// patterns and subjects drawn from the characters that matter (*, ?, [, ], ^, -, \, and
// bytes >= 0x80). KEYS uses the same stringmatchlen() as PSUBSCRIBE, except that a lone "*"
// is special-cased, so that pattern is left out.
#include <gtest/gtest.h>

#include <random>
#include <set>
#include <string>

#include "glob.hpp"
#include "redis_server.hpp"

namespace shmbus {
namespace {

std::string random_string(std::mt19937& rng, const std::string& alphabet, int max_length) {
  std::uniform_int_distribution<int> length(1, max_length);
  std::uniform_int_distribution<size_t> pick(0, alphabet.size() - 1);
  std::string s;
  for (int i = length(rng); i > 0; --i) s += alphabet[pick(rng)];
  return s;
}

TEST(GlobAgainstRedis, RandomPatternsMatchExactlyWhatKeysReturns) {
  test::RedisServer server;
  if (!server.ok()) GTEST_SKIP() << "SKIPPED: " << server.error();
  redisContext* c = server.connect();
  ASSERT_TRUE(c != nullptr && c->err == 0);

  std::mt19937 rng(20261123);
  const std::string subject_alphabet = std::string("ab-]^[\\*?\x80\xff", 11);
  const std::string pattern_alphabet = std::string("ab-]^[\\*?\x80\xff**??", 15);
  std::set<std::string> subjects;
  while (subjects.size() < 2000) subjects.insert(random_string(rng, subject_alphabet, 6));
  for (const auto& key : subjects) {
    auto* r = static_cast<redisReply*>(redisCommand(c, "SET %b 1", key.data(), key.size()));
    ASSERT_NE(r, nullptr);
    freeReplyObject(r);
  }
  int patterns_checked = 0;
  int patterns_matching_something = 0;
  for (int i = 0; i < 1500; ++i) {
    const std::string pattern = random_string(rng, pattern_alphabet, 7);
    if (pattern == "*") continue;
    auto* r = static_cast<redisReply*>(redisCommand(c, "KEYS %b", pattern.data(), pattern.size()));
    ASSERT_NE(r, nullptr);
    ASSERT_EQ(r->type, REDIS_REPLY_ARRAY);
    std::set<std::string> redis_says;
    for (size_t k = 0; k < r->elements; ++k)
      redis_says.emplace(r->element[k]->str, r->element[k]->len);
    freeReplyObject(r);
    std::set<std::string> we_say;
    for (const auto& key : subjects)
      if (glob_match(pattern, key)) we_say.insert(key);
    ASSERT_EQ(we_say, redis_says) << "pattern '" << pattern << "'";
    ++patterns_checked;
    if (!redis_says.empty()) ++patterns_matching_something;
  }
  redisFree(c);
  EXPECT_GT(patterns_checked, 1400);
  EXPECT_GT(patterns_matching_something, 300) << "the random cases should exercise matches too";
}

}  // namespace
}  // namespace shmbus
