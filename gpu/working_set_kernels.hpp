// Kernels of the GPU working set (internal): declared for host code, defined in working_set_kernels.cu.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "engram/detail/set_cache.hpp"
#include "engram/gpu/hash.hpp"
#include "engram/status.hpp"

namespace engram::gpu::kernels {

struct AssembleArgs {
  const std::uint64_t* src = nullptr;  // per lookup: device-readable address of its row, 0 for a DEAD
                                       // position; nullptr: every output zeroed
  std::byte* rows_out = nullptr;       // [n, row_bytes] or nullptr
  std::uint16_t* bf16_out = nullptr;   // [n, dim] or nullptr (FP8 rows only)
  std::uint64_t n = 0;                 // lookups
  std::uint32_t row_bytes = 0;         // a multiple of 4
  std::uint32_t dim = 0;               // FP8: codes per row (a multiple of 32), then dim / 32 scales
  std::uint32_t* error = nullptr;      // set to (first lookup with a NaN code or scale) + 1
};

// Loads every kernel of this file now. Under lazy module loading (CUDA's default) a kernel's first launch
// loads its module, which can wait for the whole device; with a stream already waiting on a flag that
// only a later kernel would set, that wait never ends. The working set calls this at Create.
Status Preload();

// Output assembly: rows in lookup order, DEAD positions zeroed, BF16 dequantisation (exactly as
// engram::prefetch::DequantizeRowE4M3). Two lookups per warp, as LaunchResolve.
Status LaunchAssemble(const AssembleArgs& a, cudaStream_t stream);

// Copies rows: fills[2 i] is a source address, fills[2 i + 1] a destination; a source of 0 is skipped.
Status LaunchFill(const std::uint64_t* fills, std::uint64_t n, std::uint32_t row_bytes, cudaStream_t stream);

// Gathers rows from source addresses into `out` back to back (the zero-copy calibration and baselines).
Status LaunchGather(const std::uint64_t* src, std::uint64_t n, std::byte* out, std::uint32_t row_bytes,
                    cudaStream_t stream);

// The HBM cache's device hash table: open addressing, linear probing, keys ~0 empty and ~0 - 1 deleted.
struct TableArgs {
  std::uint64_t* keys = nullptr;
  std::int32_t* slots = nullptr;
  std::uint64_t* slot_key = nullptr;  // per cache slot: its key, ~0 if empty
  std::uint64_t mask = 0;             // capacity - 1
};
Status LaunchTableErase(const TableArgs& t, const std::uint64_t* keys, std::uint64_t n, cudaStream_t stream);
// pairs[2 i] = key (~0: only empty the slot), pairs[2 i + 1] = slot; also sets slot_key.
Status LaunchTableInsert(const TableArgs& t, const std::uint64_t* pairs, std::uint64_t n, cudaStream_t stream);
// Re-inserts every slot's key into a table whose keys were just set to empty.
Status LaunchTableRebuild(const TableArgs& t, std::uint32_t cache_slots, cudaStream_t stream);
// slots_out[i] = slot of (key_base | rows[i]), or -1.
Status LaunchTableLookup(const TableArgs& t, std::uint64_t key_base, const std::int64_t* rows, std::uint32_t n,
                         std::int32_t* slots_out, cudaStream_t stream);

// The device pipeline (MissPath::kDevice): a layer's lookups resolved and assembled on the device.
// Where each column's rows come from: a device-readable address (an HBM region, or a resident host
// region through its mapping) of the region's first row.
struct ColumnSource {
  std::uint64_t base = 0;
  std::int64_t first = 0;    // the region's first global row id
  std::uint32_t cached = 0;  // 1: looked up in (and admitted to) the set cache; 0: an HBM region
  std::uint32_t order = 0;   // n-gram order
};

// The set-associative cache (detail/set_cache.hpp). sets == 0: none.
struct SetCacheArgs {
  std::uint64_t* keys = nullptr;           // [sets * kSetWays], kSetEmptyKey if empty
  engram::detail::SetWay* ways = nullptr;  // [sets * kSetWays]
  float* level = nullptr;                  // [sets]
  std::uint32_t* locks = nullptr;          // [sets], 0 free
  std::byte* rows = nullptr;               // [sets * kSetWays, row_bytes]
  std::uint32_t sets = 0;
};

// Device counters of the pipeline, accumulated over its life.
enum DeviceCounter : int { kCacheHits = 0, kHostReads, kRegionReads, kAdmissions, kEvictions, kNumDeviceCounters };

struct ResolveArgs {
  // Hashing, fused: lookup t * columns + c hashes the window ending at window[token_pos[t]] (that
  // token's id, kDeadId if DEAD; the ids before it are its history) for column c.
  const std::int32_t* window = nullptr;
  const std::uint32_t* token_pos = nullptr;  // [n / columns]
  DeviceHashParams hash;
  const ColumnSource* columns = nullptr;  // [columns], this layer's
  std::uint32_t num_columns = 0;
  std::uint64_t key_base = 0;  // memory::RowKey(layer, 0)
  SetCacheArgs cache;
  std::uint32_t* miss_count = nullptr;     // zeroed before the layer
  std::uint32_t* misses = nullptr;         // [n]: lookups to admit
  std::int64_t* miss_rows = nullptr;       // [n]: their rows
  unsigned long long* counters = nullptr;  // [kNumDeviceCounters]
  AssembleArgs out;                        // src unused
  // Address order (LaunchSortLookups): the launch's lookup k is position sorted_index[k] with row
  // sorted_rows[k] (sorted_dead: a DEAD position). nullptr: lookup k is position k, hashed here.
  const std::uint64_t* sorted_rows = nullptr;
  const std::uint32_t* sorted_index = nullptr;
  std::uint64_t sorted_dead = 0;
  // In address order, the consecutive lookups one warp takes (even, 2..16; set by LaunchSortLookups,
  // WorkingSetOptions::sorted_lookups_per_warp).
  std::uint32_t sorted_chunk = 2;
};

// Device buffers to sort a layer's lookups by row (CUB radix sort, double-buffered).
struct SortBuffers {
  std::uint64_t* keys[2] = {nullptr, nullptr};
  std::uint32_t* vals[2] = {nullptr, nullptr};
  void* temp = nullptr;
  std::uint64_t temp_bytes = 0;
  std::uint64_t capacity = 0;  // lookups
  int end_bit = 0;             // rows < 2^end_bit - 1; 2^end_bit - 1 marks a DEAD position
};
// CUB's temporary bytes for sorting `n` lookups on keys of `end_bit` bits.
Result<std::uint64_t> SortTempBytes(std::uint64_t n, int end_bit);
// Writes a step's new ids, handed over in device memory, into its uploaded windows: id k goes to
// window[token_pos[k]] unless the host marked that position DEAD (kDeadId). With `map` (raw tokenizer
// ids; map_size entries, -1 where undefined) id k is map[id]. An id the map does not cover or define, or
// a compressed id outside [0, vocab), is written as kDeadId: no row is read for it, and the host, which
// gets the same ids, fails the step and the sequence.
Status LaunchPlaceIds(const std::int32_t* ids, std::uint64_t n, const std::uint32_t* token_pos, std::int32_t* window,
                      const std::int32_t* map, std::uint32_t map_size, std::int64_t vocab, cudaStream_t stream);
// Hashes every lookup of layer `a` (its window and columns as for LaunchResolve) and sorts them by row,
// DEAD positions last, into `sb`; points a.sorted_rows / sorted_index / sorted_dead at the result, so
// that LaunchResolve reads host rows in address order (mapped reads spread over gigabytes slow down
// 2-4x in random order: docs/gpu.md). a.out.n <= sb.capacity.
// `per_warp`: ResolveArgs::sorted_chunk to set (even, 2..16), or 0 to choose it from the layer's size.
Status LaunchSortLookups(ResolveArgs& a, const SortBuffers& sb, std::uint32_t per_warp, cudaStream_t stream);
// Runs the sort's kernels once on `n` garbage keys (every size class the sort uses), so that lazy module
// loading never happens behind a stream that waits on a flag (see Preload).
Status WarmSort(const SortBuffers& sb, cudaStream_t stream);

// Layers resolved by one launch (blockIdx.y picks the layer): small steps pay one launch for all layers.
inline constexpr int kMaxFusedLayers = 4;
struct ResolveBatch {
  ResolveArgs layer[kMaxFusedLayers];
  int layers = 0;  // 1..kMaxFusedLayers; every layer has the same n
};

// Two lookups per warp: hashes each, finds the row (HBM region, cache hit, or the host through the
// mapping), writes the layer's outputs as LaunchAssemble does, and lists cache misses for LaunchAdmit.
Status LaunchResolve(const ResolveBatch& b, cudaStream_t stream);
// Admits the listed misses into the set cache, under per-set locks (a repeated row once), copying each
// from the layer's row output if there is one, else from its source again. `max_misses` bounds each
// layer's list. Every resolve of the batch must be done first (stream order).
Status LaunchAdmit(const ResolveBatch& b, std::uint64_t max_misses, cudaStream_t stream);
// slots_out[i] = cache slot of (key_base | rows[i]), or -1.
Status LaunchSetLookup(const SetCacheArgs& c, std::uint64_t key_base, const std::int64_t* rows, std::uint32_t n,
                       std::int32_t* slots_out, cudaStream_t stream);

}  // namespace engram::gpu::kernels
