#include "interest_globs.hpp"

namespace shmbus::bridge {

bool is_glob_special(char c) {
  return c == '*' || c == '?' || c == '[' || c == '\\';
}

std::string_view literal_prefix(std::string_view glob) {
  size_t i = 0;
  while (i < glob.size() && !is_glob_special(glob[i])) ++i;
  return glob.substr(0, i);
}

// "chat:*": a literal prefix and one trailing star, matching exactly the names that start
// with the prefix.
bool is_prefix_form(std::string_view glob) {
  const auto prefix = literal_prefix(glob);
  return glob.size() == prefix.size() + 1 && glob.back() == '*';
}

// True only when every name `inner` matches is provably matched by `outer`.
bool provably_contains(std::string_view outer, std::string_view inner) {
  if (outer == inner) return true;
  return is_prefix_form(outer) && literal_prefix(inner).starts_with(literal_prefix(outer));
}

// False only when no name can match both (their literal prefixes disagree).
bool may_overlap(std::string_view a, std::string_view b) {
  const auto pa = literal_prefix(a), pb = literal_prefix(b);
  return pa.starts_with(pb) || pb.starts_with(pa);
}

// The Redis prefix as a literal inside a Redis glob.
std::string escape_glob(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (is_glob_special(c) || c == ']') out += '\\';
    out += c;
  }
  return out;
}

}  // namespace shmbus::bridge
