// The capacity planner: what a serving workload will ask of each tier, and how much throughput the
// Engram layers' rows will cost, before anyone buys the hardware. Used by `engram calibrate` and
// `engram plan` (docs/capacity-planning.md).
//
// Inputs:
//   - a Calibration of the machine (measured by `engram calibrate`: disk, host gather, hashing, PCIe,
//     zero-copy and HBM gathers, pinning), saved as JSON;
//   - a Workload: a token trace replayed in the serving shapes (engram/prefetch/workload.hpp), phase by
//     phase, exactly as bench_model runs it. Every step's distinct rows per layer are found, and each
//     row's LRU stack distance at that step (the distinct rows touched since its previous step): the
//     trace's miss-ratio curve (HitCurve: what an LRU cache of any size would hit). For a budget split
//     the tiers are then simulated over the same steps with the runtime's own decisions
//     (memory/cache_sim.hpp: the HBM cache's policy, or the device pipeline's set cache, in front of the
//     host tier's sharded cache), since engram's frequency-aware policies hit far more than LRU on real
//     text (CacheModel::kLru plans with the curve instead).
//   - the model: its layers, the backbone layers that carry Engram modules, and the compute time of one
//     layer per phase (measure the backbone alone; bench_model's configuration `none` prints it);
//   - Tiers: a budget split.
// The timing model replays the steps: the host serves layers in order (hash on gather_threads threads,
// de-duplicate, store reads of the misses, gather), each layer's rows then cross PCIe; the device
// pipeline instead resolves every lookup on the GPU (HBM hits, reads of mapped host memory). The
// compute stream reaches Engram module j at_j layers after the step started; it stalls until the rows
// are there. Decode steps are synchronous (a step is submitted when the one before ended); prefill
// chunks are submitted one chunk ahead.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engram/layout.hpp"
#include "engram/prefetch/workload.hpp"
#include "engram/status.hpp"

namespace engram::plan {

// A machine's measured rates (seconds, bytes, rows). 0: not measured.
struct Calibration {
  std::string machine;  // host name
  std::string date;     // ISO 8601, UTC
  // Host.
  std::uint32_t host_threads = 0;      // threads used for the host measurements (the prefetcher's gather_threads)
  std::uint32_t gather_row_bytes = 0;  // row size of the gather measurement
  double gather_rows_per_s = 0;        // random rows copied from a large array by host_threads threads
  double hash_lookups_per_s = 0;       // row ids hashed per second, on host_threads threads
  double dedupe_lookups_per_s = 0;     // row ids de-duplicated per second (one thread)
  double pin_bytes_per_s = 0;          // a pinned arena mapped, touched and registered
  std::string pin_path;                // how the arena was pinned (huge pages or not)
  // Disk: raw io_uring O_DIRECT random 4 KiB reads of `disk_file`.
  std::string disk_file;
  double disk_qd1_latency_s = 0;
  double disk_iops = 0;  // at queue depth 128
  // The store's row reads (Store::ReadRows of random rows), which read one page (rows_per_page consecutive
  // rows of a layer) per request: a read needing P pages takes store_read_fixed_s + P / store_pages_per_s.
  std::string store;
  std::uint32_t store_rows_per_page = 0;
  double store_read_fixed_s = 0;
  double store_pages_per_s = 0;
  // The measurements the line was fitted to: (pages per read call, seconds). The planner interpolates
  // between them (and extends the last segment), which follows the store better than the line when
  // calls of very different sizes are planned (a decode step's few thousand pages, a prefill chunk's
  // hundreds of thousands). In ascending order of pages.
  std::vector<std::pair<double, double>> store_read_points;
  // GPU.
  std::string gpu;         // empty: no GPU
  double h2d_fixed_s = 0;  // pinned host -> device copy: t(B) = h2d_fixed_s + B / h2d_bytes_per_s
  double h2d_bytes_per_s = 0;
  double zero_copy_rows_per_s = 0;  // a kernel reading random rows of mapped pinned host memory
  double hbm_rows_per_s = 0;        // the same from device memory
  double launch_s = 0;              // a kernel launch and an event, back to back
};

[[nodiscard]] std::string CalibrationJson(const Calibration& c);
// Parses CalibrationJson's form; `source` names the input in errors.
[[nodiscard]] Result<Calibration> ParseCalibration(std::string_view json, std::string_view source);
[[nodiscard]] Result<Calibration> LoadCalibration(const std::string& path);
// Seconds the store takes to read `pages` pages in one call, by the calibration.
[[nodiscard]] double StoreReadSeconds(const Calibration& c, double pages) noexcept;

struct CalibrateOptions {
  std::uint32_t threads = 0;                // 0: hardware threads (at most 16)
  std::uint32_t row_bytes = 264;            // the gather's row size (V4.1)
  std::uint64_t gather_bytes = 1ULL << 30;  // the array gathered from
  std::string disk_file;                    // a file to read (created, 1 GiB, if it does not exist); empty: skip
  std::uint64_t disk_file_bytes = 1ULL << 30;
  std::string store;     // a store whose row reads to time; empty: skip
  double seconds = 0.5;  // per measurement
};

// The host measurements (everything but the GPU's): gather, hashing, de-duplication, pinning, disk,
// store. Errors name the file at fault.
[[nodiscard]] Result<Calibration> CalibrateHost(const CalibrateOptions& options);

// One phase of the workload: `warmup` steps (caches only), `lead_in` steps (timed, not counted: what the
// first counted prefill chunk is submitted behind, as bench_model runs it), then `steps` counted steps.
struct Phase {
  std::string name;  // "prefill", "decode"
  prefetch::WorkloadShape shape;
  std::size_t warmup = 0;
  std::size_t steps = 0;
  double layer_seconds = 0;  // the backbone's compute per layer in this phase
  std::size_t lead_in = 0;
};

struct ModelPlacement {
  int layers = 0;              // backbone layers
  std::vector<int> engram_at;  // per Engram layer of the layout (in order): the backbone layer carrying it
};

enum class PlanPath : std::uint8_t {
  kStaged,  // host gather + PCIe copy (any tiers)
  kDevice,  // the device pipeline: tables in HBM or resident in mapped host memory
};

enum class CacheModel : std::uint8_t {
  kPolicy,  // the runtime's policies, simulated (default)
  kLru,     // LRU, from the stack distances (inclusive tiers: distance < G in HBM, < H in host memory)
};

struct Tiers {
  std::string name;
  bool hbm_all = false;        // every region whole in HBM
  bool host_resident = false;  // every region resident in pinned host memory
  std::uint64_t hbm_cache_bytes = 0;
  std::uint64_t host_cache_bytes = 0;
  // Capacities in rows, if known (a working set's WorkingSetStats::cache_slots, a host tier's
  // HostTierStats::cache_rows); 0: estimated from the bytes (slots of row_bytes, plus the HBM cache's
  // directory).
  std::uint64_t hbm_cache_rows = 0;
  std::uint64_t host_cache_rows = 0;
  PlanPath path = PlanPath::kStaged;
  CacheModel cache_model = CacheModel::kPolicy;
};

struct LayerPlan {
  int layer_index = 0;
  int at = 0;  // backbone layer
  // Per measured step, means: lookups, distinct rows, and where the distinct rows come from.
  double lookups = 0, distinct = 0, hbm_rows = 0, host_rows = 0, disk_rows = 0;
  double disk_reads = 0;  // store page reads
  double pcie_bytes = 0;
  double ready_s = 0;  // from submit, mean
  double stall_mean_s = 0, stall_p50_s = 0, stall_p95_s = 0, stall_p99_s = 0;
};

struct PhasePlan {
  std::string name;
  std::size_t steps = 0;
  std::size_t tokens_per_step = 0;
  double compute_s = 0;  // per step, the backbone
  double step_s = 0;     // per step, predicted (compute + stalls, or the fetch when it paces the steps)
  double tokens_per_s = 0;
  double loss_vs_compute = 0;  // 1 - compute / step
  // Per step, means: host time by part, PCIe and device time.
  double hash_s = 0, dedupe_s = 0, disk_s = 0, gather_s = 0, copy_s = 0, device_s = 0;
  // Per step: GPU time the model loses to engram's reads of mapped host memory (the device path's
  // zero-copy rows), beyond what reading them from HBM would take (the all-in-HBM baseline's share). Added
  // to the step whole: an upper bound (the reads hold SMs while they wait on PCIe; the model's kernels get
  // the rest). Measured on the H100: config b loses 0.6-1.0% in prefill where this predicts 0.8%.
  double contention_s = 0;
  std::string bound;  // the resource with the most time per step ("disk IOPS", "host gather", ...)
  std::vector<LayerPlan> layers;
};

struct Plan {
  Tiers tiers;
  std::vector<PhasePlan> phases;
};

// The trace replayed in the phases' shapes, ready to be planned for any tiers.
class Workload {
 public:
  // `ids`: compressed ids. Errors: a phase longer than the trace holds, ids outside the layout.
  static Result<Workload> Build(const Layout& layout, std::span<const std::int32_t> ids, std::vector<Phase> phases,
                                ModelPlacement model);
  [[nodiscard]] Plan Predict(const Tiers& tiers, const Calibration& cal, std::uint32_t row_bytes) const;
  // Hit fraction of the timed steps' distinct rows (lead-in steps included) for an LRU cache of each size
  // in `rows`.
  [[nodiscard]] std::vector<double> HitCurve(std::span<const std::uint64_t> rows) const;
  [[nodiscard]] const std::vector<Phase>& phases() const noexcept { return phases_; }
  [[nodiscard]] const ModelPlacement& model() const noexcept { return model_; }
  [[nodiscard]] std::uint64_t table_rows() const noexcept { return table_rows_; }

  // HBM and host cache capacities in rows for the tiers.
  [[nodiscard]] std::pair<std::uint64_t, std::uint64_t> Capacities(const Tiers& tiers, std::uint32_t row_bytes) const;
  // About how much memory Predict takes for `tiers` (its cache simulations and tier map): what a caller
  // planning many splits at once divides the machine's memory by.
  [[nodiscard]] std::uint64_t PredictBytes(const Tiers& tiers, std::uint32_t row_bytes) const;

 private:
  // One step's distinct rows of one Engram layer: accesses [first, first + count).
  struct Span {
    std::uint32_t phase = 0;
    std::uint32_t step = 0;  // counting warm-up steps
    std::uint32_t layer = 0;
    bool measured = false;
    std::size_t first = 0, count = 0;
  };
  // Where each access is served from for the tiers: 0 HBM, 1 host, 2 disk.
  [[nodiscard]] std::vector<std::uint8_t> Serve(const Tiers& tiers, std::uint32_t row_bytes) const;

  std::vector<Phase> phases_;
  ModelPlacement model_;
  std::uint64_t table_rows_ = 0;
  int heads_ = 1;
  std::vector<Span> spans_;  // in replay order
  // Per access (a step's distinct row of a layer): its key, lookups, n-gram order and LRU stack distance
  // (UINT64_MAX: its first read).
  std::vector<std::uint64_t> key_;
  std::vector<std::uint32_t> lookups_;
  std::vector<std::uint8_t> order_;
  std::vector<std::uint64_t> distance_;
  std::vector<std::uint32_t> id_;  // dense row ids, for the cache simulations
  std::size_t distinct_ = 0;
};

// JSON of a plan (stable: docs/capacity-planning.md).
[[nodiscard]] std::string PlanJson(const Plan& plan);

}  // namespace engram::plan
