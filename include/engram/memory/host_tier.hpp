// HostTier: rows in pinned host memory, between the store (disk) and the GPU.
//
// Two parts, both optional, both in one PinnedArena:
//   - resident regions: whole (layer, column) regions ((order, head) slices of a layer's table) loaded from
//     the store at start; a lookup is an offset. Choose the regions re-read most (2-gram regions) when
//     not all fit.
//   - a row cache of cache_bytes for every other row: sharded (one lock, one RowCachePolicy and one slice
//     of the arena per shard), safe for concurrent readers and writers; a Get copies the row out under the
//     shard's lock, so an eviction can never tear a row being read.
// Row keys are (layer_index << 40) | row, rows being a layer's global row ids.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include "engram/detail/striped_counter.hpp"
#include "engram/layout.hpp"
#include "engram/memory/pinned_arena.hpp"
#include "engram/memory/row_cache_policy.hpp"
#include "engram/status.hpp"
#include "engram/store/store.hpp"

namespace engram::memory {

struct RegionRef {
  int layer_index = 0;
  int column = 0;
};

enum class ResidentRegions : std::uint8_t {
  kNone,    // no resident region
  kAll,     // every region of every layer (the whole table)
  kChosen,  // HostTierOptions::regions
};

struct HostTierOptions {
  // Which regions are held whole. Default: kNone.
  ResidentRegions resident = ResidentRegions::kNone;
  // The regions for kChosen.
  std::vector<RegionRef> regions;
  // Bytes of row cache (slots of row_bytes) for rows not resident. 0: no cache. Default: 0.
  std::uint64_t cache_bytes = 0;
  // The cache's policy. Default: RowCachePolicyOptions{} (kAdaptiveFrequency, no prior).
  RowCachePolicyOptions policy;
  // Cache shards (locks). Default: 64.
  std::uint32_t cache_shards = 64;
  // How the arena holding resident regions and the cache is mapped and pinned. Default: ArenaOptions{}.
  ArenaOptions arena;
  // Threads that load resident regions, each reading consecutive parts of a run through
  // Store::ReadRange (which splits its part again over the store's read threads, so one thread already
  // keeps read_threads sequential streams going). 0: one per hardware thread, at most 32. Default: 1 (on
  // the virtio disks measured, 16 threads loaded 9.4 GiB at 0.55x the sequential read rate, one at
  // 0.65-0.78x; a fast NVMe drive may want more).
  std::uint32_t load_threads = 1;
};

struct HostTierStats {
  std::uint64_t resident_bytes = 0;
  std::uint64_t cache_bytes = 0;
  std::uint64_t cache_rows = 0;   // capacity
  std::uint64_t cached_rows = 0;  // held now
  std::uint64_t resident_hits = 0;
  std::uint64_t cache_hits = 0;
  std::uint64_t misses = 0;
  std::uint64_t admissions = 0;
  std::uint64_t evictions = 0;
  std::uint64_t loaded_bytes = 0;
  double load_seconds = 0;
};

class HostTier {
 public:
  // Sizes everything and maps the arena; refuses a configuration that cannot fit (kResourceExhausted
  // before anything is allocated when the bytes asked for exceed max_bytes, if non-zero).
  static Result<std::unique_ptr<HostTier>> Create(const Layout& layout, const HostTierOptions& options,
                                                  std::uint64_t max_bytes = 0);
  ~HostTier();
  HostTier(const HostTier&) = delete;
  HostTier& operator=(const HostTier&) = delete;

  // Fills the resident regions from `version` of the store (whose layout must equal this tier's).
  // Regions that are adjacent in a layer are held in one block and read as one sequential range.
  [[nodiscard]] Status LoadResident(const store::Store& store, const store::VersionHandle& version);

  [[nodiscard]] bool IsResident(int layer_index, int column) const noexcept;
  // The resident row, or nullptr when its region is not resident.
  [[nodiscard]] const std::byte* ResidentRow(int layer_index, int column, std::int64_t row) const noexcept;

  // Copies the row into `dst` if it is resident or cached (counting a hit), else counts a miss and
  // returns false. Thread-safe.
  bool Get(int layer_index, int column, std::int64_t row, std::byte* dst);
  // Whether the row is resident or cached, without counting or touching the policy. Thread-safe.
  [[nodiscard]] bool Contains(int layer_index, int column, std::int64_t row);
  // Offers a row read from the store to the cache (the policy decides). Thread-safe.
  void Admit(int layer_index, int column, std::int64_t row, const std::byte* src);

  [[nodiscard]] HostTierStats stats() const;
  [[nodiscard]] const ArenaReport& arena_report() const noexcept { return arena_->report(); }
  [[nodiscard]] const Layout& layout() const noexcept { return layout_; }

 private:
  struct Shard {
    std::mutex mu;
    std::unique_ptr<RowCachePolicy> policy;
    std::unordered_map<std::uint64_t, std::uint32_t> slot_of;
    std::vector<std::uint64_t> key_in;  // per slot; UINT64_MAX: empty
    std::byte* rows = nullptr;
  };
  HostTier(Layout layout, HostTierOptions options) : layout_(std::move(layout)), options_(std::move(options)) {}
  Shard& ShardOf(std::uint64_t key) noexcept;

  Layout layout_;
  HostTierOptions options_;
  std::unique_ptr<PinnedArena> arena_;
  struct Run {  // adjacent resident regions of one layer, one block of the arena
    int layer_index = 0;
    std::int64_t first_row = 0;
    std::int64_t rows = 0;
    std::byte* base = nullptr;
  };
  std::vector<Run> runs_;
  std::vector<std::byte*> region_base_;  // [layer * columns + column], nullptr if not resident
  std::vector<std::unique_ptr<Shard>> shards_;
  std::uint32_t shard_slots_ = 0;
  // Striped: every gather thread counts each row it serves.
  detail::StripedCounter resident_hits_, cache_hits_, misses_, admissions_, evictions_;
  std::uint64_t loaded_bytes_ = 0;
  double load_seconds_ = 0;
};

}  // namespace engram::memory
