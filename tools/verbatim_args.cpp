#include "verbatim_args.hpp"

#include <cstdio>
#include <random>

namespace shmbus::cli {

namespace {

// The shape CLI11 rewrites (CLI::Option::_add_result): "[" ... "]".
bool rewritten_by_cli11(const std::string& argument) {
  return argument.size() >= 2 && argument.front() == '[' && argument.back() == ']';
}

}  // namespace

VerbatimArguments::VerbatimArguments(int argc, char** argv) {
  std::random_device entropy;
  char nonce[40];
  std::snprintf(nonce, sizeof nonce, "%08x%08x%08x", entropy(), entropy(), entropy());
  // Starts with a control byte and holds no bracket, comma or '=': CLI11 passes it as it is.
  nonce_ = std::string("\x1f") + "shmbus-verbatim-" + nonce + "-";
  for (int i = 0; i < argc; ++i) {
    std::string argument(argv[i]);
    if (i > 0 && rewritten_by_cli11(argument)) {
      originals_.push_back(std::move(argument));
      argument = nonce_ + std::to_string(originals_.size() - 1);
    }
    arguments_.push_back(std::move(argument));
  }
  for (std::string& argument : arguments_) pointers_.push_back(argument.data());
  pointers_.push_back(nullptr);
}

void VerbatimArguments::restore(std::string& value) const {
  if (value.compare(0, nonce_.size(), nonce_) != 0) return;
  const std::string index = value.substr(nonce_.size());
  if (index.empty() || index.find_first_not_of("0123456789") != std::string::npos) return;
  const size_t i = std::stoul(index);
  if (i < originals_.size()) value = originals_[i];
}

void VerbatimArguments::restore(std::vector<std::string>& values) const {
  for (std::string& value : values) restore(value);
}

}  // namespace shmbus::cli
