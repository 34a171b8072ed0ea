#include <cuda_runtime_api.h>

#include <string>
#include <utility>
#include <vector>

#include "cuda_check.hpp"
#include "engram/detail/hash_math.hpp"
#include "engram/gpu/hash.hpp"

namespace engram::gpu {
namespace {

struct KernelArgs {
  HashBatch batch;
  const engram::detail::RegionHash* regions;
  std::uint64_t multipliers[kMaxNgram];
  std::uint64_t pad;
  int history;
  int heads;
  int columns;
};

// One thread per output row (token t, column c): consecutive threads write consecutive row ids, so
// stores are coalesced. The mix for column c's order is recomputed per thread from at most max_ngram
// ids (cached loads); that costs less than the 8-byte store it feeds. Index is uint32_t when the batch
// has fewer than 2^31 outputs (every realistic step): 64-bit division costs tens of instructions.
template <typename Index>
__global__ void HashKernel(KernelArgs a) {
  const Index total = static_cast<Index>(a.batch.num_tokens) * static_cast<Index>(a.columns);
  const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const auto t = static_cast<std::uint32_t>(i / static_cast<Index>(a.columns));
    const int c = static_cast<int>(i - static_cast<Index>(t) * static_cast<Index>(a.columns));
    // The segment holding token t: the last s with segment_begin[s] <= t.
    std::uint32_t lo = 0;
    std::uint32_t hi = a.batch.num_segments;
    while (hi - lo > 1) {
      const std::uint32_t mid = (lo + hi) / 2;
      if (__ldg(a.batch.segment_begin + mid) <= t) {
        lo = mid;
      } else {
        hi = mid;
      }
    }
    const std::uint32_t seg_begin = __ldg(a.batch.segment_begin + lo);
    const std::int32_t* x = a.batch.window + static_cast<std::uint64_t>(seg_begin) +
                            static_cast<std::uint64_t>(lo) * static_cast<std::uint32_t>(a.history) +
                            static_cast<std::uint32_t>(a.history) + (t - seg_begin);
    const int n = 2 + c / a.heads;
    std::int32_t v = __ldg(x);
    bool dead = v < 0;
    std::uint64_t mix = (dead ? a.pad : static_cast<std::uint64_t>(v)) * a.multipliers[0];
    for (int j = 1; j < n; ++j) {
      v = __ldg(x - j);
      dead = dead || v < 0;
      mix ^= (dead ? a.pad : static_cast<std::uint64_t>(v)) * a.multipliers[j];
    }
    a.batch.rows[i] = engram::detail::RegionRow(mix, a.regions[c]);
  }
}

}  // namespace

Result<DeviceLayerHasher> DeviceLayerHasher::Create(const Layout& layout, int layer_index) {
  if (layer_index < 0 || layer_index >= layout.num_layers()) {
    return Status::OutOfRange("layer index " + std::to_string(layer_index) + " is outside 0.." +
                              std::to_string(layout.num_layers() - 1));
  }
  DeviceLayerHasher h;
  const LayerSpec& l = layout.layer(layer_index);
  h.max_ngram_ = layout.max_ngram();
  h.heads_ = layout.heads();
  h.columns_ = layout.columns();
  h.pad_id_ = layout.pad_id();
  for (int j = 0; j < h.max_ngram_; ++j)
    h.multipliers_[j] = static_cast<std::uint64_t>(l.multipliers[static_cast<std::size_t>(j)]);
  std::vector<engram::detail::RegionHash> regions;
  for (int c = 0; c < h.columns_; ++c) {
    regions.push_back(engram::detail::MakeRegionHash(static_cast<std::uint64_t>(l.primes[static_cast<std::size_t>(c)]),
                                                     layout.region_offset(layer_index, c)));
  }
  const std::size_t bytes = regions.size() * sizeof(engram::detail::RegionHash);
  ENGRAM_CUDA_RETURN(cudaMalloc(&h.regions_, bytes));
  ENGRAM_CUDA_RETURN(cudaMemcpy(h.regions_, regions.data(), bytes, cudaMemcpyHostToDevice));
  return Result<DeviceLayerHasher>(std::move(h));
}

DeviceLayerHasher::DeviceLayerHasher(DeviceLayerHasher&& o) noexcept {
  *this = std::move(o);
}

DeviceLayerHasher& DeviceLayerHasher::operator=(DeviceLayerHasher&& o) noexcept {
  if (this != &o) {
    if (regions_ != nullptr) cudaFree(regions_);
    regions_ = std::exchange(o.regions_, nullptr);
    for (int j = 0; j < kMaxNgram; ++j) multipliers_[j] = o.multipliers_[j];
    pad_id_ = o.pad_id_;
    max_ngram_ = o.max_ngram_;
    heads_ = o.heads_;
    columns_ = o.columns_;
  }
  return *this;
}

DeviceLayerHasher::~DeviceLayerHasher() {
  // Owned by the caller, never a static: this does not run after the CUDA runtime has shut down.
  if (regions_ != nullptr) cudaFree(regions_);
}

Status DeviceLayerHasher::HashAsync(const HashBatch& batch, Stream stream) const {
  if (batch.num_tokens == 0) return Status::Ok();
  if (batch.num_segments == 0 || batch.window == nullptr || batch.segment_begin == nullptr || batch.rows == nullptr) {
    return Status::InvalidArgument("HashAsync: a batch with tokens needs segments, a window, segment_begin and rows");
  }
  KernelArgs a{};
  a.batch = batch;
  a.regions = static_cast<const engram::detail::RegionHash*>(regions_);
  for (int j = 0; j < kMaxNgram; ++j) a.multipliers[j] = multipliers_[j];
  a.pad = static_cast<std::uint64_t>(pad_id_);
  a.history = max_ngram_ - 1;
  a.heads = heads_;
  a.columns = columns_;
  const std::uint64_t total = static_cast<std::uint64_t>(batch.num_tokens) * static_cast<std::uint64_t>(columns_);
  constexpr unsigned kThreads = 256;
  const std::uint64_t blocks_needed = (total + kThreads - 1) / kThreads;
  const auto blocks = static_cast<unsigned>(blocks_needed < (1U << 20) ? blocks_needed : (1U << 20));
  if (total < (1ULL << 31)) {  // i + stride stays below 2^32: no wrap-around
    HashKernel<std::uint32_t><<<blocks, kThreads, 0, stream>>>(a);
  } else {
    HashKernel<std::uint64_t><<<blocks, kThreads, 0, stream>>>(a);
  }
  ENGRAM_CUDA_RETURN(cudaGetLastError());
  return Status::Ok();
}

}  // namespace engram::gpu
