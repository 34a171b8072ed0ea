#include "file.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>

namespace engram::detail {
namespace {

std::string Errno(int err) {
  return std::strerror(err);
}

// Reads exactly `size` bytes (or up to EOF) into `dst`, retrying short reads and EINTR.
Result<std::size_t> ReadAll(int fd, const std::string& path, char* dst, std::size_t size) {
  std::size_t done = 0;
  while (done < size) {
    ssize_t n = ::read(fd, dst + done, size - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::IOError(fmt::format("read {}: {}", path, Errno(errno)));
    }
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
  }
  return done;
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  [[nodiscard]] int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

Result<std::string> ReadFileToString(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    int err = errno;
    Status s(err == ENOENT ? StatusCode::kNotFound : StatusCode::kIOError,
             fmt::format("open {}: {}", path, Errno(err)));
    return s;
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::IOError(fmt::format("stat {}: {}", path, Errno(errno)));
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument(fmt::format("{} is not a regular file", path));
  std::string out(static_cast<std::size_t>(st.st_size), '\0');
  ENGRAM_ASSIGN_OR_RETURN(std::size_t n, ReadAll(fd.get(), path, out.data(), out.size()));
  if (n != out.size()) {
    return Status::IOError(fmt::format("read {}: file shrank from {} to {} bytes while reading", path, out.size(), n));
  }
  return out;
}

Result<std::vector<std::int32_t>> ReadInt32File(const std::string& path) {
  ENGRAM_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path));
  if (bytes.size() % sizeof(std::int32_t) != 0) {
    return Status::Corruption(fmt::format(
        "{}: truncated int32 file: {} bytes is not a multiple of 4 ({} trailing bytes after {} complete values)", path,
        bytes.size(), bytes.size() % 4, bytes.size() / 4));
  }
  std::vector<std::int32_t> out(bytes.size() / sizeof(std::int32_t));
  static_assert(std::endian::native == std::endian::little, "engram's file formats assume a little-endian host");
  std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

Status WriteFile(const std::string& path, std::span<const std::byte> bytes) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) return Status::IOError(fmt::format("create {}: {}", path, Errno(errno)));
  std::size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd.get(), bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::IOError(fmt::format("write {}: {}", path, Errno(errno)));
    }
    done += static_cast<std::size_t>(n);
  }
  return Status::Ok();
}

}  // namespace engram::detail
