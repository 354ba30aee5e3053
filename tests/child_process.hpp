// Test code run in a child process of its own, for tests of what happens across processes
// (crashes, restarts, several clients at once).
#pragma once

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <exception>

namespace shmbus::test {

// Forks a child that runs `fn` and exits with its return value (or 99 on an exception).
template <typename Fn>
pid_t spawn(Fn&& fn) {
  const pid_t pid = fork();
  if (pid == 0) {
    int code = 99;
    try {
      code = fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
    }
    _exit(code);
  }
  return pid;
}

// Waits for a child; its exit code, or 128 + the signal that ended it.
inline int wait_exit(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace shmbus::test
