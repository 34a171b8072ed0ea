// GPU hashing rate: compressed ids on the device -> row ids on the device, rows per second, with the
// raw baseline measured in the same run: a device memset and a device-to-device copy writing the same
// number of output bytes (the kernel can be no faster than writing its output).
//
//   build/bench/bench_gpu_hash [--replicate N]   (the real trace, replicated N times; default 16)
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <vector>

#include "bench_data.hpp"
#include "engram/gpu/hash.hpp"

namespace {

#define CHECK_CUDA(expr)                                                     \
  do {                                                                       \
    cudaError_t e = (expr);                                                  \
    if (e != cudaSuccess) {                                                  \
      std::fprintf(stderr, "%s failed: %s\n", #expr, cudaGetErrorString(e)); \
      std::exit(1);                                                          \
    }                                                                        \
  } while (0)

template <typename F>
float MedianMs(F&& f, cudaStream_t stream, int reps) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) f();  // warm-up
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    CHECK_CUDA(cudaEventRecord(a, stream));
    f();
    CHECK_CUDA(cudaEventRecord(b, stream));
    CHECK_CUDA(cudaEventSynchronize(b));
    float t = 0;
    CHECK_CUDA(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  CHECK_CUDA(cudaEventDestroy(a));
  CHECK_CUDA(cudaEventDestroy(b));
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int replicate = 16;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--replicate") == 0) replicate = std::atoi(argv[i + 1]);
  }
  auto dev = engram::gpu::CurrentDevice();
  if (!dev.ok()) {
    std::printf("skipped: no usable GPU: %s\n", dev.status().ToString().c_str());
    return 0;
  }
  std::printf("device: %s (sm_%d%d, %d SMs)\n", dev->name.c_str(), dev->compute_major, dev->compute_minor,
              dev->multiprocessors);
  const auto base = engram::bench::LoadTraceCompressed();
  std::vector<std::int32_t> ids;
  for (int r = 0; r < replicate; ++r) ids.insert(ids.end(), base.begin(), base.end());
  constexpr std::size_t kSeqLen = 4096;

  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  std::printf("%-22s %12s %10s %14s %14s %14s %8s\n", "layout/layer", "rows", "kernel ms", "G rows/s", "memset GB/s",
              "d2d GB/s", "vs write");
  for (const char* preset : {"deepseek-v4.1-flash", "engram-demo"}) {
    auto layout = *engram::Layout::Preset(preset);
    const std::size_t hist = static_cast<std::size_t>(layout.max_ngram() - 1);
    std::vector<std::int32_t> window;
    std::vector<std::uint32_t> begin = {0};
    for (std::size_t s = 0; s < ids.size(); s += kSeqLen) {
      const std::size_t len = std::min(kSeqLen, ids.size() - s);
      window.insert(window.end(), hist, layout.pad_id());
      window.insert(window.end(), ids.begin() + static_cast<std::ptrdiff_t>(s),
                    ids.begin() + static_cast<std::ptrdiff_t>(s + len));
      begin.push_back(begin.back() + static_cast<std::uint32_t>(len));
    }
    const std::size_t rows = ids.size() * static_cast<std::size_t>(layout.columns());
    std::int32_t* d_window;
    std::uint32_t* d_begin;
    std::int64_t* d_rows;
    std::int64_t* d_copy;
    CHECK_CUDA(cudaMalloc(&d_window, window.size() * 4));
    CHECK_CUDA(cudaMalloc(&d_begin, begin.size() * 4));
    CHECK_CUDA(cudaMalloc(&d_rows, rows * 8));
    CHECK_CUDA(cudaMalloc(&d_copy, rows * 8));
    CHECK_CUDA(cudaMemcpy(d_window, window.data(), window.size() * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(d_begin, begin.data(), begin.size() * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemset(d_copy, 1, rows * 8));
    const float memset_ms = MedianMs([&] { CHECK_CUDA(cudaMemsetAsync(d_rows, 0, rows * 8, stream)); }, stream, 20);
    const float d2d_ms = MedianMs(
        [&] { CHECK_CUDA(cudaMemcpyAsync(d_rows, d_copy, rows * 8, cudaMemcpyDeviceToDevice, stream)); }, stream, 20);
    for (int li = 0; li < layout.num_layers(); ++li) {
      auto hasher = engram::gpu::DeviceLayerHasher::Create(layout, li);
      if (!hasher.ok()) {
        std::fprintf(stderr, "%s\n", hasher.status().ToString().c_str());
        return 1;
      }
      engram::gpu::HashBatch batch{d_window, d_begin, static_cast<std::uint32_t>(begin.size() - 1),
                                   static_cast<std::uint32_t>(ids.size()), d_rows};
      const float ms = MedianMs(
          [&] {
            if (!hasher->HashAsync(batch, stream).ok()) std::exit(1);
          },
          stream, 20);
      const double rate = static_cast<double>(rows) / (ms * 1e-3);
      std::printf("%-22s %12zu %10.3f %14.2f %14.1f %14.1f %7.0f%%\n",
                  (std::string(preset) + "/" + std::to_string(layout.layer(li).layer_id)).c_str(), rows, ms, rate / 1e9,
                  rows * 8 / (memset_ms * 1e-3) / 1e9, 2.0 * rows * 8 / (d2d_ms * 1e-3) / 1e9, 100.0 * memset_ms / ms);
    }
    CHECK_CUDA(cudaFree(d_window));
    CHECK_CUDA(cudaFree(d_begin));
    CHECK_CUDA(cudaFree(d_rows));
    CHECK_CUDA(cudaFree(d_copy));
  }
  std::printf(
      "(vs write: time of a memset of the same output bytes over the kernel's time; d2d counts bytes read + "
      "written)\n");
  CHECK_CUDA(cudaStreamDestroy(stream));
  return 0;
}
