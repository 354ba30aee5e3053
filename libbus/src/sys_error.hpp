// One place that turns a failed system call into an exception carrying errno and context,
// so every setup-path error names what was attempted ("posix_fallocate 1048576 bytes in
// shmbus.default.0: No space left on device").
// Hot paths never throw: they return a Status (status.hpp).
#pragma once

#include <cerrno>
#include <string>
#include <system_error>

namespace shmbus {

[[noreturn]] inline void throw_sys_error(int err, const std::string& context) {
  throw std::system_error(err, std::generic_category(), context);
}

// Calls `fn`; retries on EINTR; throws with `context` if it returns -1.
template <typename Fn>
auto check_sys(Fn&& fn, const std::string& context) {
  for (;;) {
    auto result = fn();
    if (result != -1) return result;
    if (errno != EINTR) throw_sys_error(errno, context);
  }
}

}  // namespace shmbus
