// Engram's row caches simulated one row at a time on the host, making the runtime's own decisions: the
// host-run policy (RowCachePolicy: the host tier's cache, and the HBM cache of the staged and zero-copy
// paths) and the device pipeline's set-associative HBM cache (detail/set_cache.hpp). Used by the capacity
// planner (engram/prefetch/planner.hpp) and the trace analysis. Single-threaded.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "engram/detail/set_cache.hpp"
#include "engram/memory/row_cache_policy.hpp"

namespace engram::memory {

// A cache of `capacity` rows run by RowCachePolicy, split into `shards` policies as the host tier splits
// its cache (key -> shard as the host tier maps it; HostTierShards gives its count). Rows are named by
// dense ids 0..ids-1 (for speed) with their keys (which the policy and the sharding use).
class PolicyCacheSim {
 public:
  PolicyCacheSim(std::uint64_t capacity, const RowCachePolicyOptions& options, std::uint32_t shards, std::size_t ids);
  // Whether the row is cached (a hit counts as a read).
  bool Lookup(std::uint32_t id);
  // The row (of n-gram `order`) was read from below and offered to the cache.
  void Admit(std::uint32_t id, std::uint64_t key, int order);
  [[nodiscard]] std::uint64_t capacity() const noexcept { return capacity_; }
  // The shards a host tier of `rows` cache rows runs (at least 64 slots each, at most `max_shards`).
  static std::uint32_t HostTierShards(std::uint64_t rows, std::uint32_t max_shards = 64) noexcept;

 private:
  static constexpr std::uint32_t kNone = UINT32_MAX;
  struct Shard {
    std::unique_ptr<RowCachePolicy> policy;
    std::vector<std::uint32_t> id_in_slot;
  };
  std::vector<Shard> shards_;
  std::vector<std::uint32_t> slot_of_;   // per id: its slot in its shard, or kNone
  std::vector<std::uint32_t> shard_of_;  // per id, once seen
  std::uint64_t capacity_ = 0;
};

// The device pipeline's HBM cache of `slots` slots (whole sets of detail::kSetWays). Only the sets a
// row was admitted to are kept (memory grows with the rows simulated, not the capacity: a 16 GiB cache
// of 264 B rows is 65 M slots, of which a replay touches a few million).
class SetCacheSim {
 public:
  explicit SetCacheSim(std::uint64_t slots);
  bool Lookup(std::uint64_t key);
  void Admit(std::uint64_t key, int order);
  [[nodiscard]] std::uint64_t capacity() const noexcept { return sets_ * detail::kSetWays; }

 private:
  struct Set {
    std::array<std::uint64_t, detail::kSetWays> keys;
    std::array<detail::SetWay, detail::kSetWays> ways;
    float level = 0;
  };
  Set* Find(std::uint64_t set);
  std::uint64_t sets_ = 0;
  std::unordered_map<std::uint64_t, std::uint32_t> index_;  // set -> position in sets_held_
  std::vector<Set> sets_held_;
};

}  // namespace engram::memory
