// engram::gpu::CalibrateDevice (engram/gpu/calibrate.hpp).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "cuda_check.hpp"
#include "engram/gpu/calibrate.hpp"
#include "engram/gpu/device.hpp"
#include "engram/gpu/host_memory.hpp"
#include "engram/memory/pinned_arena.hpp"

namespace engram::gpu {
namespace {

// Frees what the measurement allocated, on every path.
struct Resources {
  void* pinned = nullptr;        // cudaHostAlloc (mapped)
  void* device = nullptr;        // cudaMalloc
  void* out = nullptr;           // cudaMalloc
  std::uint64_t* idx = nullptr;  // cudaMalloc
  cudaStream_t stream = nullptr;
  cudaEvent_t a = nullptr, b = nullptr;
  ~Resources() {
    if (a != nullptr) cudaEventDestroy(a);
    if (b != nullptr) cudaEventDestroy(b);
    if (stream != nullptr) cudaStreamDestroy(stream);
    cudaFree(idx);
    cudaFree(out);
    cudaFree(device);
    if (pinned != nullptr) cudaFreeHost(pinned);
  }
};

// One warp per row: rows idx[i] of `src` (row_bytes, a multiple of 8) to out[i].
__global__ void GatherRows(const std::byte* src, const std::uint64_t* idx, std::byte* out, std::uint32_t n,
                           std::uint32_t row_bytes) {
  const std::uint32_t warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const std::uint32_t lane = threadIdx.x % 32;
  if (warp >= n) return;
  const auto* s = reinterpret_cast<const std::uint64_t*>(src + idx[warp] * row_bytes);
  auto* d = reinterpret_cast<std::uint64_t*>(out + static_cast<std::uint64_t>(warp) * row_bytes);
  for (std::uint32_t w = lane; w < row_bytes / 8; w += 32) d[w] = s[w];
}

__global__ void Empty() {}

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

Status CalibrateDevice(plan::Calibration& c, double seconds) {
  ENGRAM_ASSIGN_OR_RETURN(DeviceInfo info, CurrentDevice());
  Resources r;
  constexpr std::uint64_t kBytes = 1ULL << 30;  // gathered from: far larger than any cache on the way
  constexpr std::uint32_t kRowBytes = 264;
  constexpr std::uint32_t kRows = 1U << 20;
  ENGRAM_CUDA_RETURN(cudaHostAlloc(&r.pinned, kBytes, cudaHostAllocMapped));
  ENGRAM_CUDA_RETURN(cudaMalloc(&r.device, kBytes));
  ENGRAM_CUDA_RETURN(cudaMalloc(&r.out, static_cast<std::size_t>(kRows) * kRowBytes));
  ENGRAM_CUDA_RETURN(cudaMalloc(&r.idx, kRows * sizeof(std::uint64_t)));
  ENGRAM_CUDA_RETURN(cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking));
  ENGRAM_CUDA_RETURN(cudaEventCreate(&r.a));
  ENGRAM_CUDA_RETURN(cudaEventCreate(&r.b));
  std::vector<std::uint64_t> idx(kRows);
  std::mt19937_64 rng(9);
  for (auto& i : idx) i = rng() % (kBytes / kRowBytes);
  ENGRAM_CUDA_RETURN(cudaMemcpy(r.idx, idx.data(), idx.size() * sizeof(std::uint64_t), cudaMemcpyHostToDevice));
  ENGRAM_CUDA_RETURN(cudaMemset(r.device, 1, kBytes));

  // Device time of `fn` (enqueued on the stream), best of enough repetitions to fill `share` seconds.
  auto timed = [&](auto&& fn, double share) -> Result<double> {
    double best = 1e30;
    const auto t0 = std::chrono::steady_clock::now();
    int reps = 0;
    do {
      ENGRAM_CUDA_RETURN(cudaEventRecord(r.a, r.stream));
      fn();
      ENGRAM_CUDA_RETURN(cudaGetLastError());
      ENGRAM_CUDA_RETURN(cudaEventRecord(r.b, r.stream));
      ENGRAM_CUDA_RETURN(cudaEventSynchronize(r.b));
      float ms = 0;
      ENGRAM_CUDA_RETURN(cudaEventElapsedTime(&ms, r.a, r.b));
      best = std::min(best, 1e-3 * ms);
      ++reps;
    } while (reps < 3 || Since(t0) < share);
    return best;
  };

  // Copies: t(B) = fixed + B / rate over 4 KiB .. 64 MiB.
  std::vector<std::pair<double, double>> pts;
  for (const std::uint64_t bytes : {4096ULL, 256ULL << 10, 4ULL << 20, 64ULL << 20}) {
    ENGRAM_ASSIGN_OR_RETURN(
        double t,
        timed([&] { cudaMemcpyAsync(r.out, r.pinned, bytes, cudaMemcpyHostToDevice, r.stream); }, seconds / 8));
    pts.emplace_back(static_cast<double>(bytes), t);
  }
  // The fixed cost from the smallest copy, the rate from the largest (a least-squares line is dominated by
  // the largest point and can put the fixed cost below zero).
  c.h2d_fixed_s = pts.front().second;
  c.h2d_bytes_per_s = (pts.back().first - pts.front().first) / std::max(pts.back().second - pts.front().second, 1e-9);

  void* mapped = nullptr;
  ENGRAM_CUDA_RETURN(cudaHostGetDevicePointer(&mapped, r.pinned, 0));
  const std::uint32_t blocks = (kRows * 32 + 255) / 256;
  ENGRAM_ASSIGN_OR_RETURN(double zc, timed(
                                         [&] {
                                           GatherRows<<<blocks, 256, 0, r.stream>>>(
                                               static_cast<const std::byte*>(mapped), r.idx,
                                               static_cast<std::byte*>(r.out), kRows, kRowBytes);
                                         },
                                         seconds / 4));
  c.zero_copy_rows_per_s = kRows / zc;
  ENGRAM_ASSIGN_OR_RETURN(double hbm, timed(
                                          [&] {
                                            GatherRows<<<blocks, 256, 0, r.stream>>>(
                                                static_cast<const std::byte*>(r.device), r.idx,
                                                static_cast<std::byte*>(r.out), kRows, kRowBytes);
                                          },
                                          seconds / 4));
  c.hbm_rows_per_s = kRows / hbm;
  // A launch and an event, back to back, as the host sees them.
  {
    constexpr int kN = 2000;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kN; ++i) {
      Empty<<<1, 32, 0, r.stream>>>();
      ENGRAM_CUDA_RETURN(cudaEventRecord(r.a, r.stream));
    }
    ENGRAM_CUDA_RETURN(cudaStreamSynchronize(r.stream));
    c.launch_s = Since(t0) / kN;
  }
  // Pinning as the host tier does it: an arena mapped, touched and registered with CUDA.
  {
    ENGRAM_ASSIGN_OR_RETURN(auto registrar, MakeCudaHostRegistrar());
    memory::ArenaOptions ao;
    ao.name = "calibrate";
    ao.registrar = registrar.get();
    const auto t0 = std::chrono::steady_clock::now();
    ENGRAM_ASSIGN_OR_RETURN(auto arena, memory::PinnedArena::Create(1ULL << 30, ao));
    c.pin_bytes_per_s = static_cast<double>(arena->size()) / Since(t0);
    c.pin_path = std::string(memory::PagePathName(arena->report().path)) + ", registered with CUDA";
  }
  c.gpu = info.name;
  return Status::Ok();
}

}  // namespace engram::gpu
