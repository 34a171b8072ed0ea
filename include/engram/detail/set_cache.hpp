// The HBM cache of the device pipeline (gpu::MissPath::kDevice), whose decisions are made on the GPU:
// set-associative, kSetWays ways per set, each set evicting like the host tier's main area
// (memory/row_cache_policy.hpp) does over its samples: a row's priority is L + w(order) * reads, where L
// is the set's level (the priority of the last row the set evicted, so that old reads fade), reads count
// the row's reads since admission, and w = 1, 0.4, 0.05 for n-gram orders 2, 3, 4 and up (2-gram rows
// are re-read far more; steeper weights than the host policy's 1, 0.75, 0.5 simulated 2.4-3.4 points of
// optimal better on each half of the Brown trace, while the host policy is indifferent to them). A hit
// sets the row's base to the current level and adds one read; a miss
// takes an empty way, else replaces the lowest-priority way and raises the level to its priority. Every
// miss is admitted (gating first-touch rows, by a count-min sketch or a doorkeeper, simulated worse on
// the real trace: docs/gpu.md).
//
// Shared by the CUDA kernels (gpu/working_set_kernels.cu) and the CPU model that predicts the cache's
// hit rate on a trace (memory/trace_analysis.cpp, `engram trace analyze`), so both decide alike.
#pragma once

#include <cstdint>

#include "engram/detail/hash_math.hpp"  // ENGRAM_HOST_DEVICE

namespace engram::detail {

inline constexpr std::uint32_t kSetWays = 16;
inline constexpr std::uint64_t kSetEmptyKey = ~0ULL;

// A way's replacement state (its key is kept apart, for lookups that read only keys).
struct SetWay {
  float base = 0;    // the set's level when the row was admitted or last read
  float weight = 0;  // w(order)
  std::uint32_t reads = 0;
  std::uint32_t pad = 0;
};

ENGRAM_HOST_DEVICE inline std::uint64_t SetMix(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xFF51AFD7ED558CCDULL;
  x ^= x >> 33;
  x *= 0xC4CEB9FE1A85EC53ULL;
  x ^= x >> 33;
  return x;
}

// The set of `key` among `sets`.
ENGRAM_HOST_DEVICE inline std::uint32_t SetOf(std::uint64_t key, std::uint32_t sets) {
  return static_cast<std::uint32_t>(((SetMix(key) >> 32) * static_cast<std::uint64_t>(sets)) >> 32);
}

ENGRAM_HOST_DEVICE inline float OrderWeight(int order) {
  const float w = 1.0F - 0.6F * static_cast<float>(order - 2);
  return w < 0.05F ? 0.05F : w;
}

ENGRAM_HOST_DEVICE inline float Priority(const SetWay& w) {
  return w.base + w.weight * static_cast<float>(w.reads);
}

ENGRAM_HOST_DEVICE inline void OnSetHit(SetWay& w, float level) {
  w.base = level;
  ++w.reads;
}

ENGRAM_HOST_DEVICE inline SetWay AdmittedWay(float level, int order) {
  return SetWay{level, OrderWeight(order), 1, 0};
}

}  // namespace engram::detail
