#include "durable_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

namespace shmbus::bridge {
namespace {

std::string failure(const std::string& what, const std::string& file, int error) {
  return what + " " + file + ": " + std::strerror(error);
}

// Closes `fd` on every path out.
struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

std::string replace_file_durably(const std::string& path, std::string_view contents) {
  const std::string tmp = path + ".tmp";
  std::string error;
  {
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return failure("cannot create", tmp, errno);
    FdCloser closer{fd};
    for (size_t done = 0; done < contents.size() && error.empty();) {
      const ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0)
        error = failure("cannot write", tmp, n < 0 ? errno : ENOSPC);
      else
        done += static_cast<size_t>(n);
    }
    // The data reaches the disk before the rename makes it the file: otherwise a crash
    // right after the rename could leave an empty or partial file under the real name.
    if (error.empty() && ::fsync(fd) != 0) error = failure("cannot fsync", tmp, errno);
    if (::close(closer.fd) != 0 && error.empty()) error = failure("cannot close", tmp, errno);
    closer.fd = -1;
  }
  if (error.empty() && std::rename(tmp.c_str(), path.c_str()) != 0)
    error = failure("cannot rename " + tmp + " to", path, errno);
  if (!error.empty()) {
    ::unlink(tmp.c_str());
    return error;
  }
  // The rename is an update of the directory: fsync it too.
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return failure("cannot open the directory", dir, errno);
  FdCloser dir_closer{dir_fd};
  if (::fsync(dir_fd) != 0) return failure("cannot fsync the directory", dir, errno);
  return "";
}

}  // namespace shmbus::bridge
