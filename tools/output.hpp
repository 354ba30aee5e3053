// Output and process plumbing shared by the shmbus subcommands: redis-cli style replies,
// byte escaping, JSON lines, and a stop flag for SIGINT / SIGTERM.
#pragma once

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>

namespace shmbus::cli {

// ordered_json keeps keys in the order the code adds them, so output reads naturally and
// scripts can rely on a stable layout.
using Json = nlohmann::ordered_json;

// How results are printed, chosen once from the command line and isatty(stdout).
enum class OutputStyle {
  kTty,   // redis-cli's interactive form: numbered, quoted, escaped
  kRaw,   // redis-cli --raw: one element per line, bytes as they are
  kJson,  // machine output
};

// One element of a redis-style reply.
struct ReplyElement {
  enum class Kind { kBulk, kInteger };
  Kind kind = Kind::kBulk;
  std::string_view text;  // kBulk
  uint64_t number = 0;    // kInteger

  static ReplyElement bulk(std::string_view text) { return {Kind::kBulk, text, 0}; }
  static ReplyElement integer(uint64_t number) { return {Kind::kInteger, {}, number}; }
};

// redis-cli's quoted form of a binary string ("a\nb\x00"): one line whatever the bytes are.
std::string quoted(std::string_view bytes);
// The same escaping without the surrounding quotes, for table cells.
std::string escaped(std::string_view bytes);

// A reply as redis-cli prints it: kTty "1) \"a\"\n2) (integer) 3\n" (indexes right-aligned,
// "(empty array)" when empty), kRaw "a\n3\n". Not for kJson.
std::string format_array(std::span<const ReplyElement> elements, OutputStyle style);
std::string format_integer(uint64_t number, OutputStyle style);

bool is_valid_utf8(std::string_view bytes);
std::string base64(std::string_view bytes);
// Sets j[key] to `bytes` if they are UTF-8, else j[key + "_base64"] to their base64: JSON
// carries every byte either way.
void put_bytes(Json& j, const std::string& key, std::string_view bytes);
// One JSON document and a newline. Invalid UTF-8 in names becomes U+FFFD instead of throwing:
// names are binary-safe, and a listing must not fail because of one odd name.
std::string json_line(const Json& value);

// Writes to stdout; flush_stdout() throws std::runtime_error when the writes failed (a full
// disk, a closed pipe with SIGPIPE ignored), so the failure reaches the user as one line.
void write_stdout(std::string_view text);
void flush_stdout();

// SIGINT / SIGTERM set a flag instead of killing the process, so long-running commands
// leave their loop and exit 0 with their connections closed properly.
void install_stop_handlers();
bool stop_requested();
// Sleeps until `deadline` in short slices, returning early once a stop is requested
// (std::this_thread::sleep_for resumes after a signal, so it cannot be used directly).
void sleep_until_or_stopped(std::chrono::steady_clock::time_point deadline);

// "3s ago", "250ms ago", "2h ago"; "never" for 0.
std::string age_since(uint64_t unix_ns, uint64_t now_unix_ns);
// "64 KiB", "1.5 MiB", "512 B".
std::string human_bytes(uint64_t bytes);
uint64_t unix_now_ns();

}  // namespace shmbus::cli
