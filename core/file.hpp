// Whole-file helpers with errors that name the file (internal, not installed).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engram/status.hpp"

namespace engram::detail {

// An owned file descriptor, closed on destruction. Move-only.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  UniqueFd& operator=(UniqueFd&& o) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd();
  [[nodiscard]] int get() const noexcept { return fd_; }

 private:
  int fd_ = -1;
};

// open(path, O_RDONLY | O_CLOEXEC): kNotFound for a missing file, kIOError otherwise, naming the path.
Result<UniqueFd> OpenReadOnly(const std::string& path);

// pread of exactly out.size() bytes at `offset`, retrying short reads and EINTR. A file that ends first
// is kCorruption ("file ends at offset N (M bytes short)"); errors name the path.
Status PreadExact(int fd, const std::string& path, std::uint64_t offset, std::span<std::byte> out);

// Reads a whole file. Errors name the path and the errno text.
Result<std::string> ReadFileToString(const std::string& path);

// Reads a file of little-endian int32 values. A size that is not a multiple of 4 is reported as a
// truncated file (kCorruption) naming the path, the size and the number of trailing bytes.
Result<std::vector<std::int32_t>> ReadInt32File(const std::string& path);

// Writes bytes to a file (truncating it), all or nothing from the caller's point of view.
Status WriteFile(const std::string& path, std::span<const std::byte> bytes);

}  // namespace engram::detail
