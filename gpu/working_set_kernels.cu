#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cub/device/device_radix_sort.cuh>

#include "cuda_check.hpp"
#include "working_set_kernels.hpp"

namespace engram::gpu::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr std::uint64_t kEmpty = ~0ULL;
constexpr std::uint64_t kTomb = ~0ULL - 1;
// Lookups per warp of a resolve in row order (ResolveKernel).
constexpr std::uint64_t kSortedChunk = 16;

unsigned Blocks(std::uint64_t items, std::uint64_t per_block) {
  const std::uint64_t b = (items + per_block - 1) / per_block;
  return static_cast<unsigned>(std::min<std::uint64_t>(std::max<std::uint64_t>(b, 1), 65535ULL * 8));
}

Status Launched(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return Status::Ok();
  return Status::Internal(std::string(what) + " launch failed: " + cudaGetErrorString(e));
}

__device__ __forceinline__ float E4M3(unsigned c) {
  const unsigned e = (c >> 3) & 15U;
  const unsigned m = c & 7U;
  // e == 0: m/8 x 2^-6 = m x 2^-9; else (8 + m)/8 x 2^(e - 7) = (8 + m) x 2^(e - 10). Exact in float.
  const float v = e == 0 ? static_cast<float>(m) * 0.001953125F
                         : static_cast<float>(8 + m) * __int_as_float(static_cast<int>((e - 10 + 127) << 23));
  return (c & 0x80U) != 0 ? -v : v;
}

__device__ __forceinline__ float Scale(unsigned s) {
  // 2^(s - 127); s = 0 is the subnormal 2^-127.
  return s == 0 ? __int_as_float(0x00400000) : __int_as_float(static_cast<int>(s << 23));
}

__device__ __forceinline__ unsigned Bf16(float f) {
  const unsigned u = __float_as_uint(f);
  return (u + 0x7FFFU + ((u >> 16) & 1U)) >> 16;
}

// A row of up to kRegWords 4-byte words held by a warp: lane L has words L, L + 32, L + 64 and L + 96.
// All of a row's loads are issued before any store, so a row read through the mapping costs one PCIe
// round trip rather than one per 128 bytes (a load/store loop cannot be reordered: out may alias src).
constexpr std::uint32_t kRegWords = 128;

__device__ __forceinline__ void LoadRow(const std::uint32_t* src, std::uint32_t words, unsigned lane,
                                        std::uint32_t (&v)[4]) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const std::uint32_t w = lane + 32U * k;
    v[k] = (src != nullptr && w < words) ? src[w] : 0U;
  }
}

__device__ __forceinline__ void StoreRow(std::uint32_t* dst, std::uint32_t words, unsigned lane,
                                         const std::uint32_t (&v)[4]) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const std::uint32_t w = lane + 32U * k;
    if (w < words) dst[w] = v[k];
  }
}

// Eight BF16 values of codes k..k+7 (lo, hi: their code words; s: their scale) into one uint4.
__device__ __forceinline__ uint4 Dequant8(std::uint32_t lo, std::uint32_t hi, unsigned s, bool& bad) {
  const float scale = Scale(s);
  unsigned h[8];
  bad = s == 0xFFU;
  for (int j = 0; j < 8; ++j) {
    const unsigned c = ((j < 4 ? lo : hi) >> ((j & 3) * 8)) & 0xFFU;
    bad = bad || (c & 0x7FU) == 0x7FU;
    h[j] = Bf16(E4M3(c) * scale);
  }
  return make_uint4(h[0] | (h[1] << 16), h[2] | (h[3] << 16), h[4] | (h[5] << 16), h[6] | (h[7] << 16));
}

__global__ void __launch_bounds__(kThreads)
    FillKernel(const std::uint64_t* fills, std::uint64_t n, std::uint32_t words) {
  const unsigned lane = threadIdx.x & 31U;
  const std::uint64_t warps = static_cast<std::uint64_t>(gridDim.x) * kWarpsPerBlock;
  for (std::uint64_t i = blockIdx.x * static_cast<std::uint64_t>(kWarpsPerBlock) + threadIdx.x / 32; i < n;
       i += warps) {
    const auto* src = reinterpret_cast<const std::uint32_t*>(fills[2 * i]);
    auto* dst = reinterpret_cast<std::uint32_t*>(fills[2 * i + 1]);
    if (src == nullptr) continue;
    if (words <= kRegWords) {
      std::uint32_t v[4];
      LoadRow(src, words, lane, v);
      StoreRow(dst, words, lane, v);
    } else {
      for (std::uint32_t w = lane; w < words; w += 32) dst[w] = src[w];
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    GatherKernel(const std::uint64_t* srcs, std::uint64_t n, std::byte* out, std::uint32_t row_bytes) {
  const unsigned lane = threadIdx.x & 31U;
  const std::uint64_t warps = static_cast<std::uint64_t>(gridDim.x) * kWarpsPerBlock;
  const std::uint32_t words = row_bytes / 4;
  for (std::uint64_t i = blockIdx.x * static_cast<std::uint64_t>(kWarpsPerBlock) + threadIdx.x / 32; i < n;
       i += warps) {
    const auto* src = reinterpret_cast<const std::uint32_t*>(srcs[i]);
    auto* dst = reinterpret_cast<std::uint32_t*>(out + i * row_bytes);
    if (words <= kRegWords) {
      std::uint32_t v[4];
      LoadRow(src, words, lane, v);
      StoreRow(dst, words, lane, v);
    } else {
      for (std::uint32_t w = lane; w < words; w += 32) dst[w] = src[w];
    }
  }
}

__device__ void Insert(const TableArgs& t, std::uint64_t key, std::int32_t slot) {
  std::uint64_t h = engram::detail::SetMix(key) & t.mask;
  while (true) {
    const std::uint64_t cur = t.keys[h];
    if (cur == kEmpty || cur == kTomb) {
      const auto prev = static_cast<std::uint64_t>(atomicCAS(reinterpret_cast<unsigned long long*>(t.keys + h),
                                                             static_cast<unsigned long long>(cur),
                                                             static_cast<unsigned long long>(key)));
      if (prev == cur) {
        t.slots[h] = slot;
        return;
      }
      continue;  // lost the race for this entry: look at it again
    }
    h = (h + 1) & t.mask;
  }
}

__global__ void TableEraseKernel(TableArgs t, const std::uint64_t* keys, std::uint64_t n) {
  for (std::uint64_t i = blockIdx.x * static_cast<std::uint64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::uint64_t>(gridDim.x) * blockDim.x) {
    const std::uint64_t key = keys[i];
    std::uint64_t h = engram::detail::SetMix(key) & t.mask;
    while (true) {
      const std::uint64_t cur = t.keys[h];
      if (cur == key) {
        t.keys[h] = kTomb;
        break;
      }
      if (cur == kEmpty) break;
      h = (h + 1) & t.mask;
    }
  }
}

__global__ void TableInsertKernel(TableArgs t, const std::uint64_t* pairs, std::uint64_t n) {
  for (std::uint64_t i = blockIdx.x * static_cast<std::uint64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::uint64_t>(gridDim.x) * blockDim.x) {
    const std::uint64_t key = pairs[2 * i];
    const auto slot = static_cast<std::int32_t>(pairs[2 * i + 1]);
    t.slot_key[slot] = key;
    if (key != kEmpty) Insert(t, key, slot);
  }
}

__global__ void TableRebuildKernel(TableArgs t, std::uint32_t slots) {
  for (std::uint64_t s = blockIdx.x * static_cast<std::uint64_t>(blockDim.x) + threadIdx.x; s < slots;
       s += static_cast<std::uint64_t>(gridDim.x) * blockDim.x) {
    const std::uint64_t key = t.slot_key[s];
    if (key != kEmpty) Insert(t, key, static_cast<std::int32_t>(s));
  }
}

__global__ void TableLookupKernel(TableArgs t, std::uint64_t base, const std::int64_t* rows, std::uint32_t n,
                                  std::int32_t* out) {
  for (std::uint64_t i = blockIdx.x * static_cast<std::uint64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::uint64_t>(gridDim.x) * blockDim.x) {
    const std::uint64_t key = base | static_cast<std::uint64_t>(rows[i]);
    std::uint64_t h = engram::detail::SetMix(key) & t.mask;
    std::int32_t found = -1;
    for (std::uint64_t probes = 0; probes <= t.mask; ++probes) {
      const std::uint64_t cur = t.keys[h];
      if (cur == key) {
        found = t.slots[h];
        break;
      }
      if (cur == kEmpty) break;
      h = (h + 1) & t.mask;
    }
    out[i] = found;
  }
}

namespace sc = engram::detail;

// The device address of lookup i's row in its region (HBM region or mapped host).
__device__ __forceinline__ const std::uint32_t* SourceOf(const ColumnSource& cs, std::int64_t row,
                                                         std::uint32_t row_bytes) {
  return reinterpret_cast<const std::uint32_t*>(cs.base + static_cast<std::uint64_t>(row - cs.first) * row_bytes);
}

// Column c's row for the token whose id is x[0] (not DEAD), x[-1], x[-2], ... its history: exactly
// engram::LayerHasher (a DEAD id and every older one read as the pad id).
__device__ __forceinline__ std::int64_t HashRow(const DeviceHashParams& h, const std::int32_t* x, int order,
                                                std::uint32_t c) {
  std::uint64_t mix = static_cast<std::uint64_t>(x[0]) * h.multipliers[0];
  bool dead = false;
  for (int j = 1; j < order; ++j) {
    const std::int32_t v = x[-j];
    dead = dead || v < 0;
    mix ^= (dead ? h.pad : static_cast<std::uint64_t>(v)) * h.multipliers[j];
  }
  return engram::detail::RegionRow(mix, h.regions[c]);
}

// Lookup i's row in its layer (token i / columns, column i % columns), hashed from its window; -1 for a
// DEAD position.
__device__ __forceinline__ std::int64_t LookupRow(const ResolveArgs& a, std::uint64_t i) {
  const std::uint64_t t = i / a.num_columns;
  const auto c = static_cast<std::uint32_t>(i - t * a.num_columns);
  const std::int32_t* x = a.window + a.token_pos[t];
  return *x >= 0 ? HashRow(a.hash, x, static_cast<int>(a.columns[c].order), c) : -1;
}

// Element `j` (8 bytes) of a row held by a half-warp as 8-byte elements (lane half * 16 + m has elements
// m, m + 16, m + 32, m + 48); every lane of the warp must call it.
__device__ __forceinline__ std::uint64_t HalfElemOf(const std::uint64_t (&e)[4], std::uint32_t j, unsigned half) {
  const int from = static_cast<int>(half * 16U + (j & 15U));
  std::uint64_t r[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) r[k] = __shfl_sync(0xFFFFFFFFU, e[k], from);
  const std::uint32_t k = j >> 4;
  return k == 0 ? r[0] : (k == 1 ? r[1] : (k == 2 ? r[2] : r[3]));
}

// Writes lookup i's outputs from `src` (nullptr: a DEAD position, zeros) with a half-warp (lanes
// half * 16 + sub), if `active`: rows [row_bytes] and, for FP8 rows, BF16 dequantisation exactly as
// engram::prefetch::DequantizeRowE4M3. Two lookups per warp keep twice the rows in flight. Every lane of
// the warp must call it (it shuffles).
__device__ __forceinline__ void EmitLookup(const AssembleArgs& a, std::uint64_t i, bool active,
                                           const std::uint32_t* src, unsigned half, unsigned sub) {
  const std::uint32_t words = a.row_bytes / 4;
  if (a.row_bytes % 8 == 0 && a.row_bytes <= 512) {
    // 8-byte loads: a half-warp reads 128 bytes per instruction (a 264 B row in 3 requests, not 5).
    const std::uint32_t elems = a.row_bytes / 8;
    const auto* src64 = reinterpret_cast<const std::uint64_t*>(src);
    std::uint64_t e[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const std::uint32_t j = sub + 16U * k;
      e[k] = (active && src != nullptr && j < elems) ? src64[j] : 0ULL;
    }
    if (active && a.rows_out != nullptr) {
      auto* out = reinterpret_cast<std::uint64_t*>(a.rows_out + i * a.row_bytes);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const std::uint32_t j = sub + 16U * k;
        if (j < elems) out[j] = e[k];
      }
    }
    if (a.bf16_out == nullptr) return;
    for (std::uint32_t k0 = 0; k0 < a.dim; k0 += 128) {
      const std::uint32_t k = k0 + sub * 8;
      const std::uint64_t codes = HalfElemOf(e, k / 8, half);
      const std::uint32_t sb = a.dim + k / 32;
      const unsigned s = static_cast<unsigned>(HalfElemOf(e, sb / 8, half) >> ((sb % 8) * 8)) & 0xFFU;
      if (!active || k >= a.dim) continue;
      uint4 out = make_uint4(0, 0, 0, 0);
      if (src != nullptr) {
        bool bad = false;
        out = Dequant8(static_cast<std::uint32_t>(codes), static_cast<std::uint32_t>(codes >> 32), s, bad);
        if (bad && a.error != nullptr) atomicCAS(a.error, 0U, static_cast<unsigned>(i + 1));
      }
      *reinterpret_cast<uint4*>(a.bf16_out + i * a.dim + k) = out;
    }
    return;
  }
  // Other rows (over 512 bytes, or not a multiple of 8): word by word, no shuffles.
  if (!active) return;
  if (a.rows_out != nullptr) {
    auto* out = reinterpret_cast<std::uint32_t*>(a.rows_out + i * a.row_bytes);
    for (std::uint32_t w = sub; w < words; w += 16) out[w] = src != nullptr ? src[w] : 0U;
  }
  if (a.bf16_out != nullptr) {
    const auto* bytes = reinterpret_cast<const std::uint8_t*>(src);
    for (std::uint32_t k = sub * 8; k < a.dim; k += 128) {
      uint4 out = make_uint4(0, 0, 0, 0);
      if (src != nullptr) {
        bool bad = false;
        out = Dequant8(src[k / 4], src[k / 4 + 1], bytes[a.dim + k / 32], bad);
        if (bad && a.error != nullptr) atomicCAS(a.error, 0U, static_cast<unsigned>(i + 1));
      }
      *reinterpret_cast<uint4*>(a.bf16_out + i * a.dim + k) = out;
    }
  }
}

// Two lookups per warp (a half-warp each), each from its given source address.
__global__ void __launch_bounds__(kThreads) AssembleKernel(AssembleArgs a) {
  const unsigned lane = threadIdx.x & 31U;
  const unsigned half = lane >> 4;
  const unsigned sub = lane & 15U;
  const std::uint64_t warps = static_cast<std::uint64_t>(gridDim.x) * kWarpsPerBlock;
  for (std::uint64_t pair = blockIdx.x * static_cast<std::uint64_t>(kWarpsPerBlock) + threadIdx.x / 32; 2 * pair < a.n;
       pair += warps) {
    const std::uint64_t i = 2 * pair + half;
    const bool active = i < a.n;
    const auto* src = active && a.src != nullptr ? reinterpret_cast<const std::uint32_t*>(a.src[i]) : nullptr;
    EmitLookup(a, i, active, src, half, sub);
  }
}

// Two lookups per warp, one per half-warp (16 lanes: the 16 ways of a set, a row in 16 elements a pass).
__global__ void __launch_bounds__(kThreads) ResolveKernel(ResolveBatch batch) {
  const ResolveArgs& a = batch.layer[blockIdx.y];
  __shared__ unsigned long long counts[3];  // hits, host reads, region reads of this block
  if (threadIdx.x < 3) counts[threadIdx.x] = 0;
  __syncthreads();
  unsigned mine[3] = {0, 0, 0};  // this lane's hits, host reads, region reads: added to `counts` at the end
  const unsigned lane = threadIdx.x & 31U;
  const unsigned half = lane >> 4;
  const unsigned sub = lane & 15U;
  const std::uint64_t warps = static_cast<std::uint64_t>(gridDim.x) * kWarpsPerBlock;
  // In row order a warp takes kSortedChunk consecutive lookups, two at a time, and a half-warp bumps a
  // way's read count once per run of hits on it (a prefill repeats its 2-grams: one atomic per hit on
  // the same way serialised them), not once per hit. Otherwise two lookups per warp and pass.
  const std::uint64_t per_warp = a.sorted_index != nullptr ? a.sorted_chunk : 2;
  std::uint64_t pend_slot = ~0ULL;
  float pend_level = 0;  // the set's level, loaded when the run starts, stored when it ends
  unsigned pend = 0;
  auto flush = [&] {
    if (pend == 0) return;
    a.cache.ways[pend_slot].base = pend_level;
    atomicAdd(&a.cache.ways[pend_slot].reads, pend);
    pend = 0;
  };
  for (std::uint64_t w0 = (blockIdx.x * static_cast<std::uint64_t>(kWarpsPerBlock) + threadIdx.x / 32) * per_warp;
       w0 < a.out.n; w0 += warps * per_warp) {
    // In row order, the warp's lookups (position and row) in one coalesced load, lane m holding lookup
    // w0 + m, handed out by shuffles below: one dependent load for the chunk, not one per pair.
    std::uint32_t my_index = 0;
    std::uint64_t my_row = 0;
    if (a.sorted_index != nullptr && lane < per_warp && w0 + lane < a.out.n) {
      my_index = a.sorted_index[w0 + lane];
      my_row = a.sorted_rows[w0 + lane];
    }
    for (std::uint64_t j = 0; j < per_warp && w0 + j < a.out.n; j += 2) {
      const std::uint64_t k = w0 + j + half;
      const bool active = k < a.out.n;
      std::uint64_t i = k;  // the output position
      const std::uint32_t* src = nullptr;
      int kind = -1;  // 0 hit, 1 host read, 2 region read; -1 DEAD or no lookup
      bool probe = false;
      std::uint64_t key = 0, b0 = 0;
      std::uint32_t set = 0;
      std::int64_t row = 0;
      std::uint64_t sorted = 0;
      if (a.sorted_index != nullptr) {  // uniform across the warp: every lane shuffles
        const int from = static_cast<int>(j) + static_cast<int>(half);
        i = __shfl_sync(0xFFFFFFFFU, my_index, from);
        sorted = __shfl_sync(0xFFFFFFFFU, my_row, from);
      }
      if (active) {
        const auto c = static_cast<std::uint32_t>(i % a.num_columns);
        if (a.sorted_index == nullptr) {
          row = LookupRow(a, i);
        } else {
          row = sorted != a.sorted_dead ? static_cast<std::int64_t>(sorted) : -1;
        }
        if (row >= 0) {
          const ColumnSource cs = a.columns[c];
          src = SourceOf(cs, row, a.out.row_bytes);
          kind = cs.cached != 0 ? 1 : 2;
          if (cs.cached != 0 && a.cache.sets != 0) {
            probe = true;
            key = a.key_base | static_cast<std::uint64_t>(row);
            set = sc::SetOf(key, a.cache.sets);
            b0 = static_cast<std::uint64_t>(set) * sc::kSetWays;
          }
        }
      }
      // The set's level is read beside its keys, not after the match: a load that waits for the probe
      // made the next run's flush wait a second round trip (prefill in row order: 167 -> 162 us).
      const float level = probe && sub == 0 ? a.cache.level[set] : 0.0F;
      const bool match = probe && a.cache.keys[b0 + sub] == key;
      const unsigned hit = (__ballot_sync(0xFFFFFFFFU, match) >> (half * 16U)) & 0xFFFFU;
      if (probe) {
        if (hit != 0) {
          const std::uint64_t slot = b0 + static_cast<std::uint64_t>(__ffs(hit) - 1);
          src = reinterpret_cast<const std::uint32_t*>(a.cache.rows + slot * a.out.row_bytes);
          kind = 0;
          if (sub == 0) {
            if (slot != pend_slot) {
              flush();
              pend_slot = slot;
              pend_level = level;
            }
            ++pend;
          }
        } else if (sub == 0) {
          const unsigned k = atomicAdd(a.miss_count, 1U);
          a.misses[k] = static_cast<std::uint32_t>(i);
          a.miss_rows[k] = row;
        }
      }
      mine[0] += kind == 0 ? 1U : 0U;  // constant indices: the counts stay in registers
      mine[1] += kind == 1 ? 1U : 0U;
      mine[2] += kind == 2 ? 1U : 0U;
      EmitLookup(a.out, i, active, src, half, sub);
    }
  }
  if (sub == 0) {
    flush();
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      if (mine[k] != 0) atomicAdd(&counts[k], static_cast<unsigned long long>(mine[k]));
    }
  }
  __syncthreads();
  if (threadIdx.x < 3 && counts[threadIdx.x] != 0) {
    const int k = threadIdx.x == 0 ? kCacheHits : (threadIdx.x == 1 ? kHostReads : kRegionReads);
    atomicAdd(a.counters + k, counts[threadIdx.x]);
  }
}

__global__ void PlaceIdsKernel(const std::int32_t* ids, std::uint64_t n, const std::uint32_t* token_pos,
                               std::int32_t* window, const std::int32_t* map, std::uint32_t map_size,
                               std::int64_t vocab) {
  for (std::uint64_t k = blockIdx.x * static_cast<std::uint64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<std::uint64_t>(gridDim.x) * blockDim.x) {
    std::int32_t* at = window + token_pos[k];
    if (*at == kDeadId) continue;  // DEAD: marked by the host
    std::int32_t id = ids[k];
    if (map != nullptr) id = id >= 0 && static_cast<std::uint32_t>(id) < map_size ? map[id] : kDeadId;
    *at = id >= 0 && id < vocab ? id : kDeadId;
  }
}

// keys[i] = lookup i's row (dead: a DEAD position), vals[i] = i.
__global__ void HashLookupsKernel(ResolveArgs a, std::uint64_t dead, std::uint64_t* keys, std::uint32_t* vals) {
  for (std::uint64_t i = blockIdx.x * static_cast<std::uint64_t>(blockDim.x) + threadIdx.x; i < a.out.n;
       i += static_cast<std::uint64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t row = LookupRow(a, i);
    keys[i] = row >= 0 ? static_cast<std::uint64_t>(row) : dead;
    vals[i] = static_cast<std::uint32_t>(i);
  }
}

__global__ void __launch_bounds__(kThreads) AdmitKernel(ResolveBatch batch) {
  const ResolveArgs& a = batch.layer[blockIdx.y];
  const unsigned lane = threadIdx.x & 31U;
  const std::uint64_t warps = static_cast<std::uint64_t>(gridDim.x) * kWarpsPerBlock;
  const std::uint32_t count = *a.miss_count;
  const std::uint32_t words = a.out.row_bytes / 4;
  for (std::uint64_t k = blockIdx.x * static_cast<std::uint64_t>(kWarpsPerBlock) + threadIdx.x / 32; k < count;
       k += warps) {
    const std::uint64_t i = a.misses[k];
    const std::uint64_t t = i / a.num_columns;
    const auto c = static_cast<std::uint32_t>(i - t * a.num_columns);
    const std::int64_t row = a.miss_rows[k];
    const ColumnSource cs = a.columns[c];
    const std::uint64_t key = a.key_base | static_cast<std::uint64_t>(row);
    const std::uint32_t set = sc::SetOf(key, a.cache.sets);
    const std::uint64_t b0 = static_cast<std::uint64_t>(set) * sc::kSetWays;
    if (lane == 0) {
      while (atomicCAS(a.cache.locks + set, 0U, 1U) != 0U) __nanosleep(64);
      __threadfence();
    }
    __syncwarp();
    // Under the set's lock: the previous holder's writes are visible (its fence before release); read
    // past the L1.
    std::uint64_t way_key = sc::kSetEmptyKey;
    float priority = 3.0e38F;
    if (lane < sc::kSetWays) {
      way_key = __ldcg(reinterpret_cast<const unsigned long long*>(a.cache.keys + b0 + lane));
      const float4 w = __ldcg(reinterpret_cast<const float4*>(a.cache.ways + b0 + lane));
      sc::SetWay sw{w.x, w.y, __float_as_uint(w.z), 0};
      priority = sc::Priority(sw);
    }
    const unsigned present = __ballot_sync(0xFFFFFFFFU, lane < sc::kSetWays && way_key == key);
    const unsigned empty = __ballot_sync(0xFFFFFFFFU, lane < sc::kSetWays && way_key == sc::kSetEmptyKey);
    if (present == 0) {
      int victim = 0;
      float level = 0;
      if (empty != 0) {
        victim = __ffs(empty) - 1;
        level = __ldcg(a.cache.level + set);
      } else {
        // The lowest priority (the lowest way among equals), as the CPU model picks it.
        float p = priority;
        int w = static_cast<int>(lane);
        for (int off = 16; off > 0; off >>= 1) {
          const float po = __shfl_down_sync(0xFFFFFFFFU, p, off);
          const int wo = __shfl_down_sync(0xFFFFFFFFU, w, off);
          if (po < p || (po == p && wo < w)) {
            p = po;
            w = wo;
          }
        }
        victim = __shfl_sync(0xFFFFFFFFU, w, 0);
        level = __shfl_sync(0xFFFFFFFFU, p, 0);
      }
      const std::uint64_t slot = b0 + static_cast<std::uint64_t>(victim);
      const std::uint32_t* from = a.out.rows_out != nullptr
                                      ? reinterpret_cast<const std::uint32_t*>(a.out.rows_out + i * a.out.row_bytes)
                                      : SourceOf(cs, row, a.out.row_bytes);
      auto* to = reinterpret_cast<std::uint32_t*>(a.cache.rows + slot * a.out.row_bytes);
      if (words <= kRegWords) {
        std::uint32_t v[4];
        LoadRow(from, words, lane, v);
        StoreRow(to, words, lane, v);
      } else {
        for (std::uint32_t w = lane; w < words; w += 32) to[w] = from[w];
      }
      __syncwarp();
      if (lane == 0) {
        if (empty == 0) a.cache.level[set] = level;
        a.cache.keys[slot] = key;
        a.cache.ways[slot] = sc::AdmittedWay(level, static_cast<int>(cs.order));
        atomicAdd(a.counters + kAdmissions, 1ULL);
        if (empty == 0) atomicAdd(a.counters + kEvictions, 1ULL);
      }
    }
    if (lane == 0) {
      __threadfence();
      atomicExch(a.cache.locks + set, 0U);
    }
    __syncwarp();
  }
}

__global__ void SetLookupKernel(SetCacheArgs cache, std::uint64_t base, const std::int64_t* rows, std::uint32_t n,
                                std::int32_t* out) {
  for (std::uint64_t i = blockIdx.x * static_cast<std::uint64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::uint64_t>(gridDim.x) * blockDim.x) {
    const std::uint64_t key = base | static_cast<std::uint64_t>(rows[i]);
    const std::uint64_t b0 = static_cast<std::uint64_t>(sc::SetOf(key, cache.sets)) * sc::kSetWays;
    std::int32_t found = -1;
    for (std::uint32_t w = 0; w < sc::kSetWays; ++w) {
      if (cache.keys[b0 + w] == key) {
        found = static_cast<std::int32_t>(b0 + w);
        break;
      }
    }
    out[i] = found;
  }
}

}  // namespace

Status Preload() {
  const void* fns[] = {
      reinterpret_cast<const void*>(AssembleKernel),    reinterpret_cast<const void*>(FillKernel),
      reinterpret_cast<const void*>(GatherKernel),      reinterpret_cast<const void*>(TableEraseKernel),
      reinterpret_cast<const void*>(TableInsertKernel), reinterpret_cast<const void*>(TableRebuildKernel),
      reinterpret_cast<const void*>(TableLookupKernel), reinterpret_cast<const void*>(ResolveKernel),
      reinterpret_cast<const void*>(AdmitKernel),       reinterpret_cast<const void*>(SetLookupKernel),
      reinterpret_cast<const void*>(PlaceIdsKernel)};
  for (const void* f : fns) {
    cudaFuncAttributes attr{};
    ENGRAM_CUDA_RETURN(cudaFuncGetAttributes(&attr, f));
  }
  return Status::Ok();
}

Status LaunchAssemble(const AssembleArgs& a, cudaStream_t stream) {
  if (a.n == 0) return Status::Ok();
  AssembleKernel<<<Blocks((a.n + 1) / 2, kWarpsPerBlock), kThreads, 0, stream>>>(a);
  return Launched("assemble kernel");
}

Status LaunchFill(const std::uint64_t* fills, std::uint64_t n, std::uint32_t row_bytes, cudaStream_t stream) {
  if (n == 0) return Status::Ok();
  FillKernel<<<Blocks(n, kWarpsPerBlock), kThreads, 0, stream>>>(fills, n, row_bytes / 4);
  return Launched("cache fill kernel");
}

Status LaunchGather(const std::uint64_t* src, std::uint64_t n, std::byte* out, std::uint32_t row_bytes,
                    cudaStream_t stream) {
  if (n == 0) return Status::Ok();
  GatherKernel<<<Blocks(n, kWarpsPerBlock), kThreads, 0, stream>>>(src, n, out, row_bytes);
  return Launched("gather kernel");
}

Status LaunchTableErase(const TableArgs& t, const std::uint64_t* keys, std::uint64_t n, cudaStream_t stream) {
  if (n == 0) return Status::Ok();
  TableEraseKernel<<<Blocks(n, kThreads), kThreads, 0, stream>>>(t, keys, n);
  return Launched("cache table erase kernel");
}

Status LaunchTableInsert(const TableArgs& t, const std::uint64_t* pairs, std::uint64_t n, cudaStream_t stream) {
  if (n == 0) return Status::Ok();
  TableInsertKernel<<<Blocks(n, kThreads), kThreads, 0, stream>>>(t, pairs, n);
  return Launched("cache table insert kernel");
}

Status LaunchTableRebuild(const TableArgs& t, std::uint32_t cache_slots, cudaStream_t stream) {
  if (cache_slots == 0) return Status::Ok();
  TableRebuildKernel<<<Blocks(cache_slots, kThreads), kThreads, 0, stream>>>(t, cache_slots);
  return Launched("cache table rebuild kernel");
}

Status LaunchTableLookup(const TableArgs& t, std::uint64_t key_base, const std::int64_t* rows, std::uint32_t n,
                         std::int32_t* slots_out, cudaStream_t stream) {
  if (n == 0) return Status::Ok();
  TableLookupKernel<<<Blocks(n, kThreads), kThreads, 0, stream>>>(t, key_base, rows, n, slots_out);
  return Launched("cache table lookup kernel");
}

Status LaunchResolve(const ResolveBatch& b, cudaStream_t stream) {
  if (b.layers < 1 || b.layers > kMaxFusedLayers) return Status::InvalidArgument("resolve: 1..4 layers a launch");
  if (b.layer[0].out.n == 0) return Status::Ok();
  const std::uint64_t per_warp = b.layer[0].sorted_index != nullptr ? b.layer[0].sorted_chunk : 2;
  const dim3 grid(Blocks((b.layer[0].out.n + per_warp - 1) / per_warp, kWarpsPerBlock),
                  static_cast<unsigned>(b.layers));
  ResolveKernel<<<grid, kThreads, 0, stream>>>(b);
  return Launched("resolve kernel");
}

Result<std::uint64_t> SortTempBytes(std::uint64_t n, int end_bit) {
  std::size_t bytes = 0;
  cub::DoubleBuffer<std::uint64_t> k(nullptr, nullptr);
  cub::DoubleBuffer<std::uint32_t> v(nullptr, nullptr);
  ENGRAM_CUDA_RETURN(cub::DeviceRadixSort::SortPairs(nullptr, bytes, k, v, static_cast<int>(n), 0, end_bit));
  return static_cast<std::uint64_t>(bytes);
}

namespace {
Status SortPairs(const SortBuffers& sb, std::uint64_t n, cub::DoubleBuffer<std::uint64_t>& k,
                 cub::DoubleBuffer<std::uint32_t>& v, cudaStream_t stream) {
  std::size_t bytes = sb.temp_bytes;
  ENGRAM_CUDA_RETURN(cub::DeviceRadixSort::SortPairs(sb.temp, bytes, k, v, static_cast<int>(n), 0, sb.end_bit, stream));
  return Launched("lookup sort");
}
}  // namespace

namespace {
// The current device's SM count (asked once per device).
Result<int> MultiprocessorCount() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> known[kMaxDevices] = {};
  int device = 0;
  ENGRAM_CUDA_RETURN(cudaGetDevice(&device));
  if (device >= 0 && device < kMaxDevices && known[device].load(std::memory_order_relaxed) > 0) {
    return known[device].load(std::memory_order_relaxed);
  }
  int sms = 0;
  ENGRAM_CUDA_RETURN(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  if (device >= 0 && device < kMaxDevices) known[device].store(sms, std::memory_order_relaxed);
  return std::max(sms, 1);
}
}  // namespace

Status LaunchSortLookups(ResolveArgs& a, const SortBuffers& sb, std::uint32_t per_warp, cudaStream_t stream) {
  const std::uint64_t n = a.out.n;
  if (n == 0) return Status::Ok();
  if (n > sb.capacity) return Status::InvalidArgument("lookup sort: more lookups than the sort buffers hold");
  const std::uint64_t dead = (1ULL << sb.end_bit) - 1;
  HashLookupsKernel<<<Blocks(n, kThreads), kThreads, 0, stream>>>(a, dead, sb.keys[0], sb.vals[0]);
  ENGRAM_RETURN_IF_ERROR(Launched("lookup hash kernel"));
  cub::DoubleBuffer<std::uint64_t> k(sb.keys[0], sb.keys[1]);
  cub::DoubleBuffer<std::uint32_t> v(sb.vals[0], sb.vals[1]);
  ENGRAM_RETURN_IF_ERROR(SortPairs(sb, n, k, v, stream));
  a.sorted_rows = k.Current();
  a.sorted_index = v.Current();
  a.sorted_dead = dead;
  if (per_warp != 0) {
    a.sorted_chunk = per_warp;
    return Status::Ok();
  }
  // As many lookups a warp as leaves ~32 warps for each SM, at most kSortedChunk, at least 2.
  ENGRAM_ASSIGN_OR_RETURN(const int sms, MultiprocessorCount());
  const std::uint64_t chunk = n / (static_cast<std::uint64_t>(sms) * 32);
  a.sorted_chunk = static_cast<std::uint32_t>(std::clamp<std::uint64_t>(chunk & ~1ULL, 2, kSortedChunk));
  return Status::Ok();
}

Status LaunchPlaceIds(const std::int32_t* ids, std::uint64_t n, const std::uint32_t* token_pos, std::int32_t* window,
                      const std::int32_t* map, std::uint32_t map_size, std::int64_t vocab, cudaStream_t stream) {
  if (n == 0) return Status::Ok();
  PlaceIdsKernel<<<Blocks(n, kThreads), kThreads, 0, stream>>>(ids, n, token_pos, window, map, map_size, vocab);
  return Launched("place ids kernel");
}

Status WarmSort(const SortBuffers& sb, cudaStream_t stream) {
  cudaFuncAttributes attr{};
  ENGRAM_CUDA_RETURN(cudaFuncGetAttributes(&attr, reinterpret_cast<const void*>(HashLookupsKernel)));
  for (const std::uint64_t n : {std::uint64_t{64}, std::uint64_t{4096}, sb.capacity}) {
    if (n == 0 || n > sb.capacity) continue;
    ENGRAM_CUDA_RETURN(cudaMemsetAsync(sb.keys[0], 0, n * 8, stream));
    ENGRAM_CUDA_RETURN(cudaMemsetAsync(sb.vals[0], 0, n * 4, stream));
    cub::DoubleBuffer<std::uint64_t> k(sb.keys[0], sb.keys[1]);
    cub::DoubleBuffer<std::uint32_t> v(sb.vals[0], sb.vals[1]);
    ENGRAM_RETURN_IF_ERROR(SortPairs(sb, n, k, v, stream));
  }
  return Status::Ok();
}

Status LaunchAdmit(const ResolveBatch& b, std::uint64_t max_misses, cudaStream_t stream) {
  if (b.layers < 1 || b.layers > kMaxFusedLayers) return Status::InvalidArgument("admit: 1..4 layers a launch");
  if (max_misses == 0 || b.layer[0].cache.sets == 0) return Status::Ok();
  // The count is known only on the device: enough warps to cover a few thousand misses in one pass,
  // striding over the rest.
  const dim3 grid(Blocks(std::min<std::uint64_t>(max_misses, 1ULL << 14), kWarpsPerBlock),
                  static_cast<unsigned>(b.layers));
  AdmitKernel<<<grid, kThreads, 0, stream>>>(b);
  return Launched("admit kernel");
}

Status LaunchSetLookup(const SetCacheArgs& c, std::uint64_t key_base, const std::int64_t* rows, std::uint32_t n,
                       std::int32_t* slots_out, cudaStream_t stream) {
  if (n == 0) return Status::Ok();
  SetLookupKernel<<<Blocks(n, kThreads), kThreads, 0, stream>>>(c, key_base, rows, n, slots_out);
  return Launched("cache lookup kernel");
}

}  // namespace engram::gpu::kernels
