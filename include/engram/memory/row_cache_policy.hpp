// RowCachePolicy: admission and eviction for a bounded row cache of `capacity` slots. Single-threaded;
// the host tier runs one per shard under the shard's lock, and the trace analysis runs the same code.
//
// The cache owns the key -> slot map and the rows; the policy owns the slots. On a miss the policy says
// whether to admit the row and into which slot; if that slot held another row, the cache drops that
// row's key first. Keys are 64-bit row keys ((layer << 40) | row); `order` is the row's n-gram order.
//
// kAdaptiveFrequency (the default, chosen by simulation on the Brown trace; docs/host-tier.md):
//   - a small FIFO S (small_fraction of the slots) takes first-touch rows; a row leaving S that was read
//     again while there moves to the main area M, otherwise it leaves and its key goes to the ghost G;
//   - a miss whose key is in G (read again soon after leaving) goes straight to M, as does a row whose
//     prior count is at least prior_admit_count;
//   - M evicts by sampling: of `samples` random M rows, the lowest priority goes; priority =
//     L + w(order) * (reads since admission + prior_weight * log2(1 + prior count)), where L (aging) is
//     the priority of the last row evicted from M, and w = 1, 0.75, 0.5, ... for orders 2, 3, 4, ...;
//   - G is two rotating Bloom filters remembering about ghost_factor x |M| recent keys (10 bits per key).
// On the real trace it reaches 75% (1% cache) and 77% (5%) of the optimal (Belady) hit rate without a
// prior, 75-77% and 81-83% with a prior from other text; LRU reaches 55% and 65%.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engram/layout.hpp"
#include "engram/status.hpp"

namespace engram::memory {

// The 64-bit key of a row everywhere engram keeps rows by key (policies, caches, priors, trace analysis):
// (layer_index << 40) | row, rows being a layer's global row ids (below 2^40).
constexpr std::uint64_t RowKey(int layer_index, std::int64_t row) noexcept {
  return (static_cast<std::uint64_t>(layer_index) << 40) | static_cast<std::uint64_t>(row);
}

// Row read counts from text other than the text being served: (layer << 40 | row) -> count (capped at
// 255), keeping rows read at least min_count times. Immutable; safe to share.
class RowPrior {
 public:
  // Hashes `compressed_ids` (sequences of seq_len tokens, 0: one) with every layer of `layout` and counts.
  static Result<std::shared_ptr<const RowPrior>> Build(const Layout& layout,
                                                       std::span<const std::int32_t> compressed_ids,
                                                       std::size_t seq_len = 0, std::uint32_t min_count = 2);
  // The prior count of `key`, 0 if not kept.
  [[nodiscard]] std::uint32_t Count(std::uint64_t key) const noexcept;
  [[nodiscard]] std::size_t size() const noexcept { return entries_; }
  // Bytes of memory the prior takes.
  [[nodiscard]] std::size_t bytes() const noexcept { return keys_.size() * (sizeof(std::uint64_t) + 1); }

 private:
  RowPrior() = default;
  std::vector<std::uint64_t> keys_;  // open addressing; key + 1, 0: empty
  std::vector<std::uint8_t> counts_;
  std::size_t mask_ = 0;
  std::size_t entries_ = 0;
};

enum class RowCachePolicyKind : std::uint8_t {
  kLru,                // admit every miss; evict the least recently used row (a baseline)
  kAdaptiveFrequency,  // small FIFO + ghost + frequency-and-order main area (the file comment)
};

struct RowCachePolicyOptions {
  // Which policy. Default: kAdaptiveFrequency.
  RowCachePolicyKind kind = RowCachePolicyKind::kAdaptiveFrequency;
  // Share of the slots for the small FIFO. Simulation favours 0.1 for caches up to ~5% of the distinct
  // rows a workload reads, ~0.35 at 10% and ~0.7 at 25% and more (SmallFractionFor). Default: 0.1.
  double small_fraction = 0.1;
  // Ghost size as a multiple of the main area. Default: 8.
  double ghost_factor = 8;
  // Rows sampled per eviction from the main area. Default: 16.
  std::uint32_t samples = 16;
  // Frequency prior (optional, not owned by the policy). Default: none.
  std::shared_ptr<const RowPrior> prior;
  // Weight of log2(1 + prior count) in the priority. Default: 3.
  double prior_weight = 3;
  // A first-touch row with a prior count at least this goes straight to the main area. Default: 2.
  std::uint32_t prior_admit_count = 2;
};

// The small_fraction simulation favours for a cache holding `fraction` of the distinct rows read.
double SmallFractionFor(double fraction) noexcept;

class RowCachePolicy {
 public:
  RowCachePolicy(std::uint32_t capacity, const RowCachePolicyOptions& options);

  struct Admission {
    bool admit = false;
    std::uint32_t slot = 0;  // valid if admit; the cache must first drop the row that was there, if any
  };
  // A cached row in `slot` was read.
  void OnHit(std::uint32_t slot);
  // `key` was read and is not cached.
  Admission OnMiss(std::uint64_t key, int order);

  [[nodiscard]] std::uint32_t capacity() const noexcept { return capacity_; }

 private:
  static constexpr std::uint32_t kNone = UINT32_MAX;
  enum Where : std::uint8_t { kFree = 0, kSmall = 1, kMain = 2 };
  std::uint32_t FreshSlot() { return used_ < capacity_ ? used_++ : kNone; }
  float Priority(std::uint32_t slot) const;
  // Evicts the lowest-priority row of `samples` random main rows; returns its slot (now free).
  std::uint32_t SampleVictim();
  // Puts `slot` (holding its key, reads and weight) into the main area, which must have room.
  void IntoMain(std::uint32_t slot);
  void GhostAdd(std::uint64_t key);
  [[nodiscard]] bool GhostHas(std::uint64_t key) const;
  std::uint32_t Admit(std::uint64_t key, int order, std::uint32_t reads, bool main);
  // LRU
  Admission LruMiss(std::uint64_t key);

  RowCachePolicyOptions options_;
  std::uint32_t capacity_ = 0;
  std::uint32_t used_ = 0;  // slots handed out so far (used in order; afterwards reused by eviction)
  std::vector<std::uint64_t> key_;
  std::vector<std::uint32_t> reads_;
  std::vector<float> priority_;
  std::vector<float> weight_;  // order weight of the row in the slot
  std::vector<std::uint8_t> where_;
  // Small FIFO: a ring of slots.
  std::vector<std::uint32_t> small_;
  std::size_t small_head_ = 0, small_size_ = 0, small_cap_ = 0;
  // Main area: its slots, in any order, for sampling; main_pos_[slot] is the index in main_.
  std::vector<std::uint32_t> main_;
  std::vector<std::uint32_t> main_pos_;
  std::size_t main_cap_ = 0;
  float aging_ = 0;
  std::uint64_t rng_ = 0x9E3779B97F4A7C15ULL;
  // Ghost: two Bloom filters; inserts go to current_, and when it has taken ghost_per_filter_ keys the
  // other one is cleared and becomes current.
  std::vector<std::uint64_t> ghost_[2];
  std::uint64_t ghost_bits_ = 0;
  std::size_t ghost_current_ = 0, ghost_count_ = 0, ghost_per_filter_ = 0;
  // LRU: a doubly linked list of slots.
  std::vector<std::uint32_t> prev_, next_;
  std::uint32_t head_ = kNone, tail_ = kNone;
};

}  // namespace engram::memory
