// The GPU working set: the device side of the prefetcher. For each step and Engram layer it puts the
// rows the layer reads into GPU memory, in the layout the layer consumes, without the engine's compute
// stream waiting on the host. Compiles without CUDA headers.
//
// A step goes: Submit (host: ids appended, the prefetcher's worker hashes, de-duplicates and plans each
// layer against the HBM cache) -> for the rows the device does not hold: host tier / store -> pinned
// staging -> one cudaMemcpyAsync on the working set's copy stream (the staged path), or a kernel reading
// them from mapped pinned host memory (the zero-copy path, for resident host regions) -> an assembly
// kernel writes the layer's output: rows [T, H, row_bytes] in token order and, for FP8 rows, BF16
// [T, H * dim], DEAD positions zeroed -> newly read rows are copied into the HBM cache -> a ready flag.
//
// Hand-off: every step uses one of `steps_in_flight` slots ((step - 1) % steps_in_flight); a slot's
// output buffers keep their addresses for the working set's life. Per (slot, layer) there is a flag in
// device memory: the copy stream waits until it is 0 (the previous user of the slot is done), writes the
// output, then sets it to 1. Wait(step, layer, stream) enqueues "wait until 1" on the engine's stream
// (cuStreamWaitValue32: the host never blocks); Done(step, layer, stream) enqueues "set to 0" after the
// engine's reads. Both are stream memory operations, so the consuming side of a step can be captured in a
// CUDA graph (WaitSlot / DoneSlot) and replayed for every step that uses the slot. Every Wait must be
// followed by a Done on some stream, or the slot is never reused and the copy stream stalls.
//
// With MissPath::kDevice the whole step runs on the device instead (hashing, cache, reads, assembly);
// the hand-off is the same.
//
// A layer that fails on the host (a read error, a corrupt row) still gets its flag set, with its output
// zeroed, so no stream hangs; Status(step, layer) reports the error.
//
// Thread safety: all methods may be called from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engram/gpu/device.hpp"
#include "engram/memory/host_tier.hpp"
#include "engram/memory/row_cache_policy.hpp"
#include "engram/prefetch/prefetcher.hpp"
#include "engram/status.hpp"
#include "engram/store/store.hpp"

namespace engram::gpu {

// How rows the HBM cache does not hold reach the device.
enum class MissPath : std::uint8_t {
  kAuto,      // measure both at Create on this machine, keep the faster (staged when zero-copy is impossible)
  kStaged,    // host gathers into pinned staging, one cudaMemcpyAsync per layer
  kZeroCopy,  // rows of resident host regions are read by the kernel through mapped memory; other rows staged
  // The whole step on the device, when every region is an HBM region or resident in mapped host memory:
  // the host only appends the ids and uploads the hash windows; kernels hash them (gpu/hash.hpp), look up
  // a set-associative HBM cache whose admission and eviction are decided on the device
  // (detail/set_cache.hpp), read misses through the mapping and assemble. No host work per row, so a
  // step's rows are ready as fast as the kernels run. kAuto takes it when zero-copy measures faster.
  kDevice,
};

[[nodiscard]] const char* MissPathName(MissPath p) noexcept;

// Whether each step's device work is timed (WorkingSetStats::copy_seconds, assemble_seconds,
// sort_seconds). Timing events cost the device time: on the H100, a decode step of 64 sequences with
// 256 B rows took ~8 us longer with them (51-54 against 58-59 M lookups/s, docs/benchmarks.md).
enum class DeviceTiming : std::uint8_t {
  kOff,  // those statistics stay 0
  kOn,
};

struct WorkingSetOptions {
  // Bytes of GPU memory for the HBM row cache: row slots plus its directory (8 B per slot and a device
  // hash table of 2-4 x 12 B per slot, for device-side lookups; with kDevice, 24 B of key and state per
  // slot and 8 B per set of 16). 0: no cache. Default: 1 GiB.
  std::uint64_t cache_bytes = 1ULL << 30;
  // The cache's admission and eviction (the host tier's policy code, run by the host for the device's
  // slots; not used by kDevice, whose cache decides on the device). Default: kAdaptiveFrequency.
  memory::RowCachePolicyOptions policy;
  // Regions held whole in HBM, loaded from the store at Create (they do not count against cache_bytes
  // but against device_budget_bytes). Default: none.
  std::vector<memory::RegionRef> hbm_regions;
  // Default: kAuto.
  MissPath path = MissPath::kAuto;
  // Steps whose outputs can exist at once (double buffering: step N+1 is fetched while step N is
  // consumed). Default: 2.
  std::uint32_t steps_in_flight = 2;
  // The most tokens a step may have (sizes the output buffers and device staging). Default: 16384.
  std::int64_t max_tokens = 16384;
  // kDevice: a step of at most this many lookups per layer (tokens x columns) resolves all its layers
  // (up to 4) in one kernel launch, then admits in one; its first layer is then ready when its last is.
  // Measured on the H100 (docs/gpu.md): decode B=1 (24 lookups) layer 0 ready 53 -> 43 us; B=64 (1,536
  // lookups, 2 steps in flight, 264 B rows) 41.8 M lookups/s against 37.1 M, layer 0 ready 141 against
  // 122 us (p50), layer 1 143 against 162 us. 0: one launch per layer always. Default: 2048 (V4.1:
  // decode up to 85 sequences).
  std::uint64_t fuse_lookups = 2048;
  // kDevice: a layer of at least this many lookups (and not fused) is hashed and sorted by row first
  // (a CUB radix sort on the device), then resolved in that order, so that its reads of mapped host
  // memory walk the tier in address order: random reads spread over more than ~0.5 GiB of mapped memory
  // slow down 2-4x on the H100 host (docs/gpu.md). Measured there (264 B rows, no HBM cache): prefill 16 K
  // 61 -> 176 M lookups/s, decode B=256 (6,144 lookups) 47 -> 55 M; when every row hits the HBM cache the
  // sort costs a prefill 26% (1.76 -> 1.30 G lookups/s). The sort (a hash kernel and a few CUB kernels)
  // costs ~30 us per layer: a decode step whose reads it shortens less loses (256 B rows, B=256 at 4,096
  // lookups: 75 -> 49 M lookups/s). Costs 24 bytes of GPU memory per lookup of max_tokens.
  // 0: never. Default: 8192 (V4.1: prefill chunks from 342 tokens, decode from 342 sequences).
  std::uint64_t sort_lookups_from = 8192;
  // kDevice, a layer in row order: consecutive lookups one warp resolves (even, 2 to 16). More a warp
  // bump a popular row's read count once per run instead of once per hit (a prefill's 2-grams); fewer
  // keep more warps in flight. 0: as many as leave ~32 warps for each SM, between 2 and 16 (H100, every
  // row an HBM hit: decode B=256 at 16 a warp ran 96 blocks on 132 SMs). Default: 0.
  std::uint32_t sorted_lookups_per_warp = 0;
  // Default: kOff.
  DeviceTiming device_timing = DeviceTiming::kOff;
  // Outputs to produce. rows: [T, H, row_bytes]; bf16: [T, H * dim] for FP8 rows. Defaults: both.
  bool rows_output = true;
  bool bf16_output = true;
  // Every byte of GPU memory the working set allocates (cache, HBM regions, outputs, staging, directory)
  // must fit in this; a configuration that does not is refused before anything is allocated. Use it to
  // emulate a smaller card. 0: no limit beyond the card. Default: 0.
  std::uint64_t device_budget_bytes = 0;
  // The host side. staging_bytes is taken from a pinned arena the working set owns (registered with
  // CUDA; kAuto measures the paths with it); the device pipeline frees it once chosen and its prefetcher
  // gathers nothing (one thread, no staging). `device` is set by the working set. Defaults:
  // PrefetcherOptions{}.
  prefetch::PrefetcherOptions prefetch;
};

// Which ids a step handed over in device memory carries (WorkingSet::SubmitDeviceIds).
enum class DeviceIds : std::uint8_t {
  kCompressed,  // compressed Engram ids: the token map already applied
  kRaw,         // tokenizer ids, mapped on the device with the store's token map
};

// One sequence of a step whose ids are in device memory: its ids are the next `tokens` of the step's id
// array (sequences back to back, in batch order).
struct DeviceSequenceInput {
  SequenceId sequence = 0;
  std::int64_t tokens = 0;
  std::span<const std::uint8_t> dead;  // host memory: empty, or one flag per token (non-zero: DEAD)
};

struct DeviceLayerOutput {
  std::int64_t tokens = 0;
  int columns = 0;
  std::uint32_t row_bytes = 0;
  std::uint32_t dim = 0;
  std::byte* rows = nullptr;      // device: [tokens, columns, row_bytes], or nullptr if not produced
  std::uint16_t* bf16 = nullptr;  // device: [tokens, columns * dim] BF16 bit patterns, or nullptr
};

struct WorkingSetStats {
  MissPath path = MissPath::kStaged;
  std::string path_reason;            // why this path (the measurement, or why zero-copy was impossible)
  double staged_rows_per_second = 0;  // measured at Create (kAuto), 0 if not measured
  double zero_copy_rows_per_second = 0;
  std::uint64_t device_bytes = 0;  // GPU memory allocated by the working set
  std::uint64_t device_budget_bytes = 0;
  std::uint64_t cache_slots = 0;
  std::uint64_t cache_held = 0;  // slots holding a row
  std::uint64_t hbm_region_rows = 0;
  // Distinct rows of all layers served so far, by source (kDevice: lookups, not distinct rows; stats()
  // copies the device counters on a stream of its own and waits for that small copy only, so finished
  // steps are counted and a step in flight in part; zero_copy_rows counts reads through the mapping).
  std::uint64_t hbm_region_hits = 0;
  std::uint64_t cache_hits = 0;
  std::uint64_t zero_copy_rows = 0;
  std::uint64_t staged_rows = 0;
  std::uint64_t staged_bytes = 0;  // copied host -> device (rows and descriptors)
  std::uint64_t admissions = 0;
  std::uint64_t evictions = 0;
  std::uint64_t table_rebuilds = 0;  // device hash table compactions
  std::uint64_t layers = 0;          // layer outputs produced
  std::uint64_t failed_layers = 0;
  // Device times, with device_timing kOn (else 0):
  double copy_seconds = 0;      // host -> device copies (events; finished steps); kDevice: not timed (the
                                // upload overlaps the step before)
  double assemble_seconds = 0;  // assembly, dequantisation and cache fills; kDevice: the resolve kernels
                                // (admission runs after the layer is released)
  double sort_seconds = 0;      // kDevice: hashing and sorting large layers by row
  prefetch::PrefetchStats host;
};

class WorkingSet {
 public:
  // `store` (and `host_tier`, optional) must outlive the working set; `version` is pinned for its life.
  // The current CUDA device is used. Errors: kUnavailable without a GPU; kResourceExhausted when the
  // configuration does not fit device_budget_bytes (or the card); kInvalidArgument for bad options.
  static Result<std::unique_ptr<WorkingSet>> Create(const store::Store& store, store::VersionHandle version,
                                                    memory::HostTier* host_tier, const WorkingSetOptions& options = {});
  // Waits for the device work enqueued so far, then frees everything.
  ~WorkingSet();
  WorkingSet(const WorkingSet&) = delete;
  WorkingSet& operator=(const WorkingSet&) = delete;

  // Sequences (as Prefetcher).
  [[nodiscard]] Result<SequenceId> CreateSequence();
  [[nodiscard]] Result<SequenceId> Fork(SequenceId parent);
  [[nodiscard]] Status Release(SequenceId id);
  [[nodiscard]] Status Rollback(SequenceId id, std::int64_t k);

  // Appends the batch and queues the step (at most max_tokens tokens). Steps are numbered 1, 2, 3, ...
  [[nodiscard]] Result<prefetch::StepId> Submit(std::span<const prefetch::SequenceInput> batch);
  // Like Submit, for ids already on the device (an engine's sampled tokens): `ids` holds the step's new
  // ids (device memory, sequences back to back in batch order), written by work enqueued on `producer`
  // before this call. The step waits for that work on the device, never on the host; work enqueued on
  // `producer` after this call (such as the next overwrite of `ids`) runs after the step has read them.
  // Device pipeline only (kFailedPrecondition otherwise); kRaw needs a store with a token map.
  //
  // The host learns the ids through a small copy after the step's upload, and appends them to the
  // sequences' history before the next call that needs it (any Submit, Fork, Rollback, Release, or
  // LayerStatus of this step): that call first waits on the host for the copy, which in a decode loop
  // finished long before. An id outside the token map, or a compressed id outside [0, V'), is read as a
  // DEAD position on the device (its rows are zeros) and fails the step (LayerStatus: kInvalidArgument
  // naming the sequence, position and id) and its sequence: later calls with that sequence return the
  // same error until it is released. A `producer` that is capturing a CUDA graph is refused
  // (kFailedPrecondition).
  [[nodiscard]] Result<prefetch::StepId> SubmitDeviceIds(std::span<const DeviceSequenceInput> batch,
                                                         const std::int32_t* ids, DeviceIds kind, Stream producer);
  // Makes `stream` wait until the layer's output is on the device. Never blocks the host.
  // kFailedPrecondition if the previous step in the same slot was not Done for this layer.
  [[nodiscard]] Status Wait(prefetch::StepId step, int layer_index, Stream stream);
  // Enqueues on `stream`, after the work that reads the layer's output, the release of the output.
  [[nodiscard]] Status Done(prefetch::StepId step, int layer_index, Stream stream);
  // Capture-safe forms: the same stream operations by slot, with no host-side bookkeeping.
  [[nodiscard]] Status WaitSlot(std::uint32_t slot, int layer_index, Stream stream) const;
  [[nodiscard]] Status DoneSlot(std::uint32_t slot, int layer_index, Stream stream) const;
  [[nodiscard]] std::uint32_t SlotOf(prefetch::StepId step) const noexcept;
  // The layer's device output buffers (stable addresses per slot; tokens is the step's count).
  [[nodiscard]] Result<DeviceLayerOutput> Output(prefetch::StepId step, int layer_index) const;
  [[nodiscard]] Result<DeviceLayerOutput> SlotOutput(std::uint32_t slot, int layer_index) const;
  // Blocks until the layer's host side and its device work are done; its error if it failed (its device
  // output is then zeros).
  [[nodiscard]] Status LayerStatus(prefetch::StepId step, int layer_index);
  // Releases the step's host staging once its copies are done (in the background; never blocks).
  [[nodiscard]] Status Finish(prefetch::StepId step);

  // Device-side lookup in the HBM cache: for `n` global row ids of the layer (device memory), writes the
  // cache slot of each (-1 if not cached) to `slots` (device memory), on `stream`. It sees the cache as
  // the copy stream leaves it: order `stream` after a Wait for the layer whose state it should see. Steps
  // submitted after that one may evict rows while `stream` runs: read the slots' rows (CacheSlotRow)
  // before submitting more steps, or synchronise first. With kDevice, slots are set * 16 + way, and a
  // layer's misses are admitted just after its flag is set (Wait for it returns first): order `stream`
  // after a Wait of a later step, or synchronise, to see them.
  [[nodiscard]] Status LookupAsync(int layer_index, const std::int64_t* rows, std::uint32_t n, std::int32_t* slots,
                                   Stream stream) const;
  // Device address of cache slot `slot`'s row (row_bytes bytes).
  [[nodiscard]] const std::byte* CacheSlotRow(std::int32_t slot) const noexcept;

  // Waits (on the host) until the copy stream has done everything enqueued so far, which includes
  // waiting for consumers to release (Done) the slots that later steps reuse.
  [[nodiscard]] Status Synchronize();
  [[nodiscard]] WorkingSetStats stats() const;
  [[nodiscard]] std::string StatsJson() const;
  [[nodiscard]] const Layout& layout() const noexcept;

  struct Impl;

 private:
  explicit WorkingSet(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace engram::gpu
