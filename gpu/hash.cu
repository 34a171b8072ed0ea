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

constexpr int kTileTokens = 128;  // tokens per tile = threads per block

// Tiled in two phases per tile of kTileTokens tokens:
//   1. one thread per token finds its segment (binary search over segment_begin), reads its window and
//      computes the mix of every order into shared memory (once per token, not once per row);
//   2. the block writes the tile's tokens x columns row ids in output order: consecutive threads write
//      consecutive int64s (coalesced), each reducing a shared mix by its region's prime.
// Region constants are staged in shared memory once per block. Grid-stride over tiles.
__global__ void __launch_bounds__(kTileTokens) HashKernel(KernelArgs a) {
  __shared__ engram::detail::RegionHash regions[kMaxColumns];
  __shared__ std::uint64_t mixes[(kMaxNgram - 1) * kTileTokens];  // [order][token]
  const int tid = static_cast<int>(threadIdx.x);
  for (int c = tid; c < a.columns; c += kTileTokens) regions[c] = a.regions[c];
  const int orders = a.history;  // max_ngram - 1
  const std::uint32_t tiles = (a.batch.num_tokens + kTileTokens - 1) / kTileTokens;
  for (std::uint32_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const std::uint32_t t0 = tile * kTileTokens;
    const std::uint32_t t = t0 + static_cast<std::uint32_t>(tid);
    __syncthreads();  // regions staged; the previous tile's mixes consumed
    if (t < a.batch.num_tokens) {
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
                              static_cast<std::uint64_t>(lo) * static_cast<std::uint32_t>(orders) +
                              static_cast<std::uint32_t>(orders) + (t - seg_begin);
      std::int32_t v = __ldg(x);
      bool dead = v < 0;
      std::uint64_t mix = (dead ? a.pad : static_cast<std::uint64_t>(v)) * a.multipliers[0];
      for (int j = 1; j <= orders; ++j) {
        v = __ldg(x - j);
        dead = dead || v < 0;
        mix ^= (dead ? a.pad : static_cast<std::uint64_t>(v)) * a.multipliers[j];
        mixes[(j - 1) * kTileTokens + tid] = mix;
      }
    }
    __syncthreads();
    const std::uint32_t tile_tokens = min(static_cast<std::uint32_t>(kTileTokens), a.batch.num_tokens - t0);
    const int count = static_cast<int>(tile_tokens) * a.columns;
    std::int64_t* out = a.batch.rows + static_cast<std::uint64_t>(t0) * static_cast<std::uint32_t>(a.columns);
    for (int k = tid; k < count; k += kTileTokens) {
      const int tt = k / a.columns;
      const int c = k - tt * a.columns;
      out[k] = engram::detail::RegionRow(mixes[(c / a.heads) * kTileTokens + tt], regions[c]);
    }
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

DeviceHashParams DeviceLayerHasher::params() const noexcept {
  DeviceHashParams p;
  p.regions = static_cast<const engram::detail::RegionHash*>(regions_);
  for (int j = 0; j < kMaxNgram; ++j) p.multipliers[j] = multipliers_[j];
  p.pad = static_cast<std::uint64_t>(pad_id_);
  p.heads = heads_;
  p.max_ngram = max_ngram_;
  return p;
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
  // Enough tiles in flight to fill the device several times over; the grid strides over the rest.
  const std::uint32_t tiles = (batch.num_tokens + kTileTokens - 1) / kTileTokens;
  const unsigned blocks = tiles < (1U << 16) ? tiles : (1U << 16);
  HashKernel<<<blocks, kTileTokens, 0, stream>>>(a);
  ENGRAM_CUDA_RETURN(cudaGetLastError());
  return Status::Ok();
}

}  // namespace engram::gpu
