// Prefetcher: from the token ids of a serving step to every Engram layer's rows, staged in host memory
// before the layer runs (the CPU backend; the GPU working set consumes the same staging).
//
// A step is a batch of sequences, each with its newly appended tokens (a prefill chunk or one decode
// token) and optional DEAD marks. Submit appends them to the sequences (kept here: rollback, fork and
// release as in engram/sequence.hpp), hashes every layer and queues the step; a worker thread serves
// layers in deadline order (layer 1 before layer 14), each through:
//   row ids -> de-duplicate across the batch -> host tier (resident regions, then the row cache) ->
//   store reads of the misses (io_uring) -> admission into the host cache -> gathers into the step's
//   staging buffer on gather_threads threads -> DEAD positions zeroed -> BF16 dequantisation (FP8) ->
//   the layer is ready.
// Wait(step, layer) blocks until that layer is ready (or failed, with the error naming row, layer and
// file); later layers keep going and later steps are served normally after an error.
//
// Output of a layer: rows [T, H, row_bytes] in token order (T: the step's tokens, sequences in batch
// order; H: columns, (max_ngram - 1) x heads), and for FP8 rows, if asked, BF16 [T, H x dim].
//
// Thread safety: all methods may be called from any thread. Steps are numbered 1, 2, 3, ... in the order
// Submit queued them.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engram/memory/buffer_pool.hpp"
#include "engram/memory/host_tier.hpp"
#include "engram/sequence.hpp"
#include "engram/status.hpp"
#include "engram/store/store.hpp"

namespace engram::prefetch {

enum class Dequantize : std::uint8_t {
  kNone,  // rows only
  kBf16,  // also BF16 values for FP8 rows (ignored for other row formats)
};

using StepId = std::uint64_t;

// What the prefetcher hands a device sink for one layer of one step (valid during the call only).
struct DeviceLayerInput {
  std::int64_t tokens = 0;
  int columns = 0;
  // Distinct rows of the layer (DEAD positions excluded), in the order given to Plan.
  std::span<const std::int64_t> rows;
  // Per lookup (token-major, tokens x columns): index into `rows`, or -1 for a DEAD position.
  std::span<const std::int32_t> lookup;
  // The rows Plan asked to be staged, in the order of `rows`, back to back: [staged, row_bytes].
  std::span<const std::byte> staged;
};

// The device side of the prefetcher (engram::gpu::WorkingSet implements it). Both calls come from the
// prefetcher's worker thread, layer by layer and step by step, in the order the layers are served, so a
// sink can keep a directory of what the device holds in step with what it enqueues.
class DeviceSink {
 public:
  virtual ~DeviceSink() = default;
  // After de-duplication: sets stage[i] = 1 for each distinct row (global row id, and its column) the
  // host must stage, 0 for rows the device holds or reads itself. An error fails the layer.
  // `tokens`: the step's token count.
  [[nodiscard]] virtual Status Plan(StepId step, int layer_index, std::int64_t tokens,
                                    std::span<const std::int64_t> rows, std::span<const int> columns,
                                    std::span<std::uint8_t> stage) = 0;
  // The staged rows are ready: enqueue the device work. An error fails the layer.
  [[nodiscard]] virtual Status Ready(StepId step, int layer_index, const DeviceLayerInput& input) = 0;
  // The layer failed on the host (after a Plan): undo nothing, but never expect Ready for it.
  virtual void Failed(StepId step, int layer_index, const Status& status) = 0;
};

struct PrefetcherOptions {
  // Threads that gather rows into staging (and look up the host tier). Default: 4.
  std::uint32_t gather_threads = 4;
  // Bytes of staging for the outputs of all steps in flight (rows, plus BF16 if asked). A step that
  // cannot fit at all is refused by Submit (kResourceExhausted); one that must wait for earlier steps
  // to Finish waits up to staging_timeout, then fails with kDeadlineExceeded. Default: 256 MiB.
  std::uint64_t staging_bytes = 256ULL << 20;
  // If set, the staging budget is taken from this arena (pinned, huge pages: what a GPU copies from
  // fastest); else from the heap. Not owned; must outlive the prefetcher. Default: none.
  memory::PinnedArena* staging_arena = nullptr;
  // How long Submit waits for staging. Default: 10 s.
  std::chrono::milliseconds staging_timeout{10'000};
  // Default: kBf16.
  Dequantize dequantize = Dequantize::kBf16;
  // Per-sequence history. Default: SequenceOptions{}.
  SequenceOptions sequence;
  // When every region of every layer is resident in the host tier, steps of at most this many row
  // lookups (tokens x columns x layers) are served on the calling thread inside Submit: a few
  // microseconds of copying instead of a hand-off to the worker and back (~20-60 us). 0: never.
  // Default: 8192 (a decode step of 170 sequences with V4.1).
  std::uint64_t inline_rows = 8192;
  // A device side (the GPU working set). With one, a layer's output on the host is its distinct rows,
  // compact (only those the sink asked for), handed to the sink; no BF16 is made on the host, and no step
  // is served inline. Not owned; must outlive the prefetcher. Default: none.
  DeviceSink* device = nullptr;
};

struct SequenceInput {
  SequenceId sequence = 0;
  std::span<const std::int32_t> tokens;  // compressed ids
  std::span<const std::uint8_t> dead;    // empty, or one flag per token (non-zero: DEAD)
};

// A step's hash windows as gpu::HashBatch reads them: the batch's s-th sequence at
// window[segment_begin[s] + s * (max_ngram - 1)]: its last max_ngram - 1 ids (pad before its start,
// kDeadId where DEAD), then its new ids (kDeadId where DEAD).
struct StepWindows {
  std::vector<std::int32_t> window;
  std::vector<std::uint32_t> segment_begin;  // batch size + 1 prefix sums of token counts; [0] = 0
};

struct LayerOutput {
  std::int64_t tokens = 0;
  int columns = 0;
  std::uint32_t row_bytes = 0;
  std::uint32_t dim = 0;
  const std::byte* rows = nullptr;      // [tokens, columns, row_bytes]
  const std::uint16_t* bf16 = nullptr;  // [tokens, columns * dim] BF16 bit patterns, or nullptr
};

struct LayerStats {
  std::int32_t layer_id = 0;
  std::uint64_t lookups = 0;        // row lookups (tokens x columns)
  std::uint64_t distinct = 0;       // after de-duplication across the batch
  std::uint64_t resident_hits = 0;  // distinct rows served by resident regions
  std::uint64_t cache_hits = 0;     // ... by the host row cache
  std::uint64_t disk_rows = 0;      // ... read from the store
  std::uint64_t disk_reads = 0;     // read requests those store reads issued (their own: Store::ReadRows'
                                    // ReadStats, not counting other readers of the same store)
  std::uint64_t disk_bytes = 0;     // bytes they read
  std::uint64_t failed_steps = 0;
  double hash_seconds = 0;    // hashing the layer's row ids (on gather_threads threads); 0 for a layer whose
                              // regions are all resident: each thread gathers the rows it has just hashed,
                              // and both are counted in gather_seconds
  double lookup_seconds = 0;  // de-duplication, host tier lookups and the device sink's plan
  double gather_seconds = 0;  // copying rows into staging (and DEAD zeroing, BF16 on the host)
  double disk_seconds = 0;    // time in store reads
  double ready_seconds = 0;   // from Submit to ready, summed over steps
  double waited_seconds = 0;  // time callers spent blocked in Wait
};

struct PrefetchStats {
  std::uint64_t steps = 0;
  std::uint64_t tokens = 0;
  std::uint64_t hints = 0;
  std::uint64_t hint_rows = 0;    // rows hints read from disk into the host cache
  std::uint64_t hint_errors = 0;  // hint reads that failed (logged; the steps that need the rows report them)
  std::vector<LayerStats> layers;
  memory::HostTierStats host;
  memory::BufferPoolStats staging;
  store::StoreIoStats io;
};

class Prefetcher {
 public:
  // `store` and `host_tier` (optional) must outlive the prefetcher; `version` is pinned for its life.
  static Result<std::unique_ptr<Prefetcher>> Create(const store::Store& store, store::VersionHandle version,
                                                    memory::HostTier* host_tier, const PrefetcherOptions& options = {});
  // Finishes the steps in flight, then stops.
  ~Prefetcher();
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;

  [[nodiscard]] Result<SequenceId> CreateSequence();
  [[nodiscard]] Result<SequenceId> Fork(SequenceId parent);
  [[nodiscard]] Status Release(SequenceId id);
  // Removes the last k tokens of a sequence (kOutOfRange past its start or its retained history).
  [[nodiscard]] Status Rollback(SequenceId id, std::int64_t k);

  // Appends the batch's tokens and queues the step. Every sequence id and token is checked first: on an
  // error nothing is appended and no step is queued.
  [[nodiscard]] Result<StepId> Submit(std::span<const SequenceInput> batch);
  // Appends the batch's tokens exactly as Submit does (the same checks; on an error nothing is appended)
  // and returns the step's hash windows, queuing no work: for a device side that hashes, looks up and
  // reads rows on its own (gpu::WorkingSet's device pipeline). No step id is used.
  [[nodiscard]] Result<StepWindows> Append(std::span<const SequenceInput> batch);
  // The windows Append would return for `batch` (the same checks), appending nothing: for a device side
  // that places the new ids itself (gpu::WorkingSet::SubmitDeviceIds) and appends them when it has them.
  [[nodiscard]] Result<StepWindows> Windows(std::span<const SequenceInput> batch);
  // Blocks until the layer at `layer_index` of step `id` is ready; its error if it failed.
  [[nodiscard]] Status Wait(StepId id, int layer_index);
  // The layer's output (after a successful Wait); valid until Finish.
  [[nodiscard]] Result<LayerOutput> Output(StepId id, int layer_index) const;
  // Releases the step's staging (waits for its layers first).
  [[nodiscard]] Status Finish(StepId id);

  // Reads the rows `draft` tokens would need after sequence `id`'s current history into the host cache,
  // when no step is waiting (never delays a step). The sequence itself is not changed.
  [[nodiscard]] Status Hint(SequenceId id, std::span<const std::int32_t> draft);

  [[nodiscard]] PrefetchStats stats() const;
  [[nodiscard]] std::string StatsJson() const;

  struct Impl;

 private:
  explicit Prefetcher(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace engram::prefetch
