// PinnedArena registered with CUDA: the device reads it by copy and through its mapped address.
// Skips with a message without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "engram/gpu/host_memory.hpp"
#include "engram/memory/pinned_arena.hpp"

namespace engram {
namespace {

__global__ void SumBytes(const unsigned char* p, std::size_t n, unsigned long long* out) {
  unsigned long long s = 0;
  for (std::size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) s += p[i];
  atomicAdd(out, s);
}

class HostMemoryGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    auto r = gpu::MakeCudaHostRegistrar();
    if (!r.ok()) GTEST_SKIP() << "skipped: no usable GPU: " << r.status().ToString();
    registrar_ = std::move(r).value();
  }
  std::unique_ptr<memory::HostRegistrar> registrar_;
};

TEST_F(HostMemoryGpu, RegisteredArenaIsPinnedAndMapped) {
  memory::ArenaOptions o;
  o.registrar = registrar_.get();
  auto arena = memory::PinnedArena::Create(64ULL << 20, o);
  ASSERT_TRUE(arena.ok()) << arena.status().ToString();
  ASSERT_TRUE((*arena)->report().registered);
  auto* host = reinterpret_cast<unsigned char*>((*arena)->data());
  const std::size_t n = (*arena)->size();
  unsigned long long expect = 0;
  for (std::size_t i = 0; i < n; ++i) {
    host[i] = static_cast<unsigned char>(i * 131 + 7);
    expect += host[i];
  }
  cudaPointerAttributes attr{};
  ASSERT_EQ(cudaPointerGetAttributes(&attr, host), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeHost);

  // Zero-copy: a kernel sums the bytes through the mapped device address.
  auto dev_view = gpu::MappedDevicePointer(host);
  ASSERT_TRUE(dev_view.ok()) << dev_view.status().ToString();
  unsigned long long* sum = nullptr;
  ASSERT_EQ(cudaMalloc(&sum, sizeof(*sum)), cudaSuccess);
  ASSERT_EQ(cudaMemset(sum, 0, sizeof(*sum)), cudaSuccess);
  SumBytes<<<256, 256>>>(static_cast<const unsigned char*>(*dev_view), n, sum);
  unsigned long long got = 0;
  ASSERT_EQ(cudaMemcpy(&got, sum, sizeof(got), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(got, expect);

  // Copy: an async copy from the arena lands byte for byte.
  void* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, n), cudaSuccess);
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(dev, host, n, cudaMemcpyHostToDevice, s), cudaSuccess);
  std::vector<unsigned char> back(n);
  ASSERT_EQ(cudaMemcpyAsync(back.data(), dev, n, cudaMemcpyDeviceToHost, s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(std::memcmp(back.data(), host, n), 0);
  cudaStreamDestroy(s);
  cudaFree(dev);
  cudaFree(sum);
}

TEST_F(HostMemoryGpu, UnregisteredMemoryHasNoDeviceAddress) {
  std::vector<unsigned char> plain(4096);
  auto r = gpu::MappedDevicePointer(plain.data());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace engram
