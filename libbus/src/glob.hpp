// Channel-pattern matching with exactly the rules of Redis's stringmatchlen() (src/util.c,
// 7.x), as PSUBSCRIBE uses it (case-sensitive):
//   *      any run of bytes, including none; no notion of separators (news.* matches news.a.b)
//   ?      exactly one byte
//   [abc]  one byte of the set; [^abc] one byte not in it; [a-z] a range, [z-a] the same
//          range; inside brackets \x is a literal x; an unterminated [ ends at the pattern's end
//   \x     a literal x outside brackets
// Bytes are compared as Redis compares them: as (signed) char, which matters only for ranges
// with bytes >= 0x80. Recursion is capped at 1000 levels (CVE-2024-31228) and a failed '*'
// stops earlier stars from retrying longer matches (CVE-2022-36021): Redis's two protections.
// With them a '*' tries each start in the subject at most once, so a match costs at most
// O(pattern x subject) steps - the worst shapes ('*' then a long literal run or a long set
// that almost matches everywhere) take about 1 ms for 1 KiB x 1 KiB on a 2-vCPU machine. The
// daemon charges a match glob_match_work() between its looks at the clock (turn.hpp).
//
// Thread safety: pure functions.
#pragma once

#include <cstddef>
#include <string_view>

namespace shmbus {

bool glob_match(std::string_view pattern, std::string_view subject);

// An upper bound on the steps glob_match(pattern, subject) takes (see above), for callers
// that budget their time in steps rather than reading the clock after every match.
constexpr size_t glob_match_work(std::string_view pattern, std::string_view subject) {
  return (pattern.size() + 1) * (subject.size() + 1);
}

// The pattern bytes glob_match(pattern, subject) actually reads: what tests hold to
// glob_match_work(), with no clock involved.
size_t glob_match_steps(std::string_view pattern, std::string_view subject);

// True if `pattern` contains a glob special character, i.e. it can match more than itself.
bool glob_has_wildcards(std::string_view pattern);

}  // namespace shmbus
