// Row cache simulations (engram/memory/cache_sim.hpp).
#include "engram/memory/cache_sim.hpp"

#include <algorithm>

#include "../core/hash_mix.hpp"

namespace engram::memory {

std::uint32_t PolicyCacheSim::HostTierShards(std::uint64_t rows, std::uint32_t max_shards) noexcept {
  return static_cast<std::uint32_t>(std::clamp<std::uint64_t>(rows / 64, 1, std::max<std::uint32_t>(1, max_shards)));
}

PolicyCacheSim::PolicyCacheSim(std::uint64_t capacity, const RowCachePolicyOptions& options, std::uint32_t shards,
                               std::size_t ids) {
  shards = std::max<std::uint32_t>(shards, 1);
  const auto per = static_cast<std::uint32_t>(std::min<std::uint64_t>(capacity / shards, UINT32_MAX - 1));
  capacity_ = static_cast<std::uint64_t>(per) * shards;
  if (per == 0) return;
  shards_.resize(shards);
  for (Shard& s : shards_) {
    s.policy = std::make_unique<RowCachePolicy>(per, options);
    s.id_in_slot.assign(per, kNone);
  }
  slot_of_.assign(ids, kNone);
  shard_of_.assign(ids, kNone);
}

bool PolicyCacheSim::Lookup(std::uint32_t id) {
  if (shards_.empty() || slot_of_[id] == kNone) return false;
  shards_[shard_of_[id]].policy->OnHit(slot_of_[id]);
  return true;
}

void PolicyCacheSim::Admit(std::uint32_t id, std::uint64_t key, int order) {
  if (shards_.empty()) return;
  if (shard_of_[id] == kNone) shard_of_[id] = static_cast<std::uint32_t>(detail::Mix64(key) % shards_.size());
  Shard& s = shards_[shard_of_[id]];
  const RowCachePolicy::Admission a = s.policy->OnMiss(key, order);
  if (!a.admit) return;
  if (s.id_in_slot[a.slot] != kNone) slot_of_[s.id_in_slot[a.slot]] = kNone;
  s.id_in_slot[a.slot] = id;
  slot_of_[id] = a.slot;
}

SetCacheSim::SetCacheSim(std::uint64_t slots)
    : sets_(slots / detail::kSetWays),
      keys_(sets_ * detail::kSetWays, detail::kSetEmptyKey),
      ways_(sets_ * detail::kSetWays),
      level_(sets_, 0) {}

bool SetCacheSim::Lookup(std::uint64_t key) {
  if (sets_ == 0) return false;
  const std::uint64_t set = detail::SetOf(key, static_cast<std::uint32_t>(sets_));
  for (std::uint64_t w = set * detail::kSetWays; w < (set + 1) * detail::kSetWays; ++w) {
    if (keys_[w] == key) {
      detail::OnSetHit(ways_[w], level_[set]);
      return true;
    }
  }
  return false;
}

void SetCacheSim::Admit(std::uint64_t key, int order) {
  if (sets_ == 0) return;
  const std::uint64_t set = detail::SetOf(key, static_cast<std::uint32_t>(sets_));
  const std::uint64_t b0 = set * detail::kSetWays;
  std::uint64_t victim = keys_.size();
  float victim_priority = 0;
  for (std::uint64_t w = b0; w < b0 + detail::kSetWays; ++w) {
    if (keys_[w] == detail::kSetEmptyKey) {
      victim = w;
      break;
    }
    const float p = detail::Priority(ways_[w]);
    if (victim == keys_.size() || p < victim_priority) {
      victim = w;
      victim_priority = p;
    }
  }
  if (keys_[victim] != detail::kSetEmptyKey) level_[set] = victim_priority;
  keys_[victim] = key;
  ways_[victim] = detail::AdmittedWay(level_[set], order);
}

}  // namespace engram::memory
