// Throwaway users and groups for tests of what the kernel lets each user do, and a way to run
// code as one of them in a child process. Creating them needs root: tests skip, saying so,
// without it (CI runs as root, so nothing skips there).
#pragma once

#include <grp.h>
#include <pwd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>

namespace shmbus::test {

// The users and groups every test program may use; created once, left in place (a later run
// finds them there).
inline constexpr const char* kPublisherUser = "shmbus-t-pub";
inline constexpr const char* kReaderUser = "shmbus-t-sub";      // in kReadersGroup
inline constexpr const char* kStrangerUser = "shmbus-t-other";  // in no group of ours
inline constexpr const char* kReadersGroup = "shmbus-t-readers";

// True once the users and the group exist (creating them as root); false without root.
inline bool make_throwaway_users() {
  static const bool made = [] {
    if (geteuid() != 0) return false;
    auto run = [](const std::string& command) {
      return std::system((command + " >/dev/null 2>&1").c_str()) == 0;
    };
    run(std::string("groupadd -r ") + kReadersGroup);
    for (const char* user : {kPublisherUser, kReaderUser, kStrangerUser})
      run(std::string("useradd -r -M -s /usr/sbin/nologin ") + user);
    run(std::string("usermod -a -G ") + kReadersGroup + " " + kReaderUser);
    return getpwnam(kPublisherUser) && getpwnam(kReaderUser) && getpwnam(kStrangerUser) &&
           getgrnam(kReadersGroup);
  }();
  return made;
}

inline uint32_t uid_of(const char* user) {
  return getpwnam(user)->pw_uid;
}
inline uint32_t gid_of(const char* group) {
  return getgrnam(group)->gr_gid;
}

// A child process that runs `fn` once `become` has switched it to another user (false if it
// could not: `who` names the user in the report). Its report is "" for success, else what
// failed. Switching users needs root.
class AsUser {
 public:
  AsUser(const std::string& who, const std::function<bool()>& become,
         const std::function<std::string()>& fn) {
    int report[2];
    if (pipe(report) != 0) throw std::runtime_error("pipe failed");
    pid_ = fork();
    if (pid_ == 0) {
      close(report[0]);
      std::string failure;
      if (!become()) {
        failure = "cannot become " + who;
      } else {
        try {
          failure = fn();
        } catch (const std::exception& e) {
          failure = std::string("exception: ") + e.what();
        }
      }
      if (!failure.empty()) [[maybe_unused]]
        auto n = write(report[1], failure.data(), failure.size());
      _exit(failure.empty() ? 0 : 1);
    }
    close(report[1]);
    report_ = report[0];
  }
  // As the throwaway user `user`, with its groups.
  AsUser(const char* user, const std::function<std::string()>& fn)
      : AsUser(
            user,
            [user] {
              const passwd* pw = getpwnam(user);
              return pw != nullptr && initgroups(user, pw->pw_gid) == 0 &&
                     setgid(pw->pw_gid) == 0 && setuid(pw->pw_uid) == 0;
            },
            fn) {}
  AsUser(const AsUser&) = delete;
  AsUser& operator=(const AsUser&) = delete;
  ~AsUser() {
    if (report_ >= 0) (void)result();
  }

  // Waits for the child; its report, or how it died.
  std::string result() {
    std::string message;
    char buffer[512];
    for (ssize_t n; (n = read(report_, buffer, sizeof buffer)) > 0;) message.append(buffer, n);
    close(report_);
    report_ = -1;
    int status = 0;
    waitpid(pid_, &status, 0);
    if (WIFSIGNALED(status)) return "child killed by signal " + std::to_string(WTERMSIG(status));
    if (WEXITSTATUS(status) != 0 && message.empty()) return "child failed";
    return message;
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int report_ = -1;
};

// Runs `fn` as `user` in a child and waits: "" for success, else what failed.
inline std::string as_user(const char* user, const std::function<std::string()>& fn) {
  return AsUser(user, fn).result();
}

// The same with a `become` of the caller's (e.g. a bare uid without an account).
inline std::string in_child_as(const std::string& who, const std::function<bool()>& become,
                               const std::function<std::string()>& fn) {
  return AsUser(who, become, fn).result();
}

}  // namespace shmbus::test
