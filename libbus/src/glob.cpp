#include "glob.hpp"

namespace shmbus {

namespace {

constexpr int kMaxNesting = 1000;

// Counts the pattern bytes a match reads, for glob_match_steps(); compiled away for
// glob_match().
struct NoSteps {
  void operator()() {}
};
struct CountSteps {
  size_t steps = 0;
  void operator()() { ++steps; }
};

// p/pn: pattern and bytes left; s/sn: subject and bytes left. `give_up` is set when a '*'
// has tried every start in the rest of the subject without success: no earlier '*' can do
// better by matching longer, so all callers stop.
template <typename Step>
bool match(const char* p, long pn, const char* s, long sn, bool& give_up, int nesting, Step& step) {
  if (nesting > kMaxNesting) return false;
  while (pn > 0 && sn > 0) {
    step();
    switch (p[0]) {
      case '*': {
        while (pn > 1 && p[1] == '*') {  // a run of stars is one star
          step();
          ++p;
          --pn;
        }
        if (pn == 1) return true;  // a trailing star matches whatever is left
        for (; sn > 0; ++s, --sn) {
          if (match(p + 1, pn - 1, s, sn, give_up, nesting + 1, step)) return true;
          if (give_up) return false;
        }
        give_up = true;
        return false;
      }
      case '?':
        ++s;
        --sn;
        break;
      case '[': {
        ++p;
        --pn;
        const bool negate = pn > 0 && p[0] == '^';
        if (negate) {
          ++p;
          --pn;
        }
        bool hit = false;
        for (;;) {
          step();
          if (pn >= 2 && p[0] == '\\') {
            ++p;
            --pn;
            if (p[0] == s[0]) hit = true;
          } else if (pn > 0 && p[0] == ']') {
            break;
          } else if (pn == 0) {
            // Unterminated set: step back so the increment after the switch lands on the
            // end of the pattern, as Redis does.
            --p;
            ++pn;
            break;
          } else if (pn >= 3 && p[1] == '-') {
            int low = static_cast<signed char>(p[0]);
            int high = static_cast<signed char>(p[2]);
            if (low > high) {
              const int swap = low;
              low = high;
              high = swap;
            }
            const int c = static_cast<signed char>(s[0]);
            p += 2;
            pn -= 2;
            if (c >= low && c <= high) hit = true;
          } else if (p[0] == s[0]) {
            hit = true;
          }
          ++p;
          --pn;
        }
        if (negate) hit = !hit;
        if (!hit) return false;
        ++s;
        --sn;
        break;
      }
      case '\\':
        if (pn >= 2) {
          ++p;
          --pn;
        }
        [[fallthrough]];
      default:
        if (p[0] != s[0]) return false;
        ++s;
        --sn;
        break;
    }
    ++p;
    --pn;
    if (sn == 0) {
      while (pn > 0 && p[0] == '*') {  // trailing stars match the empty rest
        step();
        ++p;
        --pn;
      }
      break;
    }
  }
  return pn == 0 && sn == 0;
}

}  // namespace

bool glob_match(std::string_view pattern, std::string_view subject) {
  bool give_up = false;
  NoSteps step;
  return match(pattern.data(), static_cast<long>(pattern.size()), subject.data(),
               static_cast<long>(subject.size()), give_up, 0, step);
}

size_t glob_match_steps(std::string_view pattern, std::string_view subject) {
  bool give_up = false;
  CountSteps step;
  match(pattern.data(), static_cast<long>(pattern.size()), subject.data(),
        static_cast<long>(subject.size()), give_up, 0, step);
  return step.steps;
}

bool glob_has_wildcards(std::string_view pattern) {
  return pattern.find_first_of("*?[\\") != std::string_view::npos;
}

}  // namespace shmbus
