// Fuzz target: the control-protocol decoder, both directions, without a socket.
//
// Input: byte 0 picks how the rest is cut into chunks; the rest is a byte stream as recv()
// would return it. The stream goes through a FrameAssembler chunk by chunk (as the daemon's
// and the client's receive loops feed it), each body through Frame::parse, and each frame
// through the reader of its type (protocol_readers.hpp: the client's readers of replies and
// events, the daemon's readers of requests).
//
// A ProtocolError is the expected answer to garbage. Anything else is a bug: a crash, a
// sanitizer report, another exception, an allocation past libFuzzer's limit, a reader that
// misreads what it accepts (checked by writing back), or an assembler whose frames depend on
// how the stream was cut (checked against the same stream fed in one piece).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <vector>

#include "protocol.hpp"
#include "protocol_readers.hpp"

namespace {

using shmbus::protocol::Frame;
using shmbus::protocol::FrameAssembler;
using shmbus::protocol::ProtocolError;

struct Assembled {
  std::vector<std::vector<std::byte>> bodies;
  bool failed = false;  // the assembler threw (an announced length over the limit)
  bool empty = true;    // nothing left buffered at the end
};

// Parses one body the way a receive loop does, while the span is still the assembler's.
void read_body(std::span<const std::byte> body) {
  try {
    const Frame f = Frame::parse(body);
    (void)shmbus::protocol::type_name(f.type);  // also for types nobody defined
    if (!shmbus::fuzz::read_client_frame(f)) shmbus::fuzz::read_daemon_frame(f);
  } catch (const ProtocolError&) {
    // Where a real reader drops the connection. The next frame is still read: every frame
    // reaches its reader, not only those before the first bad one.
  }
}

// Feeds `stream` in chunks of the sizes `next_chunk` returns, taking whole bodies after each
// feed as the daemon's read_from() and the client's next_reply() do.
template <typename NextChunk>
Assembled assemble(std::span<const std::byte> stream, NextChunk next_chunk, bool read) {
  Assembled out;
  FrameAssembler in;
  try {
    while (!stream.empty()) {
      const size_t n = std::min(next_chunk(), stream.size());
      in.feed(stream.first(n));
      stream = stream.subspan(n);
      std::span<const std::byte> body;
      while (in.next(body)) {
        if (read) read_body(body);
        out.bodies.emplace_back(body.begin(), body.end());
      }
    }
  } catch (const ProtocolError&) {
    out.failed = true;
  }
  out.empty = in.empty();
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // Chunks of 1 to 2^(data[0] % 13) bytes, pseudo-random from data[0]: byte by byte (which
  // splits every length prefix), a few bytes, up to larger than most inputs.
  const uint32_t max_chunk = 1u << (data[0] % 13);
  uint32_t state = data[0];
  auto chunk = [&] {
    state = state * 1103515245u + 12345u;
    return size_t{1} + (state >> 8) % max_chunk;
  };
  const std::span<const std::byte> stream(reinterpret_cast<const std::byte*>(data + 1), size - 1);
  const Assembled chunked = assemble(stream, chunk, true);
  const Assembled whole = assemble(
      stream, [&] { return stream.size(); }, false);
  if (chunked.bodies != whole.bodies || chunked.failed != whole.failed ||
      chunked.empty != whole.empty) {
    std::fprintf(stderr,
                 "FrameAssembler: chunks of up to %u bytes gave %zu frames (failed %d, empty "
                 "%d), one feed gave %zu (failed %d, empty %d)\n",
                 max_chunk, chunked.bodies.size(), chunked.failed, chunked.empty,
                 whole.bodies.size(), whole.failed, whole.empty);
    std::abort();
  }
  return 0;
}
