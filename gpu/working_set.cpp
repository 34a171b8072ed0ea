#include "engram/gpu/working_set.hpp"

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <iterator>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <span>
#include <thread>

#include "../core/hash_mix.hpp"
#include "../core/thread_pool.hpp"
#include "cuda_check.hpp"
#include "engram/gpu/hash.hpp"
#include "engram/gpu/host_memory.hpp"
#include "engram/log.hpp"
#include "working_set_kernels.hpp"

namespace engram::gpu {

const char* MissPathName(MissPath p) noexcept {
  switch (p) {
    case MissPath::kAuto: return "auto";
    case MissPath::kStaged: return "staged";
    case MissPath::kZeroCopy: return "zero-copy";
    case MissPath::kDevice: return "device";
  }
  return "?";
}

namespace {

using Clock = std::chrono::steady_clock;
using prefetch::StepId;
constexpr std::uint64_t kEmptyKey = ~0ULL;

Status DriverStatus(CUresult r, const char* what) {
  if (r == CUDA_SUCCESS) return Status::Ok();
  return Status::Internal(std::string(what) + " failed: CUresult " + std::to_string(static_cast<int>(r)));
}

// Stream memory operations, from the driver through the runtime (no link against libcuda).
struct MemOps {
  using WaitFn = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);
  using WriteFn = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);
  using BatchFn = CUresult (*)(CUstream, unsigned int, CUstreamBatchMemOpParams*, unsigned int);
  WaitFn wait = nullptr;
  WriteFn write = nullptr;
  BatchFn batch = nullptr;
};

Result<MemOps> LoadMemOps() {
  MemOps m;
  cudaDriverEntryPointQueryResult q{};
  void* p = nullptr;
  ENGRAM_CUDA_RETURN(cudaGetDriverEntryPointByVersion("cuStreamWaitValue32", &p, 12000, cudaEnableDefault, &q));
  if (q != cudaDriverEntryPointSuccess || p == nullptr) {
    return Status::Unavailable("working set: the driver has no cuStreamWaitValue32 (stream memory operations)");
  }
  m.wait = reinterpret_cast<MemOps::WaitFn>(p);
  ENGRAM_CUDA_RETURN(cudaGetDriverEntryPointByVersion("cuStreamWriteValue32", &p, 12000, cudaEnableDefault, &q));
  if (q != cudaDriverEntryPointSuccess || p == nullptr) {
    return Status::Unavailable("working set: the driver has no cuStreamWriteValue32 (stream memory operations)");
  }
  m.write = reinterpret_cast<MemOps::WriteFn>(p);
  ENGRAM_CUDA_RETURN(cudaGetDriverEntryPointByVersion("cuStreamBatchMemOp", &p, 12000, cudaEnableDefault, &q));
  if (q != cudaDriverEntryPointSuccess || p == nullptr) {
    return Status::Unavailable("working set: the driver has no cuStreamBatchMemOp (stream memory operations)");
  }
  m.batch = reinterpret_cast<MemOps::BatchFn>(p);
  return m;
}

// One call for several waits (value == 0) or writes (value 1) of 32-bit flags.
Status FlagOps(const MemOps& m, cudaStream_t stream, std::span<const CUdeviceptr> flags, bool write) {
  std::array<CUstreamBatchMemOpParams, kernels::kMaxFusedLayers> ops{};  // a fused group's layers at most
  if (flags.size() > ops.size()) {
    return Status::Internal("working set: " + std::to_string(flags.size()) + " flags in one batch, over " +
                            std::to_string(ops.size()));
  }
  for (std::size_t k = 0; k < flags.size(); ++k) {
    if (write) {
      ops[k].writeValue.operation = CU_STREAM_MEM_OP_WRITE_VALUE_32;
      ops[k].writeValue.address = flags[k];
      ops[k].writeValue.value = 1;
      ops[k].writeValue.flags = CU_STREAM_WRITE_VALUE_DEFAULT;
    } else {
      ops[k].waitValue.operation = CU_STREAM_MEM_OP_WAIT_VALUE_32;
      ops[k].waitValue.address = flags[k];
      ops[k].waitValue.value = 0;
      ops[k].waitValue.flags = CU_STREAM_WAIT_VALUE_EQ;
    }
  }
  return DriverStatus(m.batch(stream, static_cast<unsigned>(flags.size()), ops.data(), 0),
                      write ? "cuStreamBatchMemOp (flag writes)" : "cuStreamBatchMemOp (flag waits)");
}

std::uint64_t Align(std::uint64_t v, std::uint64_t a) {
  return (v + a - 1) / a * a;
}

// The HBM cache's host directory: key -> slot, open addressing with linear probing (~0 empty, ~0 - 1
// deleted), rehashed when live + deleted entries pass 3/4 of the table.
class SlotMap {
 public:
  static constexpr std::uint64_t kTomb = ~0ULL - 1;
  void Init(std::size_t slots) {
    std::size_t cap = 16;
    while (cap < 2 * slots) cap <<= 1;
    keys_.assign(cap, kEmptyKey);
    vals_.assign(cap, 0);
    live_ = tombs_ = 0;
  }
  // The slot holding `key`, or -1.
  [[nodiscard]] std::int64_t Find(std::uint64_t key) const noexcept {
    const std::size_t mask = keys_.size() - 1;
    for (std::size_t h = detail_hash(key) & mask;; h = (h + 1) & mask) {
      if (keys_[h] == key) return vals_[h];
      if (keys_[h] == kEmptyKey) return -1;
    }
  }
  void Erase(std::uint64_t key) noexcept {
    const std::size_t mask = keys_.size() - 1;
    for (std::size_t h = detail_hash(key) & mask;; h = (h + 1) & mask) {
      if (keys_[h] == key) {
        keys_[h] = kTomb;
        --live_;
        ++tombs_;
        return;
      }
      if (keys_[h] == kEmptyKey) return;
    }
  }
  // `key` must not be present.
  void Insert(std::uint64_t key, std::uint32_t slot) {
    if ((live_ + tombs_ + 1) * 4 > keys_.size() * 3) Rehash();
    const std::size_t mask = keys_.size() - 1;
    std::size_t h = detail_hash(key) & mask;
    while (keys_[h] != kEmptyKey && keys_[h] != kTomb) h = (h + 1) & mask;
    if (keys_[h] == kTomb) --tombs_;
    keys_[h] = key;
    vals_[h] = slot;
    ++live_;
  }
  [[nodiscard]] std::size_t size() const noexcept { return live_; }

 private:
  static std::uint64_t detail_hash(std::uint64_t k) noexcept { return engram::detail::Mix64(k); }
  void Rehash() {
    std::vector<std::uint64_t> keys(keys_.size(), kEmptyKey);
    std::vector<std::uint32_t> vals(keys_.size(), 0);
    keys.swap(keys_);
    vals.swap(vals_);
    live_ = tombs_ = 0;
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (keys[i] != kEmptyKey && keys[i] != kTomb) Insert(keys[i], vals[i]);
    }
  }
  std::vector<std::uint64_t> keys_;
  std::vector<std::uint32_t> vals_;
  std::size_t live_ = 0, tombs_ = 0;
};

// Per step: events for the copy-done point and per-layer timing.
struct StepEvents {
  std::vector<cudaEvent_t> start, copied, flagged, done;  // per layer
  bool fused = false;   // the device pipeline resolved every layer in one launch: flagged[0] .. done[last]
  bool sorted = false;  // the device pipeline sorted each layer: start[l] .. copied[l]
  // The event that says layer l is ready (a fused step records only its last layer's).
  [[nodiscard]] cudaEvent_t DoneEvent(int l) const { return fused ? done.back() : done[static_cast<std::size_t>(l)]; }
};

void DestroyStepEvents(StepEvents& e) {
  for (auto* v : {&e.start, &e.copied, &e.flagged, &e.done}) {
    for (auto& ev : *v) {
      if (ev != nullptr) cudaEventDestroy(ev);
      ev = nullptr;
    }
  }
}

}  // namespace

struct WorkingSet::Impl final : prefetch::DeviceSink {
  Impl(const store::Store& s, store::VersionHandle v, memory::HostTier* h, WorkingSetOptions o)
      : store(s), version(std::move(v)), host(h), opt(std::move(o)), layout(s.layout()) {}
  ~Impl() override;

  const store::Store& store;
  store::VersionHandle version;
  memory::HostTier* host;
  WorkingSetOptions opt;
  Layout layout;
  std::uint32_t row_bytes = 0;
  std::uint32_t dim = 0;
  bool fp8 = false;
  int cols = 0;
  int layers = 0;
  std::uint32_t slots = 0;
  std::uint64_t max_lookups = 0;
  MissPath path = MissPath::kStaged;
  std::string path_reason;
  double staged_rate = 0, zero_copy_rate = 0;
  MemOps memops;

  // Device memory.
  std::vector<void*> allocations;
  std::uint64_t device_bytes = 0;
  std::byte* cache_rows = nullptr;
  std::uint64_t* slot_key = nullptr;
  std::uint64_t* table_keys = nullptr;
  std::int32_t* table_slots = nullptr;
  std::uint64_t table_cap = 0;  // power of two
  std::uint32_t cache_slots = 0;
  std::byte* staging_dev = nullptr;
  std::byte* desc_dev = nullptr;
  std::uint64_t desc_bytes = 0;
  std::uint32_t* flags = nullptr;              // [slot][layer]
  std::vector<std::byte*> out_rows, out_bf16;  // [slot][layer]
  std::vector<std::byte*> region_base;         // [layer][column] HBM region base, or nullptr
  std::vector<std::int64_t> region_first;      // [layer][column] first row
  std::vector<std::ptrdiff_t> zc_delta;        // [layer][column] mapped address - host address
  std::vector<std::uint8_t> zc_ok;             // [layer][column]
  // Mapped: [step % kErrorRing][layer] first bad lookup + 1. The host clears a step's words before its
  // kernels are enqueued; the step kErrorRing earlier finished long before (the worker cannot run more
  // than steps_in_flight steps ahead of the copy stream).
  static constexpr std::uint64_t kErrorRing = 64;
  std::uint32_t* errors_host = nullptr;
  std::uint32_t* errors_dev = nullptr;

  // Host memory: pinned staging for the prefetcher and descriptors per (slot, layer).
  std::unique_ptr<memory::HostRegistrar> registrar;
  std::unique_ptr<memory::PinnedArena> staging_arena;
  std::unique_ptr<memory::PinnedArena> desc_arena;
  std::vector<std::byte*> desc_host;   // [slot][layer]
  std::vector<cudaEvent_t> desc_free;  // [slot][layer]: the descriptors' copy is done

  cudaStream_t copy = nullptr;

  struct Fill {
    std::uint64_t src, dst;
  };
  struct KeySlot {
    std::uint64_t key, slot;
  };
  // The HBM cache's host directory (the worker thread only): shards by key hash, each with its own map,
  // policy and range of slots, planned in parallel for large steps.
  static constexpr std::uint8_t kRegion = 0, kHit = 1, kStaged = 2;
  struct Shard {
    std::unique_ptr<memory::RowCachePolicy> policy;
    SlotMap map;
    std::uint32_t base = 0;
    std::vector<std::uint32_t> rows;  // this plan's distinct rows in the shard
    std::vector<Fill> fills;          // src: the distinct row's index until patched
    std::vector<std::uint64_t> erase;
    std::vector<KeySlot> inserts;
    std::uint64_t hits = 0, admitted = 0, evicted = 0;
  };
  std::vector<Shard> shards;
  std::unique_ptr<engram::detail::ThreadPool> plan_pool;
  std::size_t ShardOf(std::uint64_t key) const noexcept {
    return static_cast<std::size_t>((engram::detail::Mix64(key) >> 32) % shards.size());
  }
  std::vector<std::uint64_t> key_in;  // per slot
  std::vector<std::uint64_t> fill_stamp;
  std::vector<std::uint32_t> fill_pos;
  std::uint64_t plan_stamp = 0;
  std::uint64_t tombs = 0;

  // The layer being planned (Plan then Ready/Failed come for the same layer, on the worker thread).
  struct PlanState {
    StepId step = 0;
    int layer = -1;
    std::int64_t tokens = 0;
    std::vector<std::uint64_t> src;  // per distinct row: device-readable address
    std::vector<std::uint8_t> kind;  // per distinct row: kRegion, kHit or kStaged (staged or zero-copy)
    std::vector<Fill> fills;
    std::vector<std::uint64_t> erase;
    std::vector<KeySlot> inserts;
    std::vector<Fill> zero_copy;  // mapped host row -> device staging, before the assembly
    std::uint64_t staged_count = 0;
  } plan;

  std::unique_ptr<prefetch::Prefetcher> prefetcher;

  // The device pipeline (path == kDevice): hashing, the set cache, reads and assembly on the device.
  std::uint32_t dev_sets = 0;  // set cache size (computed at Init; allocated if the path is kDevice)
  std::vector<DeviceLayerHasher> hashers;
  kernels::SetCacheArgs set_cache;
  // One upload per step on its own stream, so that it overlaps the step before: host slot -> device slot,
  // [miss count per layer (zeros)] [each token's window position] [windows].
  cudaStream_t upload = nullptr;
  kernels::SortBuffers sort_buffers;  // for Sort(n) layers
  std::vector<std::byte*> up_dev;     // [slot]
  std::vector<cudaEvent_t> up_used;   // [slot]: the copy stream is done with the device slot's upload
  std::uint32_t* miss_dev = nullptr;
  std::int64_t* miss_rows_dev = nullptr;
  kernels::ColumnSource* colsrc_dev = nullptr;  // [layer][column]
  unsigned long long* counters_dev = nullptr;
  unsigned long long* counters_host = nullptr;  // pinned; copied from the device when stats() asks
  cudaStream_t counters_stream = nullptr;       // stats()'s copy of the counters, beside the copy stream
  mutable std::mutex counters_mu;
  std::uint64_t up_bytes = 0;        // per slot: miss counts, window positions, windows
  std::uint64_t up_counts = 0;       // bytes of the miss counts at its start (16-aligned)
  std::vector<std::byte*> up_host;   // [slot], pinned
  std::vector<cudaEvent_t> up_free;  // [slot]: its upload is done
  // SubmitDeviceIds: the store's token map on the device (raw ids), and per slot a pinned copy of the
  // step's ids for the host's sequence history and the events around it.
  std::int32_t* token_map_dev = nullptr;
  std::uint32_t token_map_size = 0;
  std::vector<std::int32_t*> ids_host;    // [slot], pinned, max_tokens ids
  std::vector<cudaEvent_t> ids_produced;  // [slot]: recorded on the producer stream at submission
  std::vector<cudaEvent_t> ids_copied;    // [slot]: the step has read its ids and copied them to ids_host
  // The last device-ids step, whose ids the host has not appended yet (at most one: every call that
  // needs the sequences appends them first). Under submit_mu.
  struct PendingIds {
    StepId step = 0;
    std::uint32_t slot = 0;
    DeviceIds kind = DeviceIds::kCompressed;
    std::vector<SequenceId> sequences;
    std::vector<std::int64_t> tokens;
    std::vector<std::vector<std::uint8_t>> dead;
  };
  std::optional<PendingIds> pending_ids;
  std::map<SequenceId, Status> failed_sequences;  // a bad device id reached them; under submit_mu
  std::map<StepId, Status> step_errors;           // device-ids steps that failed; under mu
  // Appends the pending step's ids (waiting for their copy). A bad id, or a copy that failed, is recorded
  // as the step's error and its sequences' (failed_sequences, step_errors), not returned. submit_mu held.
  void AppendPendingIds();
  // The sequence's recorded failure, if any. submit_mu held.
  Status SequenceUsable(SequenceId id) const {
    auto it = failed_sequences.find(id);
    return it == failed_sequences.end() ? Status::Ok() : it->second;
  }
  std::mutex submit_mu;                     // steps reach the copy stream in id order
  std::atomic<StepId> next_device_step{1};  // written under submit_mu, read anywhere
  bool device() const noexcept { return path == MissPath::kDevice; }
  // Miss lists: one of max_lookups, or one per layer for a fused step (at most fuse_lookups each).
  std::uint64_t MissCap() const {
    const std::uint64_t fused = std::min(opt.fuse_lookups, max_lookups) *
                                static_cast<std::uint64_t>(std::min(layers, kernels::kMaxFusedLayers));
    return std::max(max_lookups, fused);
  }
  bool Fuse(std::uint64_t n) const { return layers > 1 && layers <= kernels::kMaxFusedLayers && n <= opt.fuse_lookups; }
  // Unfused layers of at least sort_lookups_from lookups are resolved in row order.
  bool Sorts() const { return opt.sort_lookups_from > 0 && opt.sort_lookups_from <= max_lookups; }
  bool Sort(std::uint64_t n) const { return Sorts() && n >= opt.sort_lookups_from && !Fuse(n); }
  int SortBits() const {
    std::int64_t most = 1;
    for (int l = 0; l < layers; ++l) most = std::max(most, layout.layer_rows(l));
    return 64 - __builtin_clzll(static_cast<std::uint64_t>(most));
  }
  std::uint64_t UploadBytes() const {
    const auto t = static_cast<std::uint64_t>(opt.max_tokens);
    return Align(Align(static_cast<std::uint64_t>(layers) * 4, 16) + Align(t * 4, 16) +
                     t * static_cast<std::uint64_t>(layout.max_ngram()) * 4,
                 256);
  }
  Result<std::uint64_t> PipelineBytes() const {
    std::uint64_t sort = 0;
    if (Sorts()) {
      ENGRAM_ASSIGN_OR_RETURN(const std::uint64_t temp, kernels::SortTempBytes(max_lookups, SortBits()));
      sort = max_lookups * 24 + temp;
    }
    const std::uint64_t token_map = store.token_map() != nullptr ? Align(store.token_map()->ids().size() * 4, 256) : 0;
    return MissCap() * 12 + UploadBytes() * slots + sort +
           static_cast<std::uint64_t>(layers) * cols * sizeof(kernels::ColumnSource) + 256 + token_map;
  }
  Status AllocateHostPath();  // the host-planned paths: their HBM cache directory and descriptors
  Status AllocatePipeline();
  // A device step; with `dev_ids`, the new ids are on the device (SubmitDeviceIds) and `batch` holds
  // placeholders (zeros) with the DEAD flags.
  struct DeviceIdsIn {
    const std::int32_t* ids = nullptr;
    DeviceIds kind = DeviceIds::kCompressed;
    Stream producer = nullptr;
  };
  Result<StepId> SubmitDevice(std::span<const prefetch::SequenceInput> batch, const DeviceIdsIn* dev_ids = nullptr);

  // Steps, statistics, the releasing thread (under mu).
  mutable std::mutex mu;
  std::condition_variable cv;
  std::map<StepId, std::unique_ptr<StepEvents>> events;
  std::vector<std::unique_ptr<StepEvents>> free_events;
  // Staged steps submitted whose events the worker has not taken from free_events yet: Submit keeps
  // free_events at least this large (ReserveEvents), so the worker never creates events.
  std::size_t events_owed = 0;
  std::map<StepId, std::int64_t> step_tokens;
  std::deque<StepId> to_finish;
  std::vector<StepId> done_step;  // [slot][layer]: the last step Done there
  bool stop = false;
  std::thread finisher;
  WorkingSetStats st;

  std::size_t SL(std::uint32_t slot, int l) const {
    return static_cast<std::size_t>(slot) * static_cast<std::size_t>(layers) + static_cast<std::size_t>(l);
  }
  std::size_t LC(int l, int c) const {
    return static_cast<std::size_t>(l) * static_cast<std::size_t>(cols) + static_cast<std::size_t>(c);
  }
  std::uint32_t SlotOf(StepId s) const { return static_cast<std::uint32_t>((s - 1) % slots); }

  Result<void*> DeviceAlloc(std::uint64_t bytes, const char* what);
  Status Init();
  Status LoadRegions();
  Status ChoosePath();
  // A step's events, from the pool; made here only when the pool is empty, which on the staged path
  // (the prefetcher's worker asks) ReserveEvents prevents.
  Result<StepEvents*> EventsFor(StepId step);
  Result<std::unique_ptr<StepEvents>> NewStepEvents() const;
  // On the submitting thread, before a staged step exists: makes sure the pool holds an event set for it
  // and for every staged step submitted before whose set the worker has not taken. The worker must not
  // create CUDA events: cudaEventCreate waits for a lock that a thread blocked in a kernel launch holds
  // (a stream's launch queue, ~1,020 launches on the H100, full behind a Wait for this very step), and
  // the launch waits for the flag the worker would set. Measured in .device/run47-48 (docs/gpu.md).
  Status ReserveEvents();

  Status Plan(StepId step, int l, std::int64_t tokens, std::span<const std::int64_t> rows, std::span<const int> columns,
              std::span<std::uint8_t> stage) override;
  Status Ready(StepId step, int l, const prefetch::DeviceLayerInput& in) override;
  void Failed(StepId step, int l, const Status& status) override;
  // Copies the plan's descriptors (and `staged` rows) to the device and enqueues the layer's kernels.
  Status Enqueue(std::span<const std::int32_t> lookup, std::span<const std::byte> staged);
  void RunFinisher();
  void DrainCopyStream();
};

Result<void*> WorkingSet::Impl::DeviceAlloc(std::uint64_t bytes, const char* what) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, std::max<std::uint64_t>(bytes, 256));
  if (e != cudaSuccess) {
    return Status::ResourceExhausted(std::string("working set: cudaMalloc of ") + std::to_string(bytes) +
                                     " bytes for " + what + ": " + cudaGetErrorString(e));
  }
  allocations.push_back(p);
  device_bytes += std::max<std::uint64_t>(bytes, 256);
  return p;
}

Status WorkingSet::Impl::Init() {
  row_bytes = layout.row_bytes();
  dim = static_cast<std::uint32_t>(layout.spec().row_dim);
  fp8 = layout.row_format() == RowFormat::kFp8E4M3E8M0;
  cols = layout.columns();
  layers = layout.num_layers();
  slots = opt.steps_in_flight;
  if (slots == 0) return Status::InvalidArgument("working set: steps_in_flight must be at least 1");
  if (opt.max_tokens <= 0) return Status::InvalidArgument("working set: max_tokens must be positive");
  if (opt.sorted_lookups_per_warp % 2 != 0 || opt.sorted_lookups_per_warp > 16) {
    return Status::InvalidArgument("working set: sorted_lookups_per_warp must be 0 or even, at most 16, not " +
                                   std::to_string(opt.sorted_lookups_per_warp));
  }
  if (row_bytes % 4 != 0) {
    return Status::InvalidArgument("working set: row_bytes " + std::to_string(row_bytes) +
                                   " is not a multiple of 4 (the assembly kernel copies 4-byte words)");
  }
  if (fp8 && dim % 32 != 0) return Status::InvalidArgument("working set: FP8 rows need dim % 32 == 0");
  const bool bf16 = opt.bf16_output && fp8;
  if (!opt.rows_output && !bf16) return Status::InvalidArgument("working set: no output asked for");
  max_lookups = static_cast<std::uint64_t>(opt.max_tokens) * static_cast<std::uint64_t>(cols);
  desc_bytes = max_lookups * (8 + 16 + 8 + 16 + 16) + 256;

  // Sizes first: refuse before allocating.
  std::uint64_t cache_slot_bytes = row_bytes + 8;
  if (opt.cache_bytes > 0) {
    // slots x (row + slot key) + table (a power of two >= 2 x slots) x 12 <= cache_bytes.
    std::uint64_t n = opt.cache_bytes / (cache_slot_bytes + 24);
    while (n > 0) {
      std::uint64_t cap = 1;
      while (cap < 2 * n) cap <<= 1;
      if (n * cache_slot_bytes + cap * 12 <= opt.cache_bytes) {
        table_cap = cap;
        break;
      }
      n = n * 15 / 16;
    }
    if (n > 0xFFFFFFF0ULL) n = 0xFFFFFFF0ULL;
    cache_slots = static_cast<std::uint32_t>(n);
    // The device pipeline's set cache: per set, 16 x (row + key + way state) + its level and lock.
    const std::uint64_t per_set = engram::detail::kSetWays * (row_bytes + 8 + sizeof(engram::detail::SetWay)) + 8;
    dev_sets = static_cast<std::uint32_t>(std::min<std::uint64_t>(opt.cache_bytes / per_set, 0x0FFFFFFFULL));
  }
  std::uint64_t region_rows = 0;
  for (const auto& r : opt.hbm_regions) {
    if (r.layer_index < 0 || r.layer_index >= layers || r.column < 0 || r.column >= cols) {
      return Status::InvalidArgument("working set: HBM region (layer index " + std::to_string(r.layer_index) +
                                     ", column " + std::to_string(r.column) + ") is not in the layout");
    }
    region_rows +=
        static_cast<std::uint64_t>(layout.layer(r.layer_index).primes.at(static_cast<std::size_t>(r.column)));
  }
  const std::uint64_t out_bytes =
      static_cast<std::uint64_t>(slots) * static_cast<std::uint64_t>(layers) *
      ((opt.rows_output ? max_lookups * row_bytes : 0) + (bf16 ? max_lookups * dim * 2 : 0));
  // Either cache form fits cache_bytes; the device pipeline's buffers are counted whichever path is taken.
  ENGRAM_ASSIGN_OR_RETURN(const std::uint64_t pipeline_bytes, PipelineBytes());
  const std::uint64_t need = (cache_slots > 0 ? cache_slots * cache_slot_bytes + table_cap * 12 : 0) +
                             region_rows * row_bytes + out_bytes + max_lookups * row_bytes + desc_bytes +
                             static_cast<std::uint64_t>(slots) * static_cast<std::uint64_t>(layers) * 4 +
                             pipeline_bytes;
  size_t free_b = 0, total_b = 0;
  ENGRAM_CUDA_RETURN(cudaMemGetInfo(&free_b, &total_b));
  const std::string sizes = "cache " + std::to_string(cache_slots) + " slots, HBM regions " +
                            std::to_string(region_rows) + " rows, outputs " + std::to_string(out_bytes) +
                            " bytes for " + std::to_string(slots) + " slots x " + std::to_string(layers) +
                            " layers x " + std::to_string(opt.max_tokens) + " tokens";
  if (opt.device_budget_bytes > 0 && need > opt.device_budget_bytes) {
    return Status::ResourceExhausted("working set: needs " + std::to_string(need) + " bytes of GPU memory (" + sizes +
                                     "), over device_budget_bytes " + std::to_string(opt.device_budget_bytes));
  }
  if (need > free_b) {
    return Status::ResourceExhausted("working set: needs " + std::to_string(need) + " bytes of GPU memory (" + sizes +
                                     "), the device has " + std::to_string(free_b) + " free");
  }
  st.device_budget_bytes = opt.device_budget_bytes;

  ENGRAM_ASSIGN_OR_RETURN(memops, LoadMemOps());
  ENGRAM_RETURN_IF_ERROR(kernels::Preload());
  // Event sets for the steps in flight and one more, made now; ReserveEvents adds any more on the
  // submitting thread.
  for (std::uint32_t i = 0; i <= slots; ++i) {
    ENGRAM_ASSIGN_OR_RETURN(auto e, NewStepEvents());
    free_events.push_back(std::move(e));
  }
  ENGRAM_CUDA_RETURN(cudaStreamCreateWithFlags(&copy, cudaStreamNonBlocking));

  ENGRAM_ASSIGN_OR_RETURN(void* sp, DeviceAlloc(max_lookups * row_bytes, "device staging"));
  staging_dev = static_cast<std::byte*>(sp);
  ENGRAM_ASSIGN_OR_RETURN(void* dp, DeviceAlloc(desc_bytes, "descriptors"));
  desc_dev = static_cast<std::byte*>(dp);
  ENGRAM_ASSIGN_OR_RETURN(void* fp, DeviceAlloc(static_cast<std::uint64_t>(slots) * layers * 4, "ready flags"));
  flags = static_cast<std::uint32_t*>(fp);
  ENGRAM_CUDA_RETURN(cudaMemsetAsync(flags, 0, static_cast<std::uint64_t>(slots) * layers * 4, copy));
  out_rows.assign(static_cast<std::size_t>(slots) * layers, nullptr);
  out_bf16.assign(static_cast<std::size_t>(slots) * layers, nullptr);
  for (std::uint32_t s = 0; s < slots; ++s) {
    for (int l = 0; l < layers; ++l) {
      if (opt.rows_output) {
        ENGRAM_ASSIGN_OR_RETURN(void* p, DeviceAlloc(max_lookups * row_bytes, "row outputs"));
        out_rows[SL(s, l)] = static_cast<std::byte*>(p);
      }
      if (bf16) {
        ENGRAM_ASSIGN_OR_RETURN(void* p, DeviceAlloc(max_lookups * dim * 2, "BF16 outputs"));
        out_bf16[SL(s, l)] = static_cast<std::byte*>(p);
      }
    }
  }
  ENGRAM_CUDA_RETURN(cudaHostAlloc(reinterpret_cast<void**>(&errors_host),
                                   kErrorRing * static_cast<std::uint64_t>(layers) * 4, cudaHostAllocMapped));
  std::memset(errors_host, 0, kErrorRing * static_cast<std::uint64_t>(layers) * 4);
  ENGRAM_CUDA_RETURN(cudaHostGetDevicePointer(reinterpret_cast<void**>(&errors_dev), errors_host, 0));

  // Pinned host memory: the prefetcher's staging (also what ChoosePath measures with).
  ENGRAM_ASSIGN_OR_RETURN(registrar, MakeCudaHostRegistrar());
  memory::ArenaOptions ao;
  ao.registrar = registrar.get();
  ao.name = "working set staging";
  ENGRAM_ASSIGN_OR_RETURN(staging_arena, memory::PinnedArena::Create(opt.prefetch.staging_bytes, ao));
  done_step.assign(static_cast<std::size_t>(slots) * layers, 0);

  region_base.assign(static_cast<std::size_t>(layers) * cols, nullptr);
  region_first.assign(static_cast<std::size_t>(layers) * cols, 0);
  zc_delta.assign(static_cast<std::size_t>(layers) * cols, 0);
  zc_ok.assign(static_cast<std::size_t>(layers) * cols, 0);
  ENGRAM_RETURN_IF_ERROR(LoadRegions());
  ENGRAM_RETURN_IF_ERROR(ChoosePath());
  if (device()) {
    // The device pipeline stages nothing on the host: the pinned staging goes back now (the prefetcher
    // gets a token heap buffer; it only keeps the sequences).
    staging_arena.reset();
    ENGRAM_RETURN_IF_ERROR(AllocatePipeline());
  } else {
    ENGRAM_RETURN_IF_ERROR(AllocateHostPath());
  }
  ENGRAM_CUDA_RETURN(cudaStreamSynchronize(copy));
  st.path = path;
  st.path_reason = path_reason;
  st.staged_rows_per_second = staged_rate;
  st.zero_copy_rows_per_second = zero_copy_rate;
  st.cache_slots = device() ? static_cast<std::uint64_t>(dev_sets) * engram::detail::kSetWays : cache_slots;
  return Status::Ok();
}

Status WorkingSet::Impl::AllocateHostPath() {
  // Pinned descriptors per (slot, layer): the host-planned paths' per-lookup source addresses.
  memory::ArenaOptions ao;
  ao.registrar = registrar.get();
  ao.name = "working set descriptors";
  ENGRAM_ASSIGN_OR_RETURN(desc_arena,
                          memory::PinnedArena::Create(desc_bytes * static_cast<std::uint64_t>(slots) * layers, ao));
  desc_host.assign(static_cast<std::size_t>(slots) * layers, nullptr);
  desc_free.assign(static_cast<std::size_t>(slots) * layers, nullptr);
  for (std::size_t i = 0; i < desc_host.size(); ++i) {
    ENGRAM_ASSIGN_OR_RETURN(std::span<std::byte> b, desc_arena->Allocate(desc_bytes, 256));
    desc_host[i] = b.data();
    ENGRAM_CUDA_RETURN(cudaEventCreateWithFlags(&desc_free[i], cudaEventDisableTiming));
  }
  if (cache_slots > 0) {
    ENGRAM_ASSIGN_OR_RETURN(void* p, DeviceAlloc(static_cast<std::uint64_t>(cache_slots) * row_bytes, "cache rows"));
    cache_rows = static_cast<std::byte*>(p);
    ENGRAM_ASSIGN_OR_RETURN(p, DeviceAlloc(static_cast<std::uint64_t>(cache_slots) * 8, "cache slot keys"));
    slot_key = static_cast<std::uint64_t*>(p);
    ENGRAM_ASSIGN_OR_RETURN(p, DeviceAlloc(table_cap * 8, "cache table keys"));
    table_keys = static_cast<std::uint64_t*>(p);
    ENGRAM_ASSIGN_OR_RETURN(p, DeviceAlloc(table_cap * 4, "cache table slots"));
    table_slots = static_cast<std::int32_t*>(p);
    ENGRAM_CUDA_RETURN(cudaMemsetAsync(slot_key, 0xFF, static_cast<std::uint64_t>(cache_slots) * 8, copy));
    ENGRAM_CUDA_RETURN(cudaMemsetAsync(table_keys, 0xFF, table_cap * 8, copy));
    // Directory shards: one per 1,024 slots, at most 16 (small caches keep one policy over all slots).
    const std::uint32_t nshards = std::clamp<std::uint32_t>(cache_slots / 1024, 1, 16);
    shards.resize(nshards);
    for (std::uint32_t k = 0; k < nshards; ++k) {
      Shard& sh = shards[k];
      sh.base = static_cast<std::uint32_t>(static_cast<std::uint64_t>(cache_slots) * k / nshards);
      const auto end = static_cast<std::uint32_t>(static_cast<std::uint64_t>(cache_slots) * (k + 1) / nshards);
      sh.policy = std::make_unique<memory::RowCachePolicy>(end - sh.base, opt.policy);
      sh.map.Init(end - sh.base);
    }
    if (nshards > 1) plan_pool = std::make_unique<engram::detail::ThreadPool>(nshards - 1);
    key_in.assign(cache_slots, kEmptyKey);
    fill_stamp.assign(cache_slots, 0);
    fill_pos.assign(cache_slots, 0);
  }
  return Status::Ok();
}

Status WorkingSet::Impl::AllocatePipeline() {
  cache_slots = 0;  // the host directory's cache is not used
  const std::uint64_t ways = static_cast<std::uint64_t>(dev_sets) * engram::detail::kSetWays;
  if (dev_sets > 0) {
    ENGRAM_ASSIGN_OR_RETURN(void* p, DeviceAlloc(ways * row_bytes, "set cache rows"));
    set_cache.rows = static_cast<std::byte*>(p);
    ENGRAM_ASSIGN_OR_RETURN(p, DeviceAlloc(ways * 8, "set cache keys"));
    set_cache.keys = static_cast<std::uint64_t*>(p);
    ENGRAM_ASSIGN_OR_RETURN(p, DeviceAlloc(ways * sizeof(engram::detail::SetWay), "set cache ways"));
    set_cache.ways = static_cast<engram::detail::SetWay*>(p);
    ENGRAM_ASSIGN_OR_RETURN(p, DeviceAlloc(static_cast<std::uint64_t>(dev_sets) * 4, "set cache levels"));
    set_cache.level = static_cast<float*>(p);
    ENGRAM_ASSIGN_OR_RETURN(p, DeviceAlloc(static_cast<std::uint64_t>(dev_sets) * 4, "set cache locks"));
    set_cache.locks = static_cast<std::uint32_t*>(p);
    set_cache.sets = dev_sets;
    ENGRAM_CUDA_RETURN(cudaMemsetAsync(set_cache.keys, 0xFF, ways * 8, copy));
    ENGRAM_CUDA_RETURN(cudaMemsetAsync(set_cache.ways, 0, ways * sizeof(engram::detail::SetWay), copy));
    ENGRAM_CUDA_RETURN(cudaMemsetAsync(set_cache.level, 0, static_cast<std::uint64_t>(dev_sets) * 4, copy));
    ENGRAM_CUDA_RETURN(cudaMemsetAsync(set_cache.locks, 0, static_cast<std::uint64_t>(dev_sets) * 4, copy));
  }
  ENGRAM_ASSIGN_OR_RETURN(void* p, DeviceAlloc(MissCap() * 8, "miss rows"));
  miss_rows_dev = static_cast<std::int64_t*>(p);
  ENGRAM_ASSIGN_OR_RETURN(p, DeviceAlloc(MissCap() * 4, "miss list"));
  miss_dev = static_cast<std::uint32_t*>(p);
  // The upload: miss counts, positions, windows (each sequence's history and tokens; a step has at most
  // max_tokens sequences and tokens).
  up_counts = Align(static_cast<std::uint64_t>(layers) * 4, 16);
  up_bytes = UploadBytes();
  ENGRAM_ASSIGN_OR_RETURN(p, DeviceAlloc(up_bytes * slots, "step uploads (miss counts, positions, windows)"));
  up_dev.clear();
  for (std::uint32_t k = 0; k < slots; ++k) up_dev.push_back(static_cast<std::byte*>(p) + k * up_bytes);
  ENGRAM_CUDA_RETURN(cudaStreamCreateWithFlags(&upload, cudaStreamNonBlocking));
  if (Sorts()) {
    kernels::SortBuffers& sb = sort_buffers;
    sb.capacity = max_lookups;
    sb.end_bit = SortBits();
    ENGRAM_ASSIGN_OR_RETURN(sb.temp_bytes, kernels::SortTempBytes(max_lookups, sb.end_bit));
    for (int k = 0; k < 2; ++k) {
      ENGRAM_ASSIGN_OR_RETURN(p, DeviceAlloc(max_lookups * 8, "lookup sort keys"));
      sb.keys[k] = static_cast<std::uint64_t*>(p);
      ENGRAM_ASSIGN_OR_RETURN(p, DeviceAlloc(max_lookups * 4, "lookup sort positions"));
      sb.vals[k] = static_cast<std::uint32_t*>(p);
    }
    ENGRAM_ASSIGN_OR_RETURN(p, DeviceAlloc(std::max<std::uint64_t>(sb.temp_bytes, 16), "lookup sort scratch"));
    sb.temp = p;
    ENGRAM_RETURN_IF_ERROR(kernels::WarmSort(sb, copy));
  }
  ENGRAM_ASSIGN_OR_RETURN(
      p, DeviceAlloc(static_cast<std::uint64_t>(layers) * cols * sizeof(kernels::ColumnSource), "column sources"));
  colsrc_dev = static_cast<kernels::ColumnSource*>(p);
  ENGRAM_ASSIGN_OR_RETURN(p, DeviceAlloc(kernels::kNumDeviceCounters * 8, "counters"));
  counters_dev = static_cast<unsigned long long*>(p);
  ENGRAM_CUDA_RETURN(cudaMemsetAsync(counters_dev, 0, kernels::kNumDeviceCounters * 8, copy));
  ENGRAM_CUDA_RETURN(
      cudaHostAlloc(reinterpret_cast<void**>(&counters_host), kernels::kNumDeviceCounters * 8, cudaHostAllocDefault));
  std::memset(counters_host, 0, kernels::kNumDeviceCounters * 8);
  ENGRAM_CUDA_RETURN(cudaStreamCreateWithFlags(&counters_stream, cudaStreamNonBlocking));
  // Where each column's rows are: its HBM region, else its resident host region through the mapping.
  std::vector<kernels::ColumnSource> src(static_cast<std::size_t>(layers) * cols);
  for (int l = 0; l < layers; ++l) {
    for (int c = 0; c < cols; ++c) {
      kernels::ColumnSource& cs = src[LC(l, c)];
      cs.first = layout.region_offset(l, c);
      cs.order = static_cast<std::uint32_t>(2 + c / layout.heads());
      if (region_base[LC(l, c)] != nullptr) {
        cs.base = reinterpret_cast<std::uint64_t>(region_base[LC(l, c)]);
      } else {
        cs.base = reinterpret_cast<std::uint64_t>(host->ResidentRow(l, c, cs.first) + zc_delta[LC(l, c)]);
        cs.cached = 1;
      }
    }
  }
  ENGRAM_CUDA_RETURN(
      cudaMemcpy(colsrc_dev, src.data(), src.size() * sizeof(kernels::ColumnSource), cudaMemcpyHostToDevice));
  for (int l = 0; l < layers; ++l) {
    ENGRAM_ASSIGN_OR_RETURN(DeviceLayerHasher h, DeviceLayerHasher::Create(layout, l));
    hashers.push_back(std::move(h));
  }
  up_host.assign(slots, nullptr);
  up_free.assign(slots, nullptr);
  up_used.assign(slots, nullptr);
  ids_host.assign(slots, nullptr);
  ids_produced.assign(slots, nullptr);
  ids_copied.assign(slots, nullptr);
  for (std::uint32_t k = 0; k < slots; ++k) {
    ENGRAM_CUDA_RETURN(cudaHostAlloc(reinterpret_cast<void**>(&up_host[k]), up_bytes, cudaHostAllocDefault));
    ENGRAM_CUDA_RETURN(cudaEventCreateWithFlags(&up_free[k], cudaEventDisableTiming));
    ENGRAM_CUDA_RETURN(cudaEventCreateWithFlags(&up_used[k], cudaEventDisableTiming));
    ENGRAM_CUDA_RETURN(cudaHostAlloc(reinterpret_cast<void**>(&ids_host[k]),
                                     static_cast<std::uint64_t>(opt.max_tokens) * 4, cudaHostAllocDefault));
    ENGRAM_CUDA_RETURN(cudaEventCreateWithFlags(&ids_produced[k], cudaEventDisableTiming));
    ENGRAM_CUDA_RETURN(cudaEventCreateWithFlags(&ids_copied[k], cudaEventDisableTiming));
  }
  if (const TokenMap* map = store.token_map(); map != nullptr) {
    const auto ids = map->ids();
    token_map_size = static_cast<std::uint32_t>(ids.size());
    ENGRAM_ASSIGN_OR_RETURN(p, DeviceAlloc(ids.size() * 4, "token map"));
    token_map_dev = static_cast<std::int32_t*>(p);
    ENGRAM_CUDA_RETURN(cudaMemcpy(token_map_dev, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
  }
  return Status::Ok();
}

Status WorkingSet::Impl::LoadRegions() {
  if (opt.hbm_regions.empty()) return Status::Ok();
  // Through a pinned bounce buffer of 64 MiB, two halves alternating with the copies.
  constexpr std::uint64_t kHalf = 32ULL << 20;
  void* bounce = nullptr;
  ENGRAM_CUDA_RETURN(cudaHostAlloc(&bounce, 2 * kHalf, cudaHostAllocDefault));
  auto free_bounce = [&] { cudaFreeHost(bounce); };
  cudaEvent_t half_free[2] = {nullptr, nullptr};
  Status status;
  for (auto& e : half_free) {
    if (status.ok())
      status = detail::CudaStatus(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "event", __FILE__, __LINE__);
  }
  const std::uint64_t rows_per_half = kHalf / row_bytes;
  int half = 0;
  for (const auto& r : opt.hbm_regions) {
    if (!status.ok()) break;
    const std::size_t i = LC(r.layer_index, r.column);
    if (region_base[i] != nullptr) continue;
    const std::int64_t first = layout.region_offset(r.layer_index, r.column);
    const auto rows =
        static_cast<std::uint64_t>(layout.layer(r.layer_index).primes.at(static_cast<std::size_t>(r.column)));
    auto dev = DeviceAlloc(rows * row_bytes, "HBM region");
    if (!dev.ok()) {
      status = dev.status();
      break;
    }
    region_base[i] = static_cast<std::byte*>(*dev);
    region_first[i] = first;
    for (std::uint64_t done = 0; done < rows && status.ok(); done += rows_per_half) {
      const std::uint64_t n = std::min(rows_per_half, rows - done);
      auto* buf = static_cast<std::byte*>(bounce) + static_cast<std::uint64_t>(half) * kHalf;
      status = detail::CudaStatus(cudaEventSynchronize(half_free[half]), "cudaEventSynchronize", __FILE__, __LINE__);
      if (status.ok()) {
        status = store.ReadRange(version, r.layer_index, first + static_cast<std::int64_t>(done),
                                 std::span<std::byte>(buf, n * row_bytes));
      }
      if (status.ok()) {
        status = detail::CudaStatus(
            cudaMemcpyAsync(region_base[i] + done * row_bytes, buf, n * row_bytes, cudaMemcpyHostToDevice, copy),
            "cudaMemcpyAsync", __FILE__, __LINE__);
      }
      if (status.ok()) {
        status = detail::CudaStatus(cudaEventRecord(half_free[half], copy), "cudaEventRecord", __FILE__, __LINE__);
      }
      half ^= 1;
    }
    st.hbm_region_rows += rows;
  }
  cudaStreamSynchronize(copy);
  for (auto& e : half_free) {
    if (e != nullptr) cudaEventDestroy(e);
  }
  free_bounce();
  return status.WithContext("working set: loading HBM regions");
}

Status WorkingSet::Impl::ChoosePath() {
  // Zero-copy needs resident host regions that CUDA has mapped.
  std::string why_not;
  int resident = 0;
  for (int l = 0; l < layers && host != nullptr; ++l) {
    for (int c = 0; c < cols; ++c) {
      if (!host->IsResident(l, c)) continue;
      ++resident;
      auto* p = const_cast<std::byte*>(host->ResidentRow(l, c, layout.region_offset(l, c)));
      auto mapped = MappedDevicePointer(p);
      if (!mapped.ok()) {
        why_not = "the host tier's resident regions are not registered with CUDA (give its arena a CUDA registrar)";
        continue;
      }
      zc_delta[LC(l, c)] = static_cast<std::byte*>(*mapped) - p;
      zc_ok[LC(l, c)] = 1;
    }
  }
  if (resident == 0) why_not = "no resident host regions";
  const bool possible = why_not.empty();
  // The device pipeline needs every region of every layer in HBM or readable through the mapping.
  std::string why_not_device;
  for (int l = 0; l < layers && why_not_device.empty(); ++l) {
    for (int c = 0; c < cols; ++c) {
      if (region_base[LC(l, c)] == nullptr && zc_ok[LC(l, c)] == 0) {
        why_not_device = "region (layer index " + std::to_string(l) + ", column " + std::to_string(c) +
                         ") is neither an HBM region nor resident in mapped host memory";
        break;
      }
    }
  }
  const bool device_possible = why_not_device.empty();
  if (opt.path == MissPath::kDevice) {
    if (!device_possible) {
      return Status::FailedPrecondition("working set: device pipeline asked for, but " + why_not_device);
    }
    path = MissPath::kDevice;
    path_reason = "asked for";
    return Status::Ok();
  }
  if (opt.path == MissPath::kStaged) {
    path = MissPath::kStaged;
    path_reason = "asked for";
    return Status::Ok();
  }
  if (opt.path == MissPath::kZeroCopy) {
    if (!possible) return Status::FailedPrecondition("working set: zero-copy path asked for, but " + why_not);
    path = MissPath::kZeroCopy;
    path_reason = "asked for";
    return Status::Ok();
  }
  if (!possible && device_possible) {
    path = MissPath::kDevice;
    path_reason = "every region is an HBM region: the step runs on the device";
    Log(LogLevel::kInfo, "working set: device path ({})", path_reason);
    return Status::Ok();
  }
  if (!possible) {
    path = MissPath::kStaged;
    path_reason = "zero-copy impossible: " + why_not;
    Log(LogLevel::kInfo, "working set: staged path ({})", path_reason);
    return Status::Ok();
  }
  // Measure both on rows drawn at random from every mapped resident row (reads of mapped memory slow
  // down as they spread over more of it, so one region would flatter zero-copy): CPU gather into pinned
  // staging + one copy, against the zero-copy kernel reading them as the device pipeline would (in
  // address order for a step it sorts), each best of 3.
  std::vector<std::pair<std::size_t, std::uint64_t>> mapped;  // (LC, rows up to and including it)
  std::uint64_t mapped_rows = 0;
  for (int l = 0; l < layers; ++l) {
    for (int c = 0; c < cols; ++c) {
      if (zc_ok[LC(l, c)] == 0) continue;
      mapped_rows += layout.layer(l).primes.at(static_cast<std::size_t>(c));
      mapped.emplace_back(LC(l, c), mapped_rows);
    }
  }
  const std::uint64_t n = std::min<std::uint64_t>(65536, max_lookups);
  std::mt19937_64 rng(42);
  std::vector<const std::byte*> host_src(n);
  std::vector<std::uint64_t> dev_src(n);
  for (std::uint64_t i = 0; i < n; ++i) {
    const std::uint64_t g = rng() % mapped_rows;
    const auto it =
        std::upper_bound(mapped.begin(), mapped.end(), g, [](std::uint64_t v, const auto& m) { return v < m.second; });
    const std::size_t lc = it->first;
    const int l = static_cast<int>(lc / static_cast<std::size_t>(cols));
    const int c = static_cast<int>(lc % static_cast<std::size_t>(cols));
    const std::uint64_t before = it == mapped.begin() ? 0 : std::prev(it)->second;
    const std::int64_t r = layout.region_offset(l, c) + static_cast<std::int64_t>(g - before);
    const std::byte* p = host->ResidentRow(l, c, r);
    host_src[i] = p;
    dev_src[i] = reinterpret_cast<std::uint64_t>(p + zc_delta[lc]);
  }
  const bool sorted = Sort(n);
  if (sorted) std::sort(dev_src.begin(), dev_src.end());
  std::byte* pinned = staging_arena->data();
  const std::uint64_t bytes = n * row_bytes;
  if (bytes > staging_arena->size() || n * 8 > desc_bytes) {
    path = MissPath::kStaged;
    path_reason = "staging too small to measure; staged";
    return Status::Ok();
  }
  engram::detail::ThreadPool pool(std::max<std::uint32_t>(opt.prefetch.gather_threads, 1) - 1);
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  ENGRAM_CUDA_RETURN(cudaEventCreate(&e0));
  ENGRAM_CUDA_RETURN(cudaEventCreate(&e1));
  double best_staged = 1e30, best_zc = 1e30;
  ENGRAM_CUDA_RETURN(cudaMemcpy(desc_dev, dev_src.data(), n * 8, cudaMemcpyHostToDevice));
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = Clock::now();
    constexpr std::uint64_t kChunk = 4096;
    pool.ParallelFor((n + kChunk - 1) / kChunk, [&](std::size_t c) {
      for (std::uint64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) {
        std::memcpy(pinned + i * row_bytes, host_src[i], row_bytes);
      }
    });
    ENGRAM_CUDA_RETURN(cudaMemcpyAsync(staging_dev, pinned, bytes, cudaMemcpyHostToDevice, copy));
    ENGRAM_CUDA_RETURN(cudaStreamSynchronize(copy));
    best_staged = std::min(best_staged, std::chrono::duration<double>(Clock::now() - t0).count());
    ENGRAM_CUDA_RETURN(cudaEventRecord(e0, copy));
    ENGRAM_RETURN_IF_ERROR(
        kernels::LaunchGather(reinterpret_cast<const std::uint64_t*>(desc_dev), n, staging_dev, row_bytes, copy));
    ENGRAM_CUDA_RETURN(cudaEventRecord(e1, copy));
    ENGRAM_CUDA_RETURN(cudaEventSynchronize(e1));
    float ms = 0;
    ENGRAM_CUDA_RETURN(cudaEventElapsedTime(&ms, e0, e1));
    best_zc = std::min(best_zc, static_cast<double>(ms) / 1e3);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  staged_rate = static_cast<double>(n) / best_staged;
  zero_copy_rate = static_cast<double>(n) / best_zc;
  path = zero_copy_rate > staged_rate ? MissPath::kZeroCopy : MissPath::kStaged;
  path_reason = "measured: staged " + std::to_string(static_cast<std::uint64_t>(staged_rate)) + " rows/s, zero-copy " +
                std::to_string(static_cast<std::uint64_t>(zero_copy_rate)) + " rows/s (" + std::to_string(n) +
                " random rows of " + std::to_string(row_bytes) + " B over every mapped region" +
                (sorted ? ", read in address order" : "") + ", " +
                std::to_string(std::max<std::uint32_t>(opt.prefetch.gather_threads, 1)) + " gather threads)";
  if (path == MissPath::kZeroCopy) {
    // Reads through the mapping win, so the whole step goes to the device when it can: no host work per
    // row at all.
    if (device_possible) {
      path = MissPath::kDevice;
      path_reason += "; every region in HBM or mapped: the step runs on the device";
    } else {
      path_reason += "; no device pipeline: " + why_not_device;
    }
  }
  Log(LogLevel::kInfo, "working set: {} path; {}", MissPathName(path), path_reason);
  return Status::Ok();
}

Result<std::unique_ptr<StepEvents>> WorkingSet::Impl::NewStepEvents() const {
  auto e = std::make_unique<StepEvents>();
  for (auto* v : {&e->start, &e->copied, &e->flagged, &e->done}) v->assign(static_cast<std::size_t>(layers), nullptr);
  const unsigned event_flags = opt.device_timing == DeviceTiming::kOn ? cudaEventDefault : cudaEventDisableTiming;
  for (auto* v : {&e->start, &e->copied, &e->flagged, &e->done}) {
    for (auto& ev : *v) {
      if (const cudaError_t err = cudaEventCreateWithFlags(&ev, event_flags); err != cudaSuccess) {
        ev = nullptr;
        DestroyStepEvents(*e);
        return detail::CudaStatus(err, "cudaEventCreateWithFlags", __FILE__, __LINE__);
      }
    }
  }
  return e;
}

Status WorkingSet::Impl::ReserveEvents() {
  std::size_t need = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    ++events_owed;
    need = events_owed > free_events.size() ? events_owed - free_events.size() : 0;
  }
  for (std::size_t i = 0; i < need; ++i) {
    auto e = NewStepEvents();
    std::lock_guard<std::mutex> lock(mu);
    if (!e.ok()) {
      --events_owed;
      return e.status();
    }
    free_events.push_back(std::move(*e));
  }
  return Status::Ok();
}

Result<StepEvents*> WorkingSet::Impl::EventsFor(StepId step) {
  std::lock_guard<std::mutex> lock(mu);
  auto it = events.find(step);
  if (it != events.end()) return it->second.get();
  std::unique_ptr<StepEvents> e;
  if (!free_events.empty()) {
    e = std::move(free_events.back());
    free_events.pop_back();
  } else {
    if (!device()) {
      Log(LogLevel::kWarn,
          "working set: step {}: no event set reserved for it; creating one on the prefetcher's thread, which can "
          "wait behind a full launch queue",
          step);
    }
    ENGRAM_ASSIGN_OR_RETURN(e, NewStepEvents());
  }
  if (!device() && events_owed > 0) --events_owed;
  StepEvents* raw = e.get();
  events.emplace(step, std::move(e));
  return raw;
}

Status WorkingSet::Impl::Plan(StepId step, int l, std::int64_t tokens, std::span<const std::int64_t> rows,
                              std::span<const int> columns, std::span<std::uint8_t> stage) {
  PlanState& p = plan;
  const std::size_t nd = rows.size();
  p.step = step;
  p.layer = l;
  p.tokens = tokens;
  p.src.assign(nd, 0);
  p.kind.assign(nd, kRegion);
  p.fills.clear();
  p.erase.clear();
  p.inserts.clear();
  p.zero_copy.clear();
  p.staged_count = 0;
  ++plan_stamp;
  // 1. HBM regions are offsets; other rows go to their directory shard.
  std::uint64_t region_hits = 0;
  for (auto& sh : shards) sh.rows.clear();
  for (std::size_t i = 0; i < nd; ++i) {
    const std::size_t lc = LC(l, columns[i]);
    if (region_base[lc] != nullptr) {
      p.src[i] = reinterpret_cast<std::uint64_t>(region_base[lc] +
                                                 static_cast<std::uint64_t>(rows[i] - region_first[lc]) * row_bytes);
      ++region_hits;
      continue;
    }
    p.kind[i] = kStaged;
    if (!shards.empty()) shards[ShardOf(memory::RowKey(l, rows[i]))].rows.push_back(static_cast<std::uint32_t>(i));
  }
  // 2. Each shard (its own map, policy and slots) decides hits and admissions, in parallel for large steps.
  auto run_shard = [&](std::size_t si) {
    Shard& sh = shards[si];
    sh.fills.clear();
    sh.erase.clear();
    sh.inserts.clear();
    sh.hits = sh.admitted = sh.evicted = 0;
    for (const std::uint32_t i : sh.rows) {
      const std::uint64_t key = memory::RowKey(l, rows[i]);
      if (const std::int64_t hit = sh.map.Find(key); hit >= 0) {
        sh.policy->OnHit(static_cast<std::uint32_t>(hit) - sh.base);
        p.src[i] = reinterpret_cast<std::uint64_t>(cache_rows + static_cast<std::uint64_t>(hit) * row_bytes);
        p.kind[i] = kHit;
        ++sh.hits;
        continue;
      }
      const memory::RowCachePolicy::Admission a = sh.policy->OnMiss(key, 2 + columns[i] / layout.heads());
      if (!a.admit) continue;
      const std::uint32_t s = sh.base + a.slot;
      // The fill's source is patched to the row's staging address once those are assigned (step 3).
      const Fill f{i, reinterpret_cast<std::uint64_t>(cache_rows + static_cast<std::uint64_t>(s) * row_bytes)};
      const std::uint64_t old = key_in[s];
      bool reuse = false;
      if (old != kEmptyKey) {
        sh.map.Erase(old);
        ++sh.evicted;
        // A row admitted earlier in this layer and evicted again: its fill and insert are replaced.
        reuse = fill_stamp[s] == plan_stamp;
        if (!reuse) sh.erase.push_back(old);
      }
      key_in[s] = key;
      sh.map.Insert(key, s);
      ++sh.admitted;
      if (reuse) {
        sh.fills[fill_pos[s]] = f;
        sh.inserts[fill_pos[s]] = {key, s};
      } else {
        fill_stamp[s] = plan_stamp;
        fill_pos[s] = static_cast<std::uint32_t>(sh.fills.size());
        sh.fills.push_back(f);
        sh.inserts.push_back({key, s});
      }
    }
  };
  if (nd >= 4096 && plan_pool != nullptr) {
    plan_pool->ParallelFor(shards.size(), run_shard);
  } else {
    for (std::size_t si = 0; si < shards.size(); ++si) run_shard(si);
  }
  // 3. Staging addresses in distinct order: staged rows from the start of device staging (the order the
  // prefetcher packs them), rows read through the mapping from its end.
  std::uint64_t zc = 0;
  for (std::size_t i = 0; i < nd; ++i) {
    stage[i] = 0;
    if (p.kind[i] != kStaged) continue;
    const int c = columns[i];
    const std::size_t lc = LC(l, c);
    if (path == MissPath::kZeroCopy && zc_ok[lc] != 0) {
      // Read once through the mapping into device staging, so that repeated lookups and the cache fill
      // read HBM, not the host.
      p.src[i] = reinterpret_cast<std::uint64_t>(staging_dev + (max_lookups - 1 - zc) * row_bytes);
      p.zero_copy.push_back(
          {reinterpret_cast<std::uint64_t>(host->ResidentRow(l, c, rows[i]) + zc_delta[lc]), p.src[i]});
      ++zc;
    } else {
      p.src[i] = reinterpret_cast<std::uint64_t>(staging_dev + p.staged_count * row_bytes);
      stage[i] = 1;
      ++p.staged_count;
    }
  }
  std::uint64_t hits = 0, admitted = 0, evicted = 0, held = 0;
  for (const auto& sh : shards) {
    for (Fill f : sh.fills) {
      f.src = p.src[f.src];
      p.fills.push_back(f);
    }
    p.erase.insert(p.erase.end(), sh.erase.begin(), sh.erase.end());
    p.inserts.insert(p.inserts.end(), sh.inserts.begin(), sh.inserts.end());
    hits += sh.hits;
    admitted += sh.admitted;
    evicted += sh.evicted;
    held += sh.map.size();
  }
  Log(LogLevel::kDebug, "working set: step {} layer index {} planned", step, l);
  std::lock_guard<std::mutex> lock(mu);
  st.cache_held = held;
  st.hbm_region_hits += region_hits;
  st.cache_hits += hits;
  st.zero_copy_rows += zc;
  st.staged_rows += p.staged_count;
  st.admissions += admitted;
  st.evictions += evicted;
  return Status::Ok();
}

Status WorkingSet::Impl::Enqueue(std::span<const std::int32_t> lookup, std::span<const std::byte> staged) {
  PlanState& p = plan;
  const std::uint32_t slot = SlotOf(p.step);
  const std::size_t sl = SL(slot, p.layer);
  const auto n = static_cast<std::uint64_t>(p.tokens) * static_cast<std::uint64_t>(cols);
  ENGRAM_ASSIGN_OR_RETURN(StepEvents * ev, EventsFor(p.step));
  Log(LogLevel::kDebug, "working set: step {} layer index {}: events ready", p.step, p.layer);
  const auto l = static_cast<std::size_t>(p.layer);
  // The descriptors of the previous step in this slot must have been copied before they are rewritten
  // (an event never recorded is complete).
  ENGRAM_CUDA_RETURN(cudaEventSynchronize(desc_free[sl]));
  Log(LogLevel::kDebug, "working set: step {} layer index {}: slot {}'s descriptors free", p.step, p.layer, slot);
  std::byte* h = desc_host[sl];
  std::uint64_t off = 0;
  auto put = [&](const void* src, std::uint64_t bytes) {
    const std::uint64_t at = off;
    if (bytes > 0) std::memcpy(h + at, src, bytes);
    off = Align(off + bytes, 16);
    return at;
  };
  // Each lookup's source address, resolved here: the kernel then does one dependent load per row, as a
  // plain gather does.
  std::uint64_t o_src = 0;
  if (!lookup.empty()) {
    o_src = off;
    auto* dst = reinterpret_cast<std::uint64_t*>(h + off);
    for (std::size_t i = 0; i < lookup.size(); ++i)
      dst[i] = lookup[i] >= 0 ? p.src[static_cast<std::size_t>(lookup[i])] : 0;
    off = Align(off + lookup.size() * 8, 16);
  }
  const std::uint64_t o_fill = put(p.fills.data(), p.fills.size() * sizeof(Fill));
  const std::uint64_t o_erase = put(p.erase.data(), p.erase.size() * 8);
  const std::uint64_t o_ins = put(p.inserts.data(), p.inserts.size() * sizeof(KeySlot));
  const std::uint64_t o_zc = put(p.zero_copy.data(), p.zero_copy.size() * sizeof(Fill));
  ENGRAM_CUDA_RETURN(cudaEventRecord(ev->start[l], copy));
  ENGRAM_CUDA_RETURN(cudaMemcpyAsync(desc_dev, h, off, cudaMemcpyHostToDevice, copy));
  ENGRAM_CUDA_RETURN(cudaEventRecord(desc_free[sl], copy));
  if (!staged.empty()) {
    ENGRAM_CUDA_RETURN(cudaMemcpyAsync(staging_dev, staged.data(), staged.size(), cudaMemcpyHostToDevice, copy));
  }
  ENGRAM_RETURN_IF_ERROR(kernels::LaunchFill(reinterpret_cast<const std::uint64_t*>(desc_dev + o_zc),
                                             p.zero_copy.size(), row_bytes, copy));
  ENGRAM_CUDA_RETURN(cudaEventRecord(ev->copied[l], copy));
  const auto flag = reinterpret_cast<CUdeviceptr>(flags + sl);
  ENGRAM_RETURN_IF_ERROR(DriverStatus(memops.wait(copy, flag, 0, CU_STREAM_WAIT_VALUE_EQ), "cuStreamWaitValue32"));

  ENGRAM_CUDA_RETURN(cudaEventRecord(ev->flagged[l], copy));
  kernels::AssembleArgs a;
  a.src = lookup.empty() ? nullptr : reinterpret_cast<const std::uint64_t*>(desc_dev + o_src);
  a.rows_out = out_rows[sl];
  a.bf16_out = reinterpret_cast<std::uint16_t*>(out_bf16[sl]);
  a.n = n;
  a.row_bytes = row_bytes;
  a.dim = dim;
  const std::size_t err = (p.step % kErrorRing) * static_cast<std::size_t>(layers) + l;
  errors_host[err] = 0;
  a.error = errors_dev + err;
  ENGRAM_RETURN_IF_ERROR(kernels::LaunchAssemble(a, copy));
  if (cache_slots > 0) {
    ENGRAM_RETURN_IF_ERROR(kernels::LaunchFill(reinterpret_cast<const std::uint64_t*>(desc_dev + o_fill),
                                               p.fills.size(), row_bytes, copy));
    kernels::TableArgs t{table_keys, table_slots, slot_key, table_cap - 1};
    ENGRAM_RETURN_IF_ERROR(
        kernels::LaunchTableErase(t, reinterpret_cast<const std::uint64_t*>(desc_dev + o_erase), p.erase.size(), copy));
    ENGRAM_RETURN_IF_ERROR(kernels::LaunchTableInsert(t, reinterpret_cast<const std::uint64_t*>(desc_dev + o_ins),
                                                      p.inserts.size(), copy));
    tombs += p.erase.size();
    std::size_t live = 0;
    for (const auto& sh : shards) live += sh.map.size();
    if (live + tombs > table_cap * 3 / 4) {
      ENGRAM_CUDA_RETURN(cudaMemsetAsync(table_keys, 0xFF, table_cap * 8, copy));
      ENGRAM_RETURN_IF_ERROR(kernels::LaunchTableRebuild(t, cache_slots, copy));
      tombs = 0;
      std::lock_guard<std::mutex> lock(mu);
      ++st.table_rebuilds;
    }
  }
  ENGRAM_CUDA_RETURN(cudaEventRecord(ev->done[l], copy));
  ENGRAM_RETURN_IF_ERROR(
      DriverStatus(memops.write(copy, flag, 1, CU_STREAM_WRITE_VALUE_DEFAULT), "cuStreamWriteValue32"));
  Log(LogLevel::kDebug, "working set: step {} layer index {} enqueued (slot {}, {} distinct, {} staged, {} fills)",
      p.step, p.layer, slot, p.src.size(), p.staged_count, p.fills.size());
  std::lock_guard<std::mutex> lock(mu);
  st.staged_bytes += off + staged.size();
  ++st.layers;
  return Status::Ok();
}

Status WorkingSet::Impl::Ready(StepId step, int l, const prefetch::DeviceLayerInput& in) {
  if (plan.step != step || plan.layer != l || in.rows.size() != plan.src.size() ||
      in.staged.size() != plan.staged_count * row_bytes) {
    return Status::Internal("working set: Ready does not match the plan of step " + std::to_string(step) +
                            " layer index " + std::to_string(l));
  }
  Status s = Enqueue(in.lookup, in.staged);
  if (!s.ok()) {
    std::lock_guard<std::mutex> lock(mu);
    ++st.failed_layers;
  }
  return s;
}

void WorkingSet::Impl::Failed(StepId step, int l, const Status& status) {
  // The rows never arrived: every admission of the layer is undone (its slot emptied on the host and, by
  // an insert of the empty key, on the device); the layer's output is zeros, with its flag set so no
  // stream hangs.
  if (plan.step == step && plan.layer == l) {
    for (std::size_t f = 0; f < plan.fills.size(); ++f) {
      const auto s = static_cast<std::uint32_t>(plan.inserts[f].slot);
      shards[ShardOf(plan.inserts[f].key)].map.Erase(plan.inserts[f].key);
      key_in[s] = kEmptyKey;
      plan.inserts[f].key = kEmptyKey;
      plan.fills[f].src = 0;
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    ++st.failed_layers;
    st.cache_held = 0;
    for (const auto& sh : shards) st.cache_held += sh.map.size();
  }
  if (Status e = Enqueue({}, {}); !e.ok()) {
    Log(LogLevel::kError, "working set: step {} layer index {}: could not enqueue the failed layer: {}", step, l,
        e.ToString());
  }
  (void)status;
}

void WorkingSet::Impl::AppendPendingIds() {
  if (!pending_ids) return;
  PendingIds p = std::move(*pending_ids);
  pending_ids.reset();
  const cudaError_t e = cudaEventSynchronize(ids_copied[p.slot]);
  Status first;
  auto fail = [&](SequenceId id, Status why) {
    failed_sequences[id] = why;
    if (first.ok()) first = std::move(why);
  };
  if (e != cudaSuccess) {
    const Status s = Status::Internal(std::string("working set: the ids of step ") + std::to_string(p.step) +
                                      " did not reach the host: " + cudaGetErrorString(e));
    for (SequenceId id : p.sequences) fail(id, s);
  } else {
    // Each sequence's ids checked as Submit checks host ids (raw ids compressed with the store's map);
    // the good ones appended in one batch, the bad ones' sequences failed.
    std::vector<std::vector<std::int32_t>> ids(p.sequences.size());
    std::vector<prefetch::SequenceInput> good;
    std::int64_t at = 0;
    for (std::size_t b = 0; b < p.sequences.size(); ++b) {
      const std::span<const std::int32_t> got(ids_host[p.slot] + at, static_cast<std::size_t>(p.tokens[b]));
      at += p.tokens[b];
      ids[b].resize(got.size());
      Status s;
      if (p.kind == DeviceIds::kRaw) {
        s = store.token_map()->Compress(got, ids[b]);
      } else {
        std::copy(got.begin(), got.end(), ids[b].begin());
        s = CheckCompressedIds(ids[b], layout);
      }
      if (!s.ok()) {
        fail(p.sequences[b], Status(StatusCode::kInvalidArgument,
                                    "working set: step " + std::to_string(p.step) + ": device ids of sequence " +
                                        std::to_string(p.sequences[b]) + ": " + s.message()));
      } else {
        good.push_back({p.sequences[b], ids[b], p.dead[b]});
      }
    }
    if (!good.empty()) {
      const Status s = prefetcher->Append(good).status();
      if (!s.ok()) {
        for (const auto& in : good) fail(in.sequence, s);
      }
    }
  }
  if (!first.ok()) {
    std::lock_guard<std::mutex> lock(mu);
    step_errors[p.step] = first;
    // Keep the recent steps' errors only (LayerStatus asks about steps in flight).
    while (step_errors.size() > kErrorRing) step_errors.erase(step_errors.begin());
  }
}

Result<StepId> WorkingSet::Impl::SubmitDevice(std::span<const prefetch::SequenceInput> batch,
                                              const DeviceIdsIn* dev_ids) {
  if (batch.size() > static_cast<std::size_t>(opt.max_tokens)) {
    return Status::InvalidArgument("working set: a step of " + std::to_string(batch.size()) +
                                   " sequences is over max_tokens " + std::to_string(opt.max_tokens));
  }
  std::lock_guard<std::mutex> submit(submit_mu);
  AppendPendingIds();
  for (const auto& in : batch) ENGRAM_RETURN_IF_ERROR(SequenceUsable(in.sequence));
  // Ids on the device: the windows around placeholders, appended once the host has the ids.
  ENGRAM_ASSIGN_OR_RETURN(prefetch::StepWindows w,
                          dev_ids != nullptr ? prefetcher->Windows(batch) : prefetcher->Append(batch));
  const StepId step = next_device_step++;
  const std::uint32_t slot = SlotOf(step);
  const auto tokens = static_cast<std::uint64_t>(w.segment_begin.back());
  const auto nseg = static_cast<std::uint32_t>(w.segment_begin.size() - 1);
  const auto hist = static_cast<std::size_t>(layout.max_ngram() - 1);
  const std::uint64_t n = tokens * static_cast<std::uint64_t>(cols);
  ENGRAM_ASSIGN_OR_RETURN(StepEvents * ev, EventsFor(step));
  {
    std::lock_guard<std::mutex> lock(mu);
    step_tokens[step] = static_cast<std::int64_t>(tokens);
  }
  // The upload: miss counts (zero), each token's window position, the windows; from this slot's pinned
  // buffer once its previous upload is done, on the upload stream once the copy stream is done with the
  // slot's device buffer (the step `slots` before), so that it overlaps the step before.
  ENGRAM_CUDA_RETURN(cudaEventSynchronize(up_free[slot]));
  std::byte* up = up_host[slot];
  std::byte* dev = up_dev[slot];
  const std::uint64_t win_at = up_counts + Align(tokens * 4, 16);
  const std::uint64_t up_step = win_at + w.window.size() * 4;
  std::memset(up, 0, up_counts);
  std::memcpy(up + win_at, w.window.data(), w.window.size() * 4);
  auto* pos = reinterpret_cast<std::uint32_t*>(up + up_counts);
  for (std::uint32_t sg = 0; sg < nseg; ++sg) {
    const auto at = static_cast<std::uint32_t>(w.segment_begin[sg] + sg * hist + hist);
    for (std::uint32_t k = w.segment_begin[sg]; k < w.segment_begin[sg + 1]; ++k)
      pos[k] = at + (k - w.segment_begin[sg]);
  }
  ENGRAM_CUDA_RETURN(cudaStreamWaitEvent(upload, up_used[slot], 0));
  ENGRAM_CUDA_RETURN(cudaMemcpyAsync(dev, up, up_step, cudaMemcpyHostToDevice, upload));
  if (dev_ids != nullptr) {
    // After the producer's work: the ids into the windows, and a copy of them for the host's history;
    // the producer's later work (its next write of the ids) waits until both have read them.
    ENGRAM_CUDA_RETURN(cudaEventRecord(ids_produced[slot], dev_ids->producer));
    ENGRAM_CUDA_RETURN(cudaStreamWaitEvent(upload, ids_produced[slot], 0));
    const bool raw = dev_ids->kind == DeviceIds::kRaw;
    ENGRAM_RETURN_IF_ERROR(
        kernels::LaunchPlaceIds(dev_ids->ids, tokens, reinterpret_cast<const std::uint32_t*>(dev + up_counts),
                                reinterpret_cast<std::int32_t*>(dev + win_at), raw ? token_map_dev : nullptr,
                                raw ? token_map_size : 0, layout.compressed_vocab_size(), upload));
    ENGRAM_CUDA_RETURN(cudaMemcpyAsync(ids_host[slot], dev_ids->ids, tokens * 4, cudaMemcpyDeviceToHost, upload));
    ENGRAM_CUDA_RETURN(cudaEventRecord(ids_copied[slot], upload));
    ENGRAM_CUDA_RETURN(cudaStreamWaitEvent(dev_ids->producer, ids_copied[slot], 0));
  }
  ENGRAM_CUDA_RETURN(cudaEventRecord(up_free[slot], upload));
  ENGRAM_CUDA_RETURN(cudaStreamWaitEvent(copy, up_free[slot], 0));
  auto* miss_count_dev = reinterpret_cast<std::uint32_t*>(dev);
  // Layers in groups: all of them in one launch for a small step, else one by one (layer 0 first). Each
  // group waits for its layers' output slots to be released, in one call, and sets their flags in one.
  const bool fused = Fuse(n);
  ev->fused = fused;
  ev->sorted = false;
  const int group = fused ? layers : 1;
  std::array<CUdeviceptr, kernels::kMaxFusedLayers> group_flags{};
  for (int l0 = 0; l0 < layers; l0 += group) {
    kernels::ResolveBatch group_args;
    group_args.layers = group;
    for (int l = l0; l < l0 + group; ++l) {
      const auto li = static_cast<std::size_t>(l);
      const std::size_t sl = SL(slot, l);
      group_flags[static_cast<std::size_t>(l - l0)] = reinterpret_cast<CUdeviceptr>(flags + sl);
      kernels::ResolveArgs& a = group_args.layer[l - l0];
      a.window = reinterpret_cast<const std::int32_t*>(dev + win_at);
      a.token_pos = reinterpret_cast<const std::uint32_t*>(dev + up_counts);
      a.hash = hashers[li].params();
      a.columns = colsrc_dev + LC(l, 0);
      a.num_columns = static_cast<std::uint32_t>(cols);
      a.key_base = memory::RowKey(l, 0);
      a.cache = set_cache;
      a.miss_count = miss_count_dev + l;
      a.misses = miss_dev + (fused ? li * n : 0);
      a.miss_rows = miss_rows_dev + (fused ? li * n : 0);
      a.counters = counters_dev;
      a.out.rows_out = out_rows[sl];
      a.out.bf16_out = reinterpret_cast<std::uint16_t*>(out_bf16[sl]);
      a.out.n = n;
      a.out.row_bytes = row_bytes;
      a.out.dim = dim;
      const std::size_t err = (step % kErrorRing) * static_cast<std::size_t>(layers) + li;
      errors_host[err] = 0;
      a.out.error = errors_dev + err;
    }
    // A large layer reads its rows in address order: hashed and sorted before its output slot is free
    // (timed between the step's start and copied events of the layer, which the device path has spare).
    // The timing events only when timed (each is a stream operation of its own).
    const bool timed = opt.device_timing == DeviceTiming::kOn;
    if (Sort(n)) {
      if (timed) ENGRAM_CUDA_RETURN(cudaEventRecord(ev->start[static_cast<std::size_t>(l0)], copy));
      ENGRAM_RETURN_IF_ERROR(
          kernels::LaunchSortLookups(group_args.layer[0], sort_buffers, opt.sorted_lookups_per_warp, copy));
      if (timed) ENGRAM_CUDA_RETURN(cudaEventRecord(ev->copied[static_cast<std::size_t>(l0)], copy));
    }
    ev->sorted = Sort(n);
    const std::span<const CUdeviceptr> gf(group_flags.data(), static_cast<std::size_t>(group));
    ENGRAM_RETURN_IF_ERROR(FlagOps(memops, copy, gf, false));
    if (timed) ENGRAM_CUDA_RETURN(cudaEventRecord(ev->flagged[static_cast<std::size_t>(l0)], copy));
    ENGRAM_RETURN_IF_ERROR(kernels::LaunchResolve(group_args, copy));
    // One completion event per group: a fused step's layers are ready together (DoneEvent).
    ENGRAM_CUDA_RETURN(cudaEventRecord(ev->done[static_cast<std::size_t>(l0 + group - 1)], copy));
    ENGRAM_RETURN_IF_ERROR(FlagOps(memops, copy, gf, true));
    // The misses go into the cache after the layers are released: the consumer only reads the outputs the
    // admit kernel copies from, and whatever could overwrite them or probe the cache (the next steps) comes
    // after it on this stream.
    ENGRAM_RETURN_IF_ERROR(kernels::LaunchAdmit(group_args, n, copy));
  }
  ENGRAM_CUDA_RETURN(cudaEventRecord(up_used[slot], copy));
  if (dev_ids != nullptr) {
    // Only a step enqueued whole appends its ids later; one that failed above appends nothing.
    PendingIds p;
    p.step = step;
    p.slot = slot;
    p.kind = dev_ids->kind;
    for (const auto& in : batch) {
      p.sequences.push_back(in.sequence);
      p.tokens.push_back(static_cast<std::int64_t>(in.tokens.size()));
      p.dead.emplace_back(in.dead.begin(), in.dead.end());
    }
    pending_ids = std::move(p);
  }
  std::lock_guard<std::mutex> lock(mu);
  st.layers += static_cast<std::uint64_t>(layers);
  st.staged_bytes += (w.window.size() + tokens) * 4;
  return step;
}

void WorkingSet::Impl::RunFinisher() {
  std::unique_lock<std::mutex> lock(mu);
  while (true) {
    cv.wait(lock, [&] { return stop || !to_finish.empty(); });
    if (to_finish.empty()) return;
    const StepId step = to_finish.front();
    to_finish.pop_front();
    lock.unlock();
    Log(LogLevel::kDebug, "working set: finishing step {}", step);
    // The host side of every layer first (so every layer's copies are enqueued), then the copies.
    for (int l = 0; l < layers && !device(); ++l) (void)prefetcher->Wait(step, l);
    StepEvents* ev = nullptr;
    {
      std::lock_guard<std::mutex> g(mu);
      if (auto it = events.find(step); it != events.end()) ev = it->second.get();
    }
    double copy_s = 0, assemble_s = 0, sort_s = 0;
    if (ev != nullptr) {
      cudaEventSynchronize(ev->copied[static_cast<std::size_t>(layers - 1)]);
      if (!device()) (void)prefetcher->Finish(step);
      cudaEventSynchronize(ev->done[static_cast<std::size_t>(layers - 1)]);
      const bool timed = opt.device_timing == DeviceTiming::kOn;
      for (std::size_t l = 0; timed && l < static_cast<std::size_t>(layers); ++l) {
        float a = 0, b = 0;
        // The device pipeline's uploads overlap the steps before them and are not timed; its sorts are.
        if ((!device() || ev->sorted) && cudaEventElapsedTime(&a, ev->start[l], ev->copied[l]) == cudaSuccess) {
          (device() ? sort_s : copy_s) += a / 1e3;
        }
        // A fused step has one span, flagged[0] .. done[last].
        const std::size_t to = ev->fused ? static_cast<std::size_t>(layers - 1) : l;
        if ((!ev->fused || l == 0) && cudaEventElapsedTime(&b, ev->flagged[l], ev->done[to]) == cudaSuccess) {
          assemble_s += b / 1e3;
        }
      }
    } else if (!device()) {
      (void)prefetcher->Finish(step);
    }
    lock.lock();
    st.copy_seconds += copy_s;
    st.assemble_seconds += assemble_s;
    st.sort_seconds += sort_s;
    if (auto it = events.find(step); it != events.end()) {
      free_events.push_back(std::move(it->second));
      events.erase(it);
    }
    step_tokens.erase(step);
    cv.notify_all();
  }
}

void WorkingSet::Impl::DrainCopyStream() {
  // The copy stream may be waiting for consumers that will never say Done: release every slot until it
  // has nothing left.
  if (copy == nullptr) return;
  cudaStream_t side = nullptr;
  if (cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking) != cudaSuccess) side = nullptr;
  while (cudaStreamQuery(copy) == cudaErrorNotReady) {
    if (side != nullptr && flags != nullptr) {
      cudaMemsetAsync(flags, 0, static_cast<std::uint64_t>(slots) * static_cast<std::uint64_t>(layers) * 4, side);
      cudaStreamSynchronize(side);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  if (side != nullptr) cudaStreamDestroy(side);
}

WorkingSet::Impl::~Impl() {
  // The prefetcher finishes its queued steps (each enqueues device work), while a drainer keeps the copy
  // stream moving.
  std::atomic<bool> draining{true};
  std::thread drainer([&] {
    while (draining.load()) {
      DrainCopyStream();
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  {
    std::lock_guard<std::mutex> lock(mu);
    stop = true;
  }
  cv.notify_all();
  if (finisher.joinable()) finisher.join();
  prefetcher.reset();
  draining = false;
  drainer.join();
  DrainCopyStream();
  if (copy != nullptr) cudaStreamSynchronize(copy);
  if (upload != nullptr) cudaStreamSynchronize(upload);
  for (auto& [id, e] : events) free_events.push_back(std::move(e));
  for (auto& e : free_events) DestroyStepEvents(*e);
  for (auto e : desc_free) {
    if (e != nullptr) cudaEventDestroy(e);
  }
  for (void* p : allocations) cudaFree(p);
  if (errors_host != nullptr) cudaFreeHost(errors_host);
  if (counters_host != nullptr) cudaFreeHost(counters_host);
  if (counters_stream != nullptr) cudaStreamDestroy(counters_stream);
  for (std::byte* p : up_host) {
    if (p != nullptr) cudaFreeHost(p);
  }
  for (std::int32_t* p : ids_host) {
    if (p != nullptr) cudaFreeHost(p);
  }
  if (upload != nullptr) cudaStreamDestroy(upload);
  for (auto* v : {&up_free, &up_used, &ids_produced, &ids_copied}) {
    for (auto e : *v) {
      if (e != nullptr) cudaEventDestroy(e);
    }
  }
  if (copy != nullptr) cudaStreamDestroy(copy);
}

WorkingSet::WorkingSet(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
WorkingSet::~WorkingSet() = default;

Result<std::unique_ptr<WorkingSet>> WorkingSet::Create(const store::Store& store, store::VersionHandle version,
                                                       memory::HostTier* host_tier, const WorkingSetOptions& options) {
  ENGRAM_ASSIGN_OR_RETURN(DeviceInfo info, CurrentDevice());
  (void)info;
  if (!version.valid()) return Status::InvalidArgument("working set: the version handle is empty");
  if (host_tier != nullptr && !(host_tier->layout() == store.layout())) {
    return Status::InvalidArgument("working set: the host tier's layout is not the store's");
  }
  auto impl = std::make_unique<Impl>(store, version, host_tier, options);
  ENGRAM_RETURN_IF_ERROR(impl->Init());
  prefetch::PrefetcherOptions po = options.prefetch;
  po.device = impl.get();
  po.staging_arena = impl->staging_arena.get();
  if (impl->device()) {
    po.staging_bytes = 4096;
    po.gather_threads = 1;
  }
  ENGRAM_ASSIGN_OR_RETURN(impl->prefetcher, prefetch::Prefetcher::Create(store, std::move(version), host_tier, po));
  Impl* raw = impl.get();
  impl->finisher = std::thread([raw] { raw->RunFinisher(); });
  return std::unique_ptr<WorkingSet>(new WorkingSet(std::move(impl)));
}

Result<SequenceId> WorkingSet::CreateSequence() {
  return impl_->prefetcher->CreateSequence();
}
// Fork, Release and Rollback first append a device-ids step's ids (their history must hold them).
Result<SequenceId> WorkingSet::Fork(SequenceId parent) {
  Impl& im = *impl_;
  std::lock_guard<std::mutex> lock(im.submit_mu);
  im.AppendPendingIds();
  ENGRAM_RETURN_IF_ERROR(im.SequenceUsable(parent));
  return im.prefetcher->Fork(parent);
}
Status WorkingSet::Release(SequenceId id) {
  Impl& im = *impl_;
  std::lock_guard<std::mutex> lock(im.submit_mu);
  im.AppendPendingIds();
  im.failed_sequences.erase(id);
  return im.prefetcher->Release(id);
}
Status WorkingSet::Rollback(SequenceId id, std::int64_t k) {
  Impl& im = *impl_;
  std::lock_guard<std::mutex> lock(im.submit_mu);
  im.AppendPendingIds();
  ENGRAM_RETURN_IF_ERROR(im.SequenceUsable(id));
  return im.prefetcher->Rollback(id, k);
}

Result<StepId> WorkingSet::Submit(std::span<const prefetch::SequenceInput> batch) {
  std::size_t tokens = 0;
  for (const auto& in : batch) tokens += in.tokens.size();
  if (tokens > static_cast<std::size_t>(impl_->opt.max_tokens)) {
    return Status::InvalidArgument("working set: a step of " + std::to_string(tokens) + " tokens is over max_tokens " +
                                   std::to_string(impl_->opt.max_tokens));
  }
  if (impl_->device()) return impl_->SubmitDevice(batch);
  ENGRAM_RETURN_IF_ERROR(impl_->ReserveEvents());
  auto submitted = impl_->prefetcher->Submit(batch);
  if (!submitted.ok()) {
    std::lock_guard<std::mutex> lock(impl_->mu);
    --impl_->events_owed;
    return submitted.status();
  }
  const StepId id = *submitted;
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->step_tokens[id] = static_cast<std::int64_t>(tokens);
  return id;
}

Result<StepId> WorkingSet::SubmitDeviceIds(std::span<const DeviceSequenceInput> batch, const std::int32_t* ids,
                                           DeviceIds kind, Stream producer) {
  Impl& im = *impl_;
  if (!im.device()) {
    return Status::FailedPrecondition(std::string("working set: SubmitDeviceIds needs the device pipeline "
                                                  "(MissPath::kDevice); this working set runs ") +
                                      MissPathName(im.path));
  }
  if (kind == DeviceIds::kRaw && im.token_map_dev == nullptr) {
    return Status::FailedPrecondition(
        "working set: raw device ids need the store's token map, and this store has none; hand over compressed ids");
  }
  if (ids == nullptr) return Status::InvalidArgument("working set: SubmitDeviceIds: ids is null");
  // The step's upload stream waits on an event recorded on `producer`: that cannot be an event of a
  // graph being captured.
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  ENGRAM_CUDA_RETURN(cudaStreamIsCapturing(producer, &capturing));
  if (capturing != cudaStreamCaptureStatusNone) {
    return Status::FailedPrecondition(
        "working set: SubmitDeviceIds: the producer stream is capturing a CUDA graph; submit outside the capture");
  }
  std::int64_t tokens = 0;
  for (const auto& in : batch) {
    if (in.tokens <= 0 || (!in.dead.empty() && in.dead.size() != static_cast<std::size_t>(in.tokens))) {
      return Status::InvalidArgument("working set: sequence " + std::to_string(in.sequence) + ": " +
                                     std::to_string(in.tokens) + " tokens and " + std::to_string(in.dead.size()) +
                                     " DEAD flags (tokens must be positive; flags none or one per token)");
    }
    tokens += in.tokens;
  }
  if (tokens == 0) return Status::InvalidArgument("working set: SubmitDeviceIds: no tokens");
  if (tokens > im.opt.max_tokens) {
    return Status::InvalidArgument("working set: a step of " + std::to_string(tokens) + " tokens is over max_tokens " +
                                   std::to_string(im.opt.max_tokens));
  }
  // Placeholders (compressed id 0) where the device will write the ids; DEAD flags as given.
  const std::vector<std::int32_t> zeros(static_cast<std::size_t>(tokens), 0);
  std::vector<prefetch::SequenceInput> host;
  host.reserve(batch.size());
  std::size_t at = 0;
  for (const auto& in : batch) {
    host.push_back({in.sequence, std::span(zeros).subspan(at, static_cast<std::size_t>(in.tokens)), in.dead});
    at += static_cast<std::size_t>(in.tokens);
  }
  const Impl::DeviceIdsIn dev{ids, kind, producer};
  return im.SubmitDevice(host, &dev);
}

std::uint32_t WorkingSet::SlotOf(StepId step) const noexcept {
  return impl_->SlotOf(step);
}

// The flag of (slot, layer) as a driver address, or kOutOfRange.
static Result<CUdeviceptr> FlagOf(const WorkingSet::Impl& im, std::uint32_t slot, int l) {
  if (slot >= im.slots || l < 0 || l >= im.layers) {
    return Status::OutOfRange("working set: no slot " + std::to_string(slot) + " / layer index " + std::to_string(l));
  }
  return reinterpret_cast<CUdeviceptr>(im.flags + im.SL(slot, l));
}

Status WorkingSet::WaitSlot(std::uint32_t slot, int l, Stream stream) const {
  ENGRAM_ASSIGN_OR_RETURN(const CUdeviceptr flag, FlagOf(*impl_, slot, l));
  return DriverStatus(impl_->memops.wait(reinterpret_cast<CUstream>(stream), flag, 1, CU_STREAM_WAIT_VALUE_EQ),
                      "cuStreamWaitValue32");
}

Status WorkingSet::DoneSlot(std::uint32_t slot, int l, Stream stream) const {
  ENGRAM_ASSIGN_OR_RETURN(const CUdeviceptr flag, FlagOf(*impl_, slot, l));
  return DriverStatus(impl_->memops.write(reinterpret_cast<CUstream>(stream), flag, 0, CU_STREAM_WRITE_VALUE_DEFAULT),
                      "cuStreamWriteValue32");
}

Status WorkingSet::Wait(StepId step, int l, Stream stream) {
  Impl& im = *impl_;
  if (step == 0) return Status::InvalidArgument("working set: step 0 does not exist");
  const std::uint32_t slot = im.SlotOf(step);
  if (l < 0 || l >= im.layers)
    return Status::OutOfRange("working set: layer index " + std::to_string(l) + " is outside 0.." +
                              std::to_string(im.layers - 1));
  {
    std::lock_guard<std::mutex> lock(im.mu);
    if (step > im.slots && im.done_step[im.SL(slot, l)] != step - im.slots) {
      return Status::FailedPrecondition("working set: wait for step " + std::to_string(step) + " layer index " +
                                        std::to_string(l) + ": step " + std::to_string(step - im.slots) +
                                        " (same slot) was not Done for this layer");
    }
  }
  return WaitSlot(slot, l, stream);
}

Status WorkingSet::Done(StepId step, int l, Stream stream) {
  Impl& im = *impl_;
  if (step == 0) return Status::InvalidArgument("working set: step 0 does not exist");
  const std::uint32_t slot = im.SlotOf(step);
  ENGRAM_RETURN_IF_ERROR(DoneSlot(slot, l, stream));
  std::lock_guard<std::mutex> lock(im.mu);
  im.done_step[im.SL(slot, l)] = step;
  return Status::Ok();
}

Result<DeviceLayerOutput> WorkingSet::SlotOutput(std::uint32_t slot, int l) const {
  const Impl& im = *impl_;
  if (slot >= im.slots || l < 0 || l >= im.layers)
    return Status::OutOfRange("working set: no slot/layer " + std::to_string(slot) + "/" + std::to_string(l));
  DeviceLayerOutput o;
  o.tokens = im.opt.max_tokens;
  o.columns = im.cols;
  o.row_bytes = im.row_bytes;
  o.dim = im.dim;
  o.rows = im.out_rows[im.SL(slot, l)];
  o.bf16 = reinterpret_cast<std::uint16_t*>(im.out_bf16[im.SL(slot, l)]);
  return o;
}

Result<DeviceLayerOutput> WorkingSet::Output(StepId step, int l) const {
  if (step == 0) return Status::InvalidArgument("working set: step 0 does not exist");
  ENGRAM_ASSIGN_OR_RETURN(DeviceLayerOutput o, SlotOutput(impl_->SlotOf(step), l));
  std::lock_guard<std::mutex> lock(impl_->mu);
  auto it = impl_->step_tokens.find(step);
  if (it == impl_->step_tokens.end()) {
    return Status::NotFound("working set: output of step " + std::to_string(step) +
                            ": not planned yet or finished (LayerStatus waits for it)");
  }
  o.tokens = it->second;
  return o;
}

Status WorkingSet::LayerStatus(StepId step, int l) {
  if (l < 0 || l >= impl_->layers) return Status::OutOfRange("working set: layer index " + std::to_string(l));
  if (impl_->device()) {
    if (step == 0 || step >= impl_->next_device_step.load()) {
      return Status::NotFound("working set: no step " + std::to_string(step) + " (never submitted)");
    }
  } else {
    ENGRAM_RETURN_IF_ERROR(impl_->prefetcher->Wait(step, l));
  }
  cudaEvent_t done = nullptr;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (auto it = impl_->events.find(step); it != impl_->events.end()) done = it->second->DoneEvent(l);
  }
  if (done != nullptr) ENGRAM_CUDA_RETURN(cudaEventSynchronize(done));
  if (impl_->device()) {
    {
      std::lock_guard<std::mutex> lock(impl_->submit_mu);
      if (impl_->pending_ids && impl_->pending_ids->step == step) impl_->AppendPendingIds();
    }
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (auto it = impl_->step_errors.find(step); it != impl_->step_errors.end()) return it->second;
  }
  const std::uint32_t e = impl_->errors_host[(step % Impl::kErrorRing) * static_cast<std::size_t>(impl_->layers) +
                                             static_cast<std::size_t>(l)];
  if (e != 0) {
    return Status::Corruption("working set: step " + std::to_string(step) + " layer index " + std::to_string(l) +
                              ": lookup " + std::to_string(e - 1) + " holds a NaN code or scale (seen on the device)");
  }
  return Status::Ok();
}

Status WorkingSet::Finish(StepId step) {
  Impl& im = *impl_;
  {
    std::lock_guard<std::mutex> lock(im.mu);
    im.to_finish.push_back(step);
  }
  im.cv.notify_all();
  return Status::Ok();
}

Status WorkingSet::LookupAsync(int l, const std::int64_t* rows, std::uint32_t n, std::int32_t* slots,
                               Stream stream) const {
  const Impl& im = *impl_;
  if (l < 0 || l >= im.layers) return Status::OutOfRange("working set: layer index " + std::to_string(l));
  if (im.device()) {
    if (im.set_cache.sets == 0) return Status::FailedPrecondition("working set: no HBM cache (cache_bytes 0)");
    return kernels::LaunchSetLookup(im.set_cache, memory::RowKey(l, 0), rows, n, slots, stream);
  }
  if (im.cache_slots == 0) return Status::FailedPrecondition("working set: no HBM cache (cache_bytes 0)");
  kernels::TableArgs t{im.table_keys, im.table_slots, im.slot_key, im.table_cap - 1};
  return kernels::LaunchTableLookup(t, memory::RowKey(l, 0), rows, n, slots, stream);
}

const std::byte* WorkingSet::CacheSlotRow(std::int32_t slot) const noexcept {
  if (impl_->device()) {
    const std::uint64_t ways = static_cast<std::uint64_t>(impl_->set_cache.sets) * engram::detail::kSetWays;
    if (slot < 0 || static_cast<std::uint64_t>(slot) >= ways) return nullptr;
    return impl_->set_cache.rows + static_cast<std::uint64_t>(slot) * impl_->row_bytes;
  }
  if (slot < 0 || static_cast<std::uint32_t>(slot) >= impl_->cache_slots) return nullptr;
  return impl_->cache_rows + static_cast<std::uint64_t>(slot) * impl_->row_bytes;
}

Status WorkingSet::Synchronize() {
  // Every step submitted so far must have reached the copy stream first.
  ENGRAM_CUDA_RETURN(cudaStreamSynchronize(impl_->copy));
  return Status::Ok();
}

const Layout& WorkingSet::layout() const noexcept {
  return impl_->layout;
}

WorkingSetStats WorkingSet::stats() const {
  const Impl& im = *impl_;
  WorkingSetStats s;
  {
    std::lock_guard<std::mutex> lock(im.mu);
    s = im.st;
  }
  s.device_bytes = im.device_bytes;
  s.host = im.prefetcher->stats();
  if (im.device()) {
    // Copied now on a stream of their own (not behind the steps on the copy stream): every finished step
    // is counted, a step in flight in part.
    std::uint64_t c[kernels::kNumDeviceCounters];
    {
      std::lock_guard<std::mutex> lock(im.counters_mu);
      const cudaError_t e =
          cudaMemcpyAsync(im.counters_host, im.counters_dev, sizeof(c), cudaMemcpyDeviceToHost, im.counters_stream);
      const cudaError_t e2 = e == cudaSuccess ? cudaStreamSynchronize(im.counters_stream) : e;
      if (e2 != cudaSuccess) {
        Log(LogLevel::kWarn, "working set: stats: the device counters could not be read ({}); showing the last read",
            cudaGetErrorString(e2));
      }
      std::memcpy(c, im.counters_host, sizeof(c));
    }
    s.cache_hits = c[kernels::kCacheHits];
    s.zero_copy_rows = c[kernels::kHostReads];
    s.hbm_region_hits = c[kernels::kRegionReads];
    s.admissions = c[kernels::kAdmissions];
    s.evictions = c[kernels::kEvictions];
    s.cache_held = s.admissions - s.evictions;
  }
  return s;
}

std::string WorkingSet::StatsJson() const {
  const WorkingSetStats s = stats();
  nlohmann::ordered_json j;
  j["path"] = MissPathName(s.path);
  j["path_reason"] = s.path_reason;
  j["staged_rows_per_second"] = s.staged_rows_per_second;
  j["zero_copy_rows_per_second"] = s.zero_copy_rows_per_second;
  j["device_bytes"] = s.device_bytes;
  j["device_budget_bytes"] = s.device_budget_bytes;
  j["cache_slots"] = s.cache_slots;
  j["hbm_region_rows"] = s.hbm_region_rows;
  j["hbm_region_hits"] = s.hbm_region_hits;
  j["cache_hits"] = s.cache_hits;
  j["zero_copy_rows"] = s.zero_copy_rows;
  j["staged_rows"] = s.staged_rows;
  j["staged_bytes"] = s.staged_bytes;
  j["admissions"] = s.admissions;
  j["evictions"] = s.evictions;
  j["table_rebuilds"] = s.table_rebuilds;
  j["layers"] = s.layers;
  j["failed_layers"] = s.failed_layers;
  j["copy_seconds"] = s.copy_seconds;
  j["assemble_seconds"] = s.assemble_seconds;
  j["sort_seconds"] = s.sort_seconds;
  j["host"] = nlohmann::ordered_json::parse(impl_->prefetcher->StatsJson());
  return j.dump(2);
}

}  // namespace engram::gpu
