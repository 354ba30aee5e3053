// main() for a fuzz target built without libFuzzer (g++, the normal and sanitizer builds):
// runs LLVMFuzzerTestOneInput once on every file of the directories (or on the files) named
// on the command line, so the stored corpus is replayed as an ordinary test and a crash it
// once found stays fixed. Fails if a named directory holds no file: a replay of nothing
// would pass whatever the code does.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int* argc, char*** argv);

namespace fs = std::filesystem;

namespace {

std::vector<uint8_t> read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    std::exit(1);
  }
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void run(const fs::path& path) {
  const std::vector<uint8_t> bytes = read_file(path);
  // An exactly sized copy, as libFuzzer passes it, so reading one byte past the end is an
  // AddressSanitizer report rather than a read of the vector's spare capacity.
  const auto copy = std::make_unique<uint8_t[]>(bytes.size());
  std::copy(bytes.begin(), bytes.end(), copy.get());
  LLVMFuzzerTestOneInput(copy.get(), bytes.size());
}

}  // namespace

int main(int argc, char** argv) {
  if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
    return 1;
  }
  const auto start = std::chrono::steady_clock::now();
  size_t total = 0;
  for (int i = 1; i < argc; ++i) {
    const fs::path arg(argv[i]);
    if (!fs::is_directory(arg)) {
      run(arg);
      ++total;
      continue;
    }
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(arg))
      if (entry.is_regular_file()) files.push_back(entry.path());
    if (files.empty()) {
      std::fprintf(stderr, "%s holds no inputs\n", arg.c_str());
      return 1;
    }
    std::sort(files.begin(), files.end());  // the same order on every run
    for (const auto& file : files) run(file);
    std::printf("%s: %zu inputs\n", arg.c_str(), files.size());
    total += files.size();
  }
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - start);
  std::printf("ran %zu inputs in %lld ms without a failure\n", total,
              static_cast<long long>(ms.count()));
  return 0;
}
