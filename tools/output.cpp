#include "output.hpp"

#include <signal.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <thread>

namespace shmbus::cli {

namespace {

volatile std::sig_atomic_t g_stop_requested = 0;

void on_stop_signal(int) {
  g_stop_requested = 1;
}

void append_escaped(std::string& out, std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (const char ch : bytes) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '"': out += "\\\""; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\a': out += "\\a"; break;
      case '\b': out += "\\b"; break;
      default:
        // Like redis-cli in the C locale: printable ASCII as is, every other byte as \xNN.
        if (c >= 0x20 && c < 0x7f) {
          out += ch;
        } else {
          out += "\\x";
          out += kHex[c >> 4];
          out += kHex[c & 15];
        }
    }
  }
}

std::string format_element(const ReplyElement& e, OutputStyle style) {
  if (e.kind == ReplyElement::Kind::kInteger) return format_integer(e.number, style);
  return (style == OutputStyle::kTty ? quoted(e.text) : std::string(e.text)) + '\n';
}

}  // namespace

std::string quoted(std::string_view bytes) {
  std::string out = "\"";
  append_escaped(out, bytes);
  out += '"';
  return out;
}

std::string escaped(std::string_view bytes) {
  std::string out;
  append_escaped(out, bytes);
  return out;
}

std::string format_integer(uint64_t number, OutputStyle style) {
  return (style == OutputStyle::kTty ? "(integer) " : "") + std::to_string(number) + '\n';
}

std::string format_array(std::span<const ReplyElement> elements, OutputStyle style) {
  if (style != OutputStyle::kTty) {
    // redis-cli ends every raw reply with a newline, so an empty array is one empty line.
    if (elements.empty()) return "\n";
    std::string out;
    for (const auto& e : elements) out += format_element(e, style);
    return out;
  }
  if (elements.empty()) return "(empty array)\n";
  const size_t index_width = std::to_string(elements.size()).size();
  std::string out;
  for (size_t i = 0; i < elements.size(); ++i) {
    const std::string index = std::to_string(i + 1);
    out.append(index_width - index.size(), ' ');
    out += index;
    out += ") ";
    out += format_element(elements[i], style);
  }
  return out;
}

bool is_valid_utf8(std::string_view bytes) {
  size_t i = 0;
  while (i < bytes.size()) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t length;
    uint32_t code_point;
    if ((c & 0xe0) == 0xc0) {
      length = 2;
      code_point = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      length = 3;
      code_point = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      length = 4;
      code_point = c & 0x07;
    } else {
      return false;
    }
    if (i + length > bytes.size()) return false;
    for (size_t k = 1; k < length; ++k) {
      const auto cc = static_cast<unsigned char>(bytes[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      code_point = (code_point << 6) | (cc & 0x3f);
    }
    // Overlong forms, UTF-16 surrogates and values past U+10FFFF are not UTF-8 (RFC 3629).
    static constexpr uint32_t kSmallestOfLength[] = {0, 0, 0x80, 0x800, 0x10000};
    if (code_point < kSmallestOfLength[length] || code_point > 0x10ffff ||
        (code_point >= 0xd800 && code_point <= 0xdfff))
      return false;
    i += length;
  }
  return true;
}

std::string base64(std::string_view bytes) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const uint32_t n = static_cast<uint32_t>(static_cast<unsigned char>(bytes[i])) << 16 |
                       static_cast<uint32_t>(static_cast<unsigned char>(bytes[i + 1])) << 8 |
                       static_cast<unsigned char>(bytes[i + 2]);
    out += kAlphabet[n >> 18];
    out += kAlphabet[(n >> 12) & 63];
    out += kAlphabet[(n >> 6) & 63];
    out += kAlphabet[n & 63];
  }
  const size_t rest = bytes.size() - i;
  if (rest > 0) {
    uint32_t n = static_cast<uint32_t>(static_cast<unsigned char>(bytes[i])) << 16;
    if (rest == 2) n |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[i + 1])) << 8;
    out += kAlphabet[n >> 18];
    out += kAlphabet[(n >> 12) & 63];
    out += rest == 2 ? kAlphabet[(n >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

void put_bytes(Json& j, const std::string& key, std::string_view bytes) {
  if (is_valid_utf8(bytes))
    j[key] = std::string(bytes);
  else
    j[key + "_base64"] = base64(bytes);
}

std::string json_line(const Json& value) {
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + '\n';
}

void write_stdout(std::string_view text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
}

void flush_stdout() {
  if (std::fflush(stdout) != 0 || std::ferror(stdout))
    throw std::runtime_error(std::string("cannot write to stdout: ") + std::strerror(errno));
}

void install_stop_handlers() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  // A second Ctrl-C kills at once, for when the orderly exit hangs.
  action.sa_flags = SA_RESETHAND;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

bool stop_requested() {
  return g_stop_requested != 0;
}

void sleep_until_or_stopped(std::chrono::steady_clock::time_point deadline) {
  constexpr auto kSlice = std::chrono::milliseconds(50);
  while (!stop_requested()) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return;
    std::this_thread::sleep_for(
        std::min<std::chrono::steady_clock::duration>(deadline - now, kSlice));
  }
}

std::string age_since(uint64_t unix_ns, uint64_t now_unix_ns) {
  if (unix_ns == 0) return "never";
  if (unix_ns >= now_unix_ns) return "now";
  const uint64_t ms = (now_unix_ns - unix_ns) / 1'000'000;
  if (ms < 1000) return std::to_string(ms) + "ms ago";
  const uint64_t s = ms / 1000;
  if (s < 120) return std::to_string(s) + "s ago";
  if (s < 2 * 3600) return std::to_string(s / 60) + "m ago";
  if (s < 2 * 86400) return std::to_string(s / 3600) + "h ago";
  return std::to_string(s / 86400) + "d ago";
}

std::string human_bytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double value = static_cast<double>(bytes);
  size_t unit = 0;
  while (value >= 1024 && unit + 1 < std::size(kUnits)) {
    value /= 1024;
    ++unit;
  }
  char text[32];
  if (unit == 0 || value == static_cast<double>(static_cast<uint64_t>(value)))
    std::snprintf(text, sizeof(text), "%.0f %s", value, kUnits[unit]);
  else
    std::snprintf(text, sizeof(text), "%.1f %s", value, kUnits[unit]);
  return text;
}

uint64_t unix_now_ns() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace shmbus::cli
