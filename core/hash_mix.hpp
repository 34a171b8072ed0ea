// Internal: a 64-bit mixing function (the MurmurHash3 finaliser's first half) for hash tables and shard
// selection over row keys.
#pragma once

#include <cstdint>

namespace engram::detail {

inline std::uint64_t Mix64(std::uint64_t x) noexcept {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  return x;
}

}  // namespace engram::detail
