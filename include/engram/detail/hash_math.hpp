// The arithmetic of the Engram hash, shared by the CPU hasher and the CUDA kernel (compiles under both
// a host compiler and nvcc). Internal: use engram/hasher.hpp or engram/gpu/hash.hpp.
#pragma once

#include <cstdint>

#include "engram/detail/uint128.hpp"

#if defined(__CUDACC__)
#define ENGRAM_HOST_DEVICE __host__ __device__
#else
#define ENGRAM_HOST_DEVICE
#endif

namespace engram {

// Marks a DEAD position inside a hash window (compressed ids are never negative).
inline constexpr std::int32_t kDeadId = -1;

namespace detail {

// One (order, head) region of a layer's table, with what a fast exact modulo by its prime needs.
//
// mix mod p (non-negative, mix read as int64) without a hardware divide:
//   u = mix XOR 2^63 is mix + 2^63 as an unsigned value, so mix mod p = (u mod p + bias) mod p with
//   bias = p - (2^63 mod p). q = mulhi(u, magic), magic = floor(2^64 / p), under-estimates u / p by at
//   most one, so u - q*p lies in [0, 2p); adding bias (in [1, p]) gives [1, 3p), and two conditional
//   subtractions land in [0, p). Exact for every 64-bit mix and every prime below 2^62.
struct RegionHash {
  std::uint64_t prime;
  std::uint64_t magic;
  std::uint64_t bias;
  std::int64_t offset;  // first global row of the region in its layer's table
};

ENGRAM_HOST_DEVICE inline std::uint64_t MulHi64(std::uint64_t a, std::uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(a, b);
#else
  return static_cast<std::uint64_t>((static_cast<Uint128>(a) * b) >> 64);
#endif
}

ENGRAM_HOST_DEVICE inline std::uint64_t Min64(std::uint64_t a, std::uint64_t b) {
  return a < b ? a : b;
}

ENGRAM_HOST_DEVICE inline std::int64_t RegionRow(std::uint64_t mix, const RegionHash& r) {
  const std::uint64_t u = mix ^ 0x8000000000000000ULL;
  std::uint64_t x = u - MulHi64(u, r.magic) * r.prime + r.bias;
  // Branch-free conditional subtraction: for x < p, x - p wraps above x and min keeps x. (A branch
  // here is taken about 2/3 of the time at random and mispredicts; min compiles to cmp + cmov.)
  x = Min64(x, x - r.prime);
  x = Min64(x, x - r.prime);
  return r.offset + static_cast<std::int64_t>(x);
}

inline RegionHash MakeRegionHash(std::uint64_t prime, std::int64_t offset) {
  RegionHash r{};
  r.prime = prime;
  r.magic = static_cast<std::uint64_t>((static_cast<Uint128>(1) << 64) / prime);
  r.bias = prime - (0x8000000000000000ULL % prime);
  r.offset = offset;
  return r;
}

}  // namespace detail
}  // namespace engram
