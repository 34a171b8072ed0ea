// Whole-file helpers with errors that name the file (internal, not installed).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engram/status.hpp"

namespace engram::detail {

// Reads a whole file. Errors name the path and the errno text.
Result<std::string> ReadFileToString(const std::string& path);

// Reads a file of little-endian int32 values. A size that is not a multiple of 4 is reported as a
// truncated file (kCorruption) naming the path, the size and the number of trailing bytes.
Result<std::vector<std::int32_t>> ReadInt32File(const std::string& path);

// Writes bytes to a file (truncating it), all or nothing from the caller's point of view.
Status WriteFile(const std::string& path, std::span<const std::byte> bytes);

}  // namespace engram::detail
