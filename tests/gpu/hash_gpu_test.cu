// Device hashing against the CPU hasher on the real trace. Skips with a message without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <random>

#include "../test_util.hpp"
#include "engram/gpu/hash.hpp"
#include "engram/hasher.hpp"

namespace engram {
namespace {

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

#define ENGRAM_REQUIRE_GPU()                                                         \
  do {                                                                               \
    auto engram_dev_ = gpu::CurrentDevice();                                         \
    if (!engram_dev_.ok()) {                                                         \
      GTEST_SKIP() << "skipped: no usable GPU: " << engram_dev_.status().ToString(); \
    }                                                                                \
  } while (0)

template <typename T>
struct DeviceArray {
  T* p = nullptr;
  std::size_t n = 0;
  explicit DeviceArray(std::size_t count) : n(count) {
    if (cudaMalloc(&p, std::max<std::size_t>(1, n) * sizeof(T)) != cudaSuccess) p = nullptr;
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { cudaFree(p); }
};

struct Batch {
  std::vector<std::int32_t> window;
  std::vector<std::uint32_t> begin;
  std::vector<std::vector<std::int32_t>> segment_windows;  // per segment, for the CPU path
};

// Segments of the trace (fresh sequences of seq_len tokens, with DEAD marks) laid out for the device.
Batch MakeBatch(const Layout& layout, const std::vector<std::int32_t>& ids, std::size_t seq_len, bool with_dead) {
  Batch b;
  std::mt19937 rng(5);
  b.begin.push_back(0);
  for (std::size_t s = 0; s < ids.size(); s += seq_len) {
    const std::size_t len = std::min(seq_len, ids.size() - s);
    std::vector<std::int32_t> w(static_cast<std::size_t>(layout.max_ngram() - 1), layout.pad_id());
    for (std::size_t i = 0; i < len; ++i) {
      w.push_back(with_dead && rng() % 64 == 0 ? kDeadId : ids[s + i]);
    }
    b.window.insert(b.window.end(), w.begin(), w.end());
    b.segment_windows.push_back(std::move(w));
    b.begin.push_back(b.begin.back() + static_cast<std::uint32_t>(len));
  }
  return b;
}

void CheckAgainstCpu(const char* preset, std::size_t seq_len, bool with_dead) {
  auto layout = Layout::Preset(preset);
  const auto& ids = test::BrownCompressed();
  ASSERT_FALSE(ids.empty());
  const Batch b = MakeBatch(*layout, ids, seq_len, with_dead);
  const auto cols = static_cast<std::size_t>(layout->columns());
  DeviceArray<std::int32_t> d_window(b.window.size());
  DeviceArray<std::uint32_t> d_begin(b.begin.size());
  DeviceArray<std::int64_t> d_rows(ids.size() * cols);
  ASSERT_NE(d_rows.p, nullptr);
  CUDA_OK(cudaMemcpy(d_window.p, b.window.data(), b.window.size() * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(d_begin.p, b.begin.data(), b.begin.size() * 4, cudaMemcpyHostToDevice));
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreate(&stream));
  for (int li = 0; li < layout->num_layers(); ++li) {
    auto dh = gpu::DeviceLayerHasher::Create(*layout, li);
    ASSERT_TRUE(dh.ok()) << dh.status().ToString();
    CUDA_OK(cudaMemsetAsync(d_rows.p, 0xAB, d_rows.n * 8, stream));  // poison: every output must be written
    gpu::HashBatch batch{d_window.p, d_begin.p, static_cast<std::uint32_t>(b.begin.size() - 1),
                         static_cast<std::uint32_t>(ids.size()), d_rows.p};
    ASSERT_TRUE(dh->HashAsync(batch, stream).ok());
    std::vector<std::int64_t> got(d_rows.n);
    CUDA_OK(cudaMemcpyAsync(got.data(), d_rows.p, got.size() * 8, cudaMemcpyDeviceToHost, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    auto h = LayerHasher::Create(*layout, li);
    std::vector<std::int64_t> expected;
    expected.reserve(got.size());
    for (const auto& w : b.segment_windows) {
      std::vector<std::int64_t> rows((w.size() - static_cast<std::size_t>(layout->max_ngram() - 1)) * cols);
      ASSERT_TRUE(h->HashWindow(w, rows).ok());
      expected.insert(expected.end(), rows.begin(), rows.end());
    }
    ASSERT_EQ(got, expected) << preset << " layer " << layout->layer(li).layer_id;
  }
  CUDA_OK(cudaStreamDestroy(stream));
}

TEST(GpuHash, FlashOneSequenceMatchesCpu) {
  ENGRAM_REQUIRE_GPU();
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  CheckAgainstCpu("deepseek-v4.1-flash", 1U << 30, false);
}

TEST(GpuHash, FlashSequencesWithDeadMarksMatchCpu) {
  ENGRAM_REQUIRE_GPU();
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  CheckAgainstCpu("deepseek-v4.1-flash", 4096, true);
}

TEST(GpuHash, DemoSequencesWithDeadMarksMatchCpu) {
  ENGRAM_REQUIRE_GPU();
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  CheckAgainstCpu("engram-demo", 777, true);
}

TEST(GpuHash, EmptyBatchIsANoOp) {
  ENGRAM_REQUIRE_GPU();
  auto dh = gpu::DeviceLayerHasher::Create(*Layout::Preset("engram-demo"), 0);
  ASSERT_TRUE(dh.ok());
  EXPECT_TRUE(dh->HashAsync(gpu::HashBatch{}, nullptr).ok());
}

TEST(GpuDevice, ReportsTheDevice) {
  ENGRAM_REQUIRE_GPU();
  auto d = gpu::CurrentDevice();
  ASSERT_TRUE(d.ok());
  EXPECT_GE(d->compute_major, 7);
  EXPECT_GT(d->multiprocessors, 0);
  std::printf("device: %s, sm_%d%d, %d SMs, %.1f GiB, driver %d, runtime %d\n", d->name.c_str(), d->compute_major,
              d->compute_minor, d->multiprocessors, static_cast<double>(d->total_memory) / (1 << 30), d->driver_version,
              d->runtime_version);
}

}  // namespace
}  // namespace engram
