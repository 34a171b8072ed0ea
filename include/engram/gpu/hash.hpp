// Hashing on the device: compressed ids already in GPU memory -> global row ids in GPU memory, with
// exactly the results of engram::Hasher (tests/gpu/hash_gpu_test.cu checks it on the real trace).
#pragma once

#include <cstdint>

#include "engram/detail/hash_math.hpp"
#include "engram/gpu/device.hpp"
#include "engram/layout.hpp"
#include "engram/status.hpp"

namespace engram::gpu {

// A batch of independent windows, one per segment (a sequence's newly appended tokens), laid out back
// to back in device memory: segment s occupies window[segment_begin[s] + s * H ..] where
// H = max_ngram - 1: H history ids (oldest first; pad before a sequence's start; kDeadId for DEAD),
// then its segment_begin[s+1] - segment_begin[s] tokens. All pointers are device pointers.
struct HashBatch {
  const std::int32_t* window = nullptr;
  const std::uint32_t* segment_begin = nullptr;  // num_segments + 1 prefix sums of token counts, [0] = 0
  std::uint32_t num_segments = 0;
  std::uint32_t num_tokens = 0;  // = segment_begin[num_segments]
  std::int64_t* rows = nullptr;  // num_tokens * columns outputs: rows[t * columns + c]
};

// What a kernel needs to hash one layer itself (engram::Hasher's arithmetic, detail/hash_math.hpp):
// for kernels that fuse hashing with what they do with the rows (the working set's device pipeline).
struct DeviceHashParams {
  const engram::detail::RegionHash* regions = nullptr;  // device array, by column
  std::uint64_t multipliers[kMaxNgram] = {};
  std::uint64_t pad = 0;  // the pad id, standing in for DEAD and pre-start positions
  int heads = 0;
  int max_ngram = 0;
};

// The constants of one Engram layer on the device. Move-only; owns a small device allocation.
class DeviceLayerHasher {
 public:
  // Uploads the layer's regions. Blocks until the upload is done (a synchronous cudaMemcpy).
  static Result<DeviceLayerHasher> Create(const Layout& layout, int layer_index);

  DeviceLayerHasher(DeviceLayerHasher&& other) noexcept;
  DeviceLayerHasher& operator=(DeviceLayerHasher&& other) noexcept;
  DeviceLayerHasher(const DeviceLayerHasher&) = delete;
  DeviceLayerHasher& operator=(const DeviceLayerHasher&) = delete;
  ~DeviceLayerHasher();

  [[nodiscard]] int columns() const noexcept { return columns_; }
  // Valid while this hasher lives.
  [[nodiscard]] DeviceHashParams params() const noexcept;

  // Enqueues the hash of `batch` on `stream`; returns without waiting. Errors: a launch failure
  // (kInternal with CUDA's message). Ids must be valid (as for engram::Hasher).
  [[nodiscard]] Status HashAsync(const HashBatch& batch, Stream stream) const;

 private:
  DeviceLayerHasher() = default;
  void* regions_ = nullptr;  // device array of detail::RegionHash, by column
  std::uint64_t multipliers_[kMaxNgram] = {};
  std::int32_t pad_id_ = 0;
  int max_ngram_ = 0;
  int heads_ = 0;
  int columns_ = 0;
};

}  // namespace engram::gpu
