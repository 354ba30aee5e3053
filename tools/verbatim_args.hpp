// Command-line arguments that reach the commands byte for byte.
//
// CLI11 (2.1, Debian 12) reads an argument written "[a,b]" for a container option as the
// list a, b, and "[x]" as x. Channel names and patterns are any bytes, and brackets are
// what Redis glob patterns are made of ("h[ae]llo", "[^a]*"), so "shmbus sub -- '[x]'"
// subscribed to x. Every argument of that shape is swapped for a placeholder before
// parsing, and restore() puts the original back into whatever option received it.
//
// Thread safety: one per command line, used by one thread.
#pragma once

#include <string>
#include <vector>

namespace shmbus::cli {

class VerbatimArguments {
 public:
  VerbatimArguments(int argc, char** argv);
  VerbatimArguments(const VerbatimArguments&) = delete;
  VerbatimArguments& operator=(const VerbatimArguments&) = delete;

  // The command line to parse, placeholders in place of bracketed arguments.
  int argc() const { return static_cast<int>(pointers_.size()) - 1; }
  char** argv() { return pointers_.data(); }

  // Puts the original argument back where a placeholder was parsed.
  void restore(std::string& value) const;
  void restore(std::vector<std::string>& values) const;

 private:
  std::string nonce_;                   // makes a placeholder no argument spells by chance
  std::vector<std::string> originals_;  // by placeholder index
  std::vector<std::string> arguments_;
  std::vector<char*> pointers_;  // into arguments_, then a null
};

}  // namespace shmbus::cli
