#include "arena.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <utility>

#include "naming.hpp"
#include "sys_error.hpp"

namespace shmbus {

namespace {

// Seals every arena carries: nobody, the owner included, can change its size, so no client
// holding a writable descriptor can truncate it under the others' mappings (a SIGBUS in
// every process that touches a page past the new end). F_SEAL_SEAL: the set is final.
constexpr int kArenaSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

uint64_t unix_now_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

}  // namespace

Arena Arena::create(const std::string& label, uint64_t arena_bytes, uint32_t arena_id) {
  if (arena_id > 0xff) throw std::invalid_argument("arena id must be below 256");
  arena_bytes = layout::align_up(arena_bytes, layout::kPageSize);
  if (arena_bytes < 2 * layout::kPageSize)
    throw std::invalid_argument("arena '" + label + "' must be at least 2 pages");
  if (arena_bytes / layout::kCacheLine > 0xffffffffULL)
    throw std::invalid_argument("arena '" + label + "' exceeds the 256 GiB an ShmRef can address");

  Arena arena;
  arena.label_ = label;
  arena.owner_ = true;
  arena.id_ = arena_id;
  arena.fd_ = memfd_create(label.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (arena.fd_ < 0)
    throw_sys_error(errno, "creating shared memory arena '" + label + "' (memfd_create)");
  // 0600: a client given a read-only descriptor cannot reopen it writable through /proc
  // (the open is checked against this mode; memfd_create's default is 0777).
  if (fchmod(arena.fd_, 0600) != 0)
    throw_sys_error(errno, "restricting the mode of arena '" + label + "'");
  if (ftruncate(arena.fd_, static_cast<off_t>(arena_bytes)) != 0)
    throw_sys_error(errno, "sizing arena '" + label + "' to " + human_bytes(arena_bytes));
  if (fcntl(arena.fd_, F_ADD_SEALS, kArenaSeals) != 0)
    throw_sys_error(errno, "sealing arena '" + label + "' against resizing");
  void* base = mmap(nullptr, arena_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, arena.fd_, 0);
  if (base == MAP_FAILED)
    throw_sys_error(errno, "mapping arena '" + label + "' of " + human_bytes(arena_bytes));
  arena.base_ = static_cast<std::byte*>(base);
  arena.size_ = arena_bytes;
  // The header page is the one page every attacher touches: reserve it now.
  if (int err = posix_fallocate(arena.fd_, 0, layout::kPageSize); err != 0)
    throw_sys_error(err, "reserving the header page of arena '" + label + "'");
  auto* header = arena.at<layout::ArenaHeader>(0);
  header->version = layout::kLayoutVersion;
  header->arena_bytes = arena_bytes;
  header->first_block = layout::kPageSize;
  header->owner_pid = getpid();
  header->arena_id = arena_id;
  header->created_unix_ns = unix_now_ns();
  // Release: an attacher that sees the magic (acquire) sees every field above.
  header->magic.store(layout::kArenaMagic, std::memory_order_release);
  arena.free_.emplace(layout::kPageSize, arena_bytes - layout::kPageSize);
  return arena;
}

Arena Arena::attach(int fd, Access access, const std::string& label) {
  Arena arena;
  arena.label_ = label;
  arena.access_ = access;
  struct Closer {
    int fd;
    ~Closer() {
      if (fd >= 0) ::close(fd);
    }
  } closer{fd};
  struct stat st {};
  if (fd < 0 || fstat(fd, &st) != 0)
    throw_sys_error(fd < 0 ? EBADF : errno, "attaching shared memory arena '" + label + "'");
  // A segment whose size someone could change would let them SIGBUS us at will.
  const int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0 || (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW))
    throw std::runtime_error("arena '" + label + "' is not sealed against resizing");
  const auto bytes = static_cast<uint64_t>(st.st_size);
  if (bytes < layout::kPageSize || bytes % layout::kPageSize != 0)
    throw std::runtime_error("arena '" + label + "' has a size that is not whole pages");
  const int prot = access == Access::kReadWrite ? PROT_READ | PROT_WRITE : PROT_READ;
  void* base = mmap(nullptr, bytes, prot, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) throw_sys_error(errno, "mapping shared memory arena '" + label + "'");
  arena.base_ = static_cast<std::byte*>(base);
  arena.size_ = bytes;
  const auto* header = arena.header();
  const uint32_t magic =
      const_cast<layout::ArenaHeader*>(header)->magic.load(std::memory_order_acquire);
  if (magic != layout::kArenaMagic)
    throw std::runtime_error("'" + label + "' is not a shmbus arena (bad magic)");
  if (header->version != layout::kLayoutVersion)
    throw std::runtime_error("arena '" + label + "' has layout version " +
                             std::to_string(header->version) + ", this library speaks " +
                             std::to_string(layout::kLayoutVersion) +
                             "; restart the daemon and clients from the same release");
  if (header->arena_bytes != arena.size())
    throw std::runtime_error("arena '" + label + "' header says " +
                             std::to_string(header->arena_bytes) + " bytes but the segment has " +
                             std::to_string(arena.size()));
  arena.id_ = header->arena_id;
  return arena;
}

Arena::Arena(Arena&& other) noexcept {
  *this = std::move(other);
}

Arena& Arena::operator=(Arena&& other) noexcept {
  if (this == &other) return *this;
  unmap();
  label_ = std::move(other.label_);
  base_ = std::exchange(other.base_, nullptr);
  size_ = std::exchange(other.size_, 0);
  id_ = other.id_;
  owner_ = other.owner_;
  access_ = other.access_;
  fd_ = std::exchange(other.fd_, -1);
  ro_fd_ = std::exchange(other.ro_fd_, -1);
  free_ = std::move(other.free_);
  bytes_allocated_ = other.bytes_allocated_;
  return *this;
}

Arena::~Arena() {
  unmap();
}

void Arena::unmap() {
  if (base_ != nullptr) munmap(base_, size_);
  base_ = nullptr;
  for (int* fd : {&fd_, &ro_fd_})
    if (*fd >= 0) {
      ::close(*fd);
      *fd = -1;
    }
}

int Arena::read_write_fd() const {
  if (!owner_) throw std::logic_error("only the owner of arena '" + label_ + "' hands it out");
  return fd_;
}

int Arena::read_only_fd() {
  if (!owner_) throw std::logic_error("only the owner of arena '" + label_ + "' hands it out");
  if (ro_fd_ < 0) {
    // Reopening through /proc gives a descriptor of the same segment opened O_RDONLY: its
    // receiver can map it only without PROT_WRITE, and mprotect cannot add it later.
    const std::string path = "/proc/self/fd/" + std::to_string(fd_);
    ro_fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (ro_fd_ < 0)
      throw_sys_error(errno, "opening a read-only descriptor of arena '" + label_ + "' (" + path +
                                 "; is /proc mounted?)");
  }
  return ro_fd_;
}

Arena::Block Arena::allocate(uint64_t bytes) {
  if (!owner_) throw std::logic_error("only the owner of arena '" + label_ + "' may allocate");
  bytes = layout::align_up(bytes == 0 ? 1 : bytes, layout::kPageSize);
  // First fit: the daemon allocates rarely (channel creation), so simplicity beats speed.
  auto it = free_.begin();
  while (it != free_.end() && it->second < bytes) ++it;
  if (it == free_.end())
    throw NoFreeBlock(ENOSPC, std::generic_category(),
                      "arena '" + label_ + "' has no free block of " + human_bytes(bytes) + " (" +
                          human_bytes(size()) + " arena, " + human_bytes(bytes_allocated_) +
                          " allocated); use smaller rings or more arenas");
  const Block block{it->first, bytes};
  // Reserve the pages before anyone can touch them: when memory runs out this fails cleanly
  // here instead of raising SIGBUS in whichever client first writes the page.
  // A signal (SIGHUP: a config reload) interrupts it with EINTR: that is not a full memory.
  int err;
  do {
    err = posix_fallocate(fd_, static_cast<off_t>(block.offset), static_cast<off_t>(block.bytes));
  } while (err == EINTR);
  if (err != 0) {
    throw ReserveFailed(err, std::generic_category(),
                        "reserving " + human_bytes(bytes) + " of shared memory for arena '" +
                            label_ +
                            "' (the memory limit of shmbusd's cgroup, or the system's, "
                            "is reached)");
  }
  const uint64_t rest = it->second - bytes;
  const uint64_t rest_offset = it->first + bytes;
  free_.erase(it);
  if (rest != 0) free_.emplace(rest_offset, rest);
  bytes_allocated_ += bytes;
  return block;
}

void Arena::release(Block block) {
  if (!owner_) throw std::logic_error("only the owner of arena '" + label_ + "' may release");
  if (block.bytes == 0) return;
  // Punch the pages out: memory goes back to the system and the range reads as zero, which
  // is the state a freshly formatted ring or doorbell expects.
  if (fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(block.offset),
                static_cast<off_t>(block.bytes)) != 0) {
    std::memset(base() + block.offset, 0, block.bytes);  // never expected on a memfd
  }
  bytes_allocated_ -= block.bytes;
  auto [it, inserted] = free_.emplace(block.offset, block.bytes);
  if (!inserted) throw std::logic_error("double release in arena '" + label_ + "'");
  // Coalesce with the following and preceding free ranges.
  auto next = std::next(it);
  if (next != free_.end() && it->first + it->second == next->first) {
    it->second += next->second;
    free_.erase(next);
  }
  if (it != free_.begin()) {
    auto prev = std::prev(it);
    if (prev->first + prev->second == it->first) {
      prev->second += it->second;
      free_.erase(it);
    }
  }
}

}  // namespace shmbus
