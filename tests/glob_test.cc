// Redis glob semantics, table-driven. Every row was checked against redis-server 7.0
// (KEYS uses the same stringmatchlen as PSUBSCRIBE); glob_redis_test re-checks thousands of
// random cases against a live server.
#include "glob.hpp"

#include <gtest/gtest.h>

#include <random>
#include <string>

namespace shmbus {
namespace {

struct Case {
  std::string pattern;
  std::string subject;
  bool matches;
};

class GlobTable : public ::testing::TestWithParam<Case> {};

TEST_P(GlobTable, MatchesLikeRedis) {
  const Case& c = GetParam();
  EXPECT_EQ(glob_match(c.pattern, c.subject), c.matches)
      << "pattern '" << c.pattern << "' subject '" << c.subject << "'";
}

INSTANTIATE_TEST_SUITE_P(
    Redis, GlobTable,
    ::testing::Values(
        // literals
        Case{"chat:42", "chat:42", true}, Case{"chat:42", "chat:4", false},
        Case{"chat:4", "chat:42", false}, Case{"", "", true}, Case{"", "a", false},
        Case{"a", "", false}, Case{"Chat", "chat", false},  // case-sensitive
        // *
        // stringmatchlen never enters its loop for an empty subject, so even "*" does not
        // match "" (KEYS special-cases a lone "*"; channel names are never empty here).
        Case{"*", "", false}, Case{"*", "anything", true}, Case{"user:*", "user:", true},
        Case{"user:*", "user:1:2", true}, Case{"news.*", "news.a.b", true},
        Case{"*:end", "a:b:end", true}, Case{"*:end", "a:b:ends", false},
        Case{"a*b*c", "abc", true}, Case{"a*b*c", "axxbyyc", true}, Case{"a*b*c", "axxbyy", false},
        Case{"a**b", "ab", true}, Case{"a***", "a", true}, Case{"**", "", false},
        // ?
        Case{"h?llo", "hello", true}, Case{"h?llo", "hllo", false}, Case{"?", "", false},
        Case{"??", "ab", true}, Case{"?*", "", false}, Case{"*?", "x", true},
        // sets
        Case{"h[ae]llo", "hello", true}, Case{"h[ae]llo", "hallo", true},
        Case{"h[ae]llo", "hillo", false}, Case{"h[^e]llo", "hallo", true},
        Case{"h[^e]llo", "hello", false}, Case{"h[a-b]llo", "hbllo", true},
        Case{"h[a-b]llo", "hcllo", false}, Case{"[z-a]", "m", true},  // reversed range is swapped
        Case{"[0-9][0-9]", "42", true}, Case{"[0-9]", "x", false},
        Case{"[\\]]", "]", true},  // escaped ] inside a set
        Case{"[\\-]", "-", true}, Case{"[a\\-z]", "b", false}, Case{"[a\\-z]", "-", true},
        Case{"[]a]", "a", false},                        // ']' right after '[' closes an empty set
        Case{"[]", "]", false}, Case{"[^]", "x", true},  // empty set, negated empty set
        Case{"[a-]", "_", true},  // Redis reads "a-]" as the range ]..a (swapped)
        Case{"[a-]", "b", false},
        Case{"[abc", "a", true},  // unterminated set ends at the pattern's end
        Case{"[abc", "d", false}, Case{"[", "a", false}, Case{"ab[", "ab", false},
        Case{"[^", "a", true},
        // escapes outside sets
        Case{"\\*", "*", true}, Case{"\\*", "a", false}, Case{"\\?", "?", true},
        Case{"a\\", "a\\", true},  // a trailing backslash is literal
        Case{"\\[a]", "[a]", true}, Case{"\\a", "a", true},
        // binary-safe, and Redis's signed-char ranges
        Case{std::string("a\0b", 3), std::string("a\0b", 3), true},
        Case{std::string("a?b", 3), std::string("a\0b", 3), true},
        Case{"[\x01-\x7f]", "\x80", false}, Case{"[\x80-\xff]", "\x90", true},
        // 'a'..(char)0xff is 97..-1, swapped to -1..97: holds 0x00 and '_', not 0x90 or 'b'.
        Case{"[a-\xff]", std::string(1, '\0'), true}, Case{"[a-\xff]", "\x90", false},
        Case{"[a-\xff]", "b", false}));

TEST(Glob, HostilePatternFinishesQuickly) {
  // Exponential for a naive matcher (CVE-2022-36021); linear-ish here.
  const std::string pattern = std::string(40, '*') + "a*" + std::string(40, 'a') + "*b";
  const std::string subject(5000, 'a');
  const std::string stars = std::string(60, 'a') + "*a*a*a*a*a*a*a*a*a*a*a*b";
  EXPECT_FALSE(glob_match(stars, subject));
  EXPECT_FALSE(glob_match(pattern, subject));
  EXPECT_LE(glob_match_steps(stars, subject), glob_match_work(stars, subject));
  EXPECT_LE(glob_match_steps(pattern, subject), glob_match_work(pattern, subject));
}

// The daemon matches one pattern against one name as one unit of its event loop's work
// (daemon/turn.hpp): the worst a channel name and a pattern of 1 KiB each can cost must stay
// O(pattern x name), the glob_match_work() the daemon charges for it.
TEST(Glob, WorstCaseIsBoundedByPatternTimesSubject) {
  // The daemon budgets glob work in glob_match_work() steps between looks at the clock
  // (turn.hpp), so that bound must hold for the shapes that cost the most. Steps, not time:
  // the time these take belongs in a benchmark.
  const std::string subject(1024, 'a');
  std::string stars_and_literals, literal_run = "*", set = "*[";
  while (stars_and_literals.size() < 1022) stars_and_literals += "*a";
  stars_and_literals += "b";
  literal_run += std::string(1021, 'a') + "b";  // almost matches at every start
  set += std::string(1019, 'x') + "]*b";        // a long set read at every start
  for (const std::string& pattern : {stars_and_literals, literal_run, set}) {
    ASSERT_LE(pattern.size(), 1024u);
    EXPECT_FALSE(glob_match(pattern, subject));
    const size_t steps = glob_match_steps(pattern, subject);
    EXPECT_LE(steps, glob_match_work(pattern, subject)) << pattern.substr(0, 8) << "...";
    // The two without a second star really walk quadratically: the bound is tested where
    // it bites (a star after a failed one gives up, so the first shape stays linear).
    if (pattern != stars_and_literals) {
      EXPECT_GT(steps, 500'000u) << pattern.substr(0, 8);
    }
  }
}

TEST(Glob, RandomPatternsStayWithinTheirWorkBound) {
  std::mt19937 random(12);
  const std::string alphabet = "ab*?[]^-\\";
  for (int i = 0; i < 20000; ++i) {
    std::string pattern, subject;
    const size_t pattern_size = random() % 40, subject_size = random() % 60;
    for (size_t k = 0; k < pattern_size; ++k) pattern += alphabet[random() % alphabet.size()];
    for (size_t k = 0; k < subject_size; ++k) subject += "ab-^"[random() % 4];
    ASSERT_LE(glob_match_steps(pattern, subject), glob_match_work(pattern, subject))
        << "pattern '" << pattern << "' subject '" << subject << "'";
  }
}

TEST(Glob, DeepNestingIsRefusedNotAStackOverflow) {
  // 5000 stars separated by literals nest 5000 deep; capped at 1000 like Redis.
  std::string pattern;
  for (int i = 0; i < 5000; ++i) pattern += "*a";
  EXPECT_FALSE(glob_match(pattern, std::string(6000, 'a')));
}

TEST(Glob, WildcardDetection) {
  EXPECT_FALSE(glob_has_wildcards("user:42"));
  EXPECT_TRUE(glob_has_wildcards("user:*"));
  EXPECT_TRUE(glob_has_wildcards("h?llo"));
  EXPECT_TRUE(glob_has_wildcards("h[ae]llo"));
  EXPECT_TRUE(glob_has_wildcards("a\\*"));
}

}  // namespace
}  // namespace shmbus
