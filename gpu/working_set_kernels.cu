#include <cuda_runtime_api.h>

#include <algorithm>

#include "cuda_check.hpp"
#include "working_set_kernels.hpp"

namespace engram::gpu::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr std::uint64_t kEmpty = ~0ULL;
constexpr std::uint64_t kTomb = ~0ULL - 1;

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

__global__ void __launch_bounds__(kThreads) AssembleKernel(AssembleArgs a) {
  const unsigned lane = threadIdx.x & 31U;
  const std::uint64_t warps = static_cast<std::uint64_t>(gridDim.x) * kWarpsPerBlock;
  const std::uint32_t words = a.row_bytes / 4;
  for (std::uint64_t i = blockIdx.x * static_cast<std::uint64_t>(kWarpsPerBlock) + threadIdx.x / 32; i < a.n;
       i += warps) {
    const auto* src = a.src != nullptr ? reinterpret_cast<const std::uint32_t*>(a.src[i]) : nullptr;
    if (a.rows_out != nullptr) {
      auto* out = reinterpret_cast<std::uint32_t*>(a.rows_out + i * a.row_bytes);
      for (std::uint32_t w = lane; w < words; w += 32) out[w] = src != nullptr ? src[w] : 0U;
    }
    if (a.bf16_out != nullptr) {
      const auto* bytes = reinterpret_cast<const std::uint8_t*>(src);
      for (std::uint32_t k = lane * 8; k < a.dim; k += 256) {
        uint4 v = make_uint4(0, 0, 0, 0);
        if (src != nullptr) {
          const std::uint32_t lo = src[k / 4];
          const std::uint32_t hi = src[k / 4 + 1];
          const unsigned s = bytes[a.dim + k / 32];
          const float scale = Scale(s);
          unsigned h[8];
          bool bad = s == 0xFFU;
          for (int j = 0; j < 8; ++j) {
            const unsigned c = ((j < 4 ? lo : hi) >> ((j & 3) * 8)) & 0xFFU;
            bad = bad || (c & 0x7FU) == 0x7FU;
            h[j] = Bf16(E4M3(c) * scale);
          }
          if (bad && a.error != nullptr) atomicCAS(a.error, 0U, static_cast<unsigned>(i + 1));
          v = make_uint4(h[0] | (h[1] << 16), h[2] | (h[3] << 16), h[4] | (h[5] << 16), h[6] | (h[7] << 16));
        }
        *reinterpret_cast<uint4*>(a.bf16_out + i * a.dim + k) = v;
      }
    }
  }
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
    for (std::uint32_t w = lane; w < words; w += 32) dst[w] = src[w];
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
    for (std::uint32_t w = lane; w < words; w += 32) dst[w] = src[w];
  }
}

__device__ __forceinline__ std::uint64_t Hash(std::uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 31;
  return x;
}

__device__ void Insert(const TableArgs& t, std::uint64_t key, std::int32_t slot) {
  std::uint64_t h = Hash(key) & t.mask;
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
    std::uint64_t h = Hash(key) & t.mask;
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
    std::uint64_t h = Hash(key) & t.mask;
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

}  // namespace

Status Preload() {
  const void* fns[] = {
      reinterpret_cast<const void*>(AssembleKernel),    reinterpret_cast<const void*>(FillKernel),
      reinterpret_cast<const void*>(GatherKernel),      reinterpret_cast<const void*>(TableEraseKernel),
      reinterpret_cast<const void*>(TableInsertKernel), reinterpret_cast<const void*>(TableRebuildKernel),
      reinterpret_cast<const void*>(TableLookupKernel)};
  for (const void* f : fns) {
    cudaFuncAttributes attr{};
    ENGRAM_CUDA_RETURN(cudaFuncGetAttributes(&attr, f));
  }
  return Status::Ok();
}

Status LaunchAssemble(const AssembleArgs& a, cudaStream_t stream) {
  if (a.n == 0) return Status::Ok();
  AssembleKernel<<<Blocks(a.n, kWarpsPerBlock), kThreads, 0, stream>>>(a);
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

}  // namespace engram::gpu::kernels
