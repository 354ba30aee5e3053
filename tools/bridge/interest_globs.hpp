// Reasoning about Redis globs for the bridge's interest (which Redis subscriptions local
// subscribers need): pure functions, conservative where globs are undecidable in general.
#pragma once

#include <string>
#include <string_view>

namespace shmbus::bridge {

// The glob metacharacters of Redis's stringmatchlen: * ? [ and the escape \.
bool is_glob_special(char c);

// The literal characters before the first metacharacter.
std::string_view literal_prefix(std::string_view glob);

// "chat:*": a literal prefix and one trailing star, matching exactly the names that start
// with the prefix.
bool is_prefix_form(std::string_view glob);

// True only when every name `inner` matches is provably matched by `outer`.
bool provably_contains(std::string_view outer, std::string_view inner);

// False only when no name can match both (their literal prefixes disagree).
bool may_overlap(std::string_view a, std::string_view b);

// `s` as a literal inside a Redis glob (a channel prefix, say).
std::string escape_glob(std::string_view s);

}  // namespace shmbus::bridge
