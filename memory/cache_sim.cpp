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

SetCacheSim::SetCacheSim(std::uint64_t slots) : sets_(slots / detail::kSetWays) {}

SetCacheSim::Set* SetCacheSim::Find(std::uint64_t set) {
  const auto it = index_.find(set);
  return it == index_.end() ? nullptr : &sets_held_[it->second];
}

bool SetCacheSim::Lookup(std::uint64_t key) {
  if (sets_ == 0) return false;
  Set* s = Find(detail::SetOf(key, static_cast<std::uint32_t>(sets_)));
  if (s == nullptr) return false;
  for (std::size_t w = 0; w < detail::kSetWays; ++w) {
    if (s->keys[w] == key) {
      detail::OnSetHit(s->ways[w], s->level);
      return true;
    }
  }
  return false;
}

void SetCacheSim::Admit(std::uint64_t key, int order) {
  if (sets_ == 0) return;
  const std::uint64_t set = detail::SetOf(key, static_cast<std::uint32_t>(sets_));
  Set* s = Find(set);
  if (s == nullptr) {
    index_.emplace(set, static_cast<std::uint32_t>(sets_held_.size()));
    Set fresh;
    fresh.keys.fill(detail::kSetEmptyKey);
    sets_held_.push_back(fresh);
    s = &sets_held_.back();
  }
  std::size_t victim = detail::kSetWays;
  float victim_priority = 0;
  for (std::size_t w = 0; w < detail::kSetWays; ++w) {
    if (s->keys[w] == detail::kSetEmptyKey) {
      victim = w;
      break;
    }
    const float p = detail::Priority(s->ways[w]);
    if (victim == detail::kSetWays || p < victim_priority) {
      victim = w;
      victim_priority = p;
    }
  }
  if (s->keys[victim] != detail::kSetEmptyKey) s->level = victim_priority;
  s->keys[victim] = key;
  s->ways[victim] = detail::AdmittedWay(s->level, order);
}

}  // namespace engram::memory
