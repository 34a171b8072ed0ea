#include "file.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <utility>

namespace engram::detail {
namespace {

std::string Errno(int err) {
  return std::strerror(err);
}

}  // namespace

UniqueFd& UniqueFd::operator=(UniqueFd&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(o.fd_, -1);
  }
  return *this;
}

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) ::close(fd_);
}

Result<UniqueFd> OpenReadOnly(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return Status(err == ENOENT ? StatusCode::kNotFound : StatusCode::kIOError,
                  fmt::format("open {}: {}", path, Errno(err)));
  }
  return UniqueFd(fd);
}

Status PreadExact(int fd, const std::string& path, std::uint64_t offset, std::span<std::byte> out) {
  std::size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::IOError(fmt::format("read {} at offset {}: {}", path, offset + done, Errno(errno)));
    }
    if (n == 0) {
      return Status::Corruption(
          fmt::format("read {}: file ends at offset {} ({} bytes short)", path, offset + done, out.size() - done));
    }
    done += static_cast<std::size_t>(n);
  }
  return Status::Ok();
}

Result<std::string> ReadFileToString(const std::string& path) {
  ENGRAM_ASSIGN_OR_RETURN(UniqueFd fd, OpenReadOnly(path));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::IOError(fmt::format("stat {}: {}", path, Errno(errno)));
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument(fmt::format("{} is not a regular file", path));
  std::string out(static_cast<std::size_t>(st.st_size), '\0');
  ENGRAM_RETURN_IF_ERROR(PreadExact(fd.get(), path, 0, std::as_writable_bytes(std::span(out))));
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
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
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
