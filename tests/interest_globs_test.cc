// The bridge's glob reasoning (tools/bridge/interest_globs.hpp) without Redis: the examples
// it must get right, and its two promises checked against the real matcher over many
// names: provably_contains never claims a containment that a name breaks, and may_overlap
// never denies an overlap that a name shows.
#include "interest_globs.hpp"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "glob.hpp"

namespace shmbus::bridge {
namespace {

TEST(InterestGlobs, Examples) {
  EXPECT_EQ(literal_prefix("chat:*"), "chat:");
  EXPECT_EQ(literal_prefix("a\\*b"), "a");
  EXPECT_EQ(literal_prefix("plain"), "plain");
  EXPECT_TRUE(is_prefix_form("chat:*"));
  EXPECT_TRUE(is_prefix_form("*"));
  EXPECT_FALSE(is_prefix_form("chat:*x"));
  EXPECT_FALSE(is_prefix_form("chat:?"));
  EXPECT_FALSE(is_prefix_form("chat:**"));
  EXPECT_TRUE(provably_contains("chat:*", "chat:1"));
  EXPECT_TRUE(provably_contains("chat:*", "chat:[ab]*"));
  EXPECT_TRUE(provably_contains("a?", "a?"));
  EXPECT_FALSE(provably_contains("chat:1*", "chat:*"));
  EXPECT_FALSE(provably_contains("chat:?", "chat:1"));  // true in fact, but not provable here
  EXPECT_FALSE(may_overlap("chat:*", "news:*"));
  EXPECT_TRUE(may_overlap("chat:*", "ch*"));
  EXPECT_TRUE(may_overlap("*", "anything"));
  EXPECT_EQ(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
  EXPECT_TRUE(glob_match(escape_glob("a*b?[c]\\") + "*", "a*b?[c]\\tail"));
}

TEST(InterestGlobs, PromisesHoldAgainstTheMatcher) {
  const std::vector<std::string> globs = {"*",      "a*",  "ab*", "a?",   "a?c",   "[ab]*",
                                          "a[bc]*", "b*",  "abc", "a\\*", "*c",    "a*c",
                                          "ab?*",   "?b*", "ac*", "a",    "[^a]*", "a[!b]c"};
  std::mt19937 random(7);
  const std::string alphabet = "abc*";
  std::vector<std::string> names;
  for (int i = 0; i < 3000; ++i) {
    std::string name;
    for (size_t n = random() % 5; n > 0; --n) name += alphabet[random() % alphabet.size()];
    names.push_back(name);
  }
  for (const std::string& outer : globs) {
    for (const std::string& inner : globs) {
      for (const std::string& name : names) {
        if (provably_contains(outer, inner) && glob_match(inner, name)) {
          ASSERT_TRUE(glob_match(outer, name))
              << outer << " claimed to contain " << inner << ", but not " << name;
        }
        if (!may_overlap(outer, inner)) {
          ASSERT_FALSE(glob_match(outer, name) && glob_match(inner, name))
              << outer << " and " << inner << " said disjoint, but both match " << name;
        }
      }
    }
  }
}

}  // namespace
}  // namespace shmbus::bridge
