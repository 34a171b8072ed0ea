#include "engram/memory/row_cache_policy.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "engram/hasher.hpp"
#include "engram/token_map.hpp"

namespace engram::memory {
namespace {

std::uint64_t Mix(std::uint64_t x, std::uint64_t seed) {
  x ^= seed;
  x *= 0x9E3779B97F4A7C15ULL;
  x ^= x >> 29;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 32;
  return x;
}

constexpr int kGhostHashes = 4;
constexpr double kGhostBitsPerKey = 10;

}  // namespace

Result<std::shared_ptr<const RowPrior>> RowPrior::Build(const Layout& layout,
                                                        std::span<const std::int32_t> compressed_ids,
                                                        std::size_t seq_len, std::uint32_t min_count) {
  ENGRAM_RETURN_IF_ERROR(CheckCompressedIds(compressed_ids, layout).WithContext("row prior"));
  ENGRAM_ASSIGN_OR_RETURN(Hasher hasher, Hasher::Create(layout));
  const auto cols = static_cast<std::size_t>(layout.columns());
  std::vector<std::uint64_t> keys;
  keys.reserve(compressed_ids.size() * cols * static_cast<std::size_t>(layout.num_layers()));
  std::vector<std::int64_t> rows(compressed_ids.size() * cols);
  for (int l = 0; l < layout.num_layers(); ++l) {
    ENGRAM_RETURN_IF_ERROR(HashFreshSequences(hasher.layer(l), compressed_ids, seq_len, rows));
    for (const std::int64_t r : rows) keys.push_back(RowKey(l, r));
  }
  std::sort(keys.begin(), keys.end());
  std::shared_ptr<RowPrior> p(new RowPrior());
  std::vector<std::pair<std::uint64_t, std::uint32_t>> kept;
  for (std::size_t i = 0; i < keys.size();) {
    std::size_t j = i;
    while (j < keys.size() && keys[j] == keys[i]) ++j;
    if (j - i >= std::max<std::uint32_t>(min_count, 1)) kept.emplace_back(keys[i], static_cast<std::uint32_t>(j - i));
    i = j;
  }
  std::size_t cap = 16;
  while (cap < kept.size() * 2) cap <<= 1;
  p->keys_.assign(cap, 0);
  p->counts_.assign(cap, 0);
  p->mask_ = cap - 1;
  for (const auto& [k, c] : kept) {
    std::size_t i = Mix(k, 0) & p->mask_;
    while (p->keys_[i] != 0) i = (i + 1) & p->mask_;
    p->keys_[i] = k + 1;
    p->counts_[i] = static_cast<std::uint8_t>(std::min<std::uint32_t>(c, 255));
  }
  p->entries_ = kept.size();
  return std::shared_ptr<const RowPrior>(std::move(p));
}

std::uint32_t RowPrior::Count(std::uint64_t key) const noexcept {
  if (keys_.empty()) return 0;
  std::size_t i = Mix(key, 0) & mask_;
  while (keys_[i] != 0) {
    if (keys_[i] == key + 1) return counts_[i];
    i = (i + 1) & mask_;
  }
  return 0;
}

double SmallFractionFor(double fraction) noexcept {
  if (fraction <= 0.05) return 0.1;
  if (fraction <= 0.1) return 0.35;
  return 0.7;
}

RowCachePolicy::RowCachePolicy(std::uint32_t capacity, const RowCachePolicyOptions& options)
    : options_(options), capacity_(capacity) {
  key_.assign(capacity, 0);
  where_.assign(capacity, kFree);
  if (options.kind == RowCachePolicyKind::kLru) {
    prev_.assign(capacity, kNone);
    next_.assign(capacity, kNone);
    return;
  }
  reads_.assign(capacity, 0);
  priority_.assign(capacity, 0);
  weight_.assign(capacity, 1);
  main_pos_.assign(capacity, kNone);
  small_cap_ =
      std::clamp<std::size_t>(static_cast<std::size_t>(std::clamp(options.small_fraction, 0.0, 1.0) * capacity),
                              capacity > 1 ? 1 : 0, capacity);
  main_cap_ = capacity - small_cap_;
  small_.assign(std::max<std::size_t>(small_cap_, 1), kNone);
  main_.reserve(main_cap_);
  ghost_per_filter_ = std::max<std::size_t>(
      16,
      static_cast<std::size_t>(options.ghost_factor * static_cast<double>(std::max<std::size_t>(main_cap_, 1)) / 2));
  std::uint64_t bits = 64;
  while (static_cast<double>(bits) < kGhostBitsPerKey * static_cast<double>(ghost_per_filter_)) bits <<= 1;
  ghost_bits_ = bits;
  ghost_[0].assign(bits / 64, 0);
  ghost_[1].assign(bits / 64, 0);
}

float RowCachePolicy::Priority(std::uint32_t slot) const {
  double p = reads_[slot];
  if (options_.prior) p += options_.prior_weight * std::log2(1.0 + options_.prior->Count(key_[slot]));
  return aging_ + static_cast<float>(weight_[slot] * p);
}

void RowCachePolicy::GhostAdd(std::uint64_t key) {
  if (ghost_count_ >= ghost_per_filter_) {
    ghost_current_ ^= 1U;
    std::fill(ghost_[ghost_current_].begin(), ghost_[ghost_current_].end(), 0);
    ghost_count_ = 0;
  }
  auto& f = ghost_[ghost_current_];
  const std::uint64_t h = Mix(key, 0x51ed270b);
  for (int i = 0; i < kGhostHashes; ++i) {
    const std::uint64_t bit =
        (h >> (i * 16) ^ (h >> 40) * static_cast<std::uint64_t>(i + 1) * 0x9E37ULL) & (ghost_bits_ - 1);
    f[bit >> 6] |= 1ULL << (bit & 63);
  }
  ++ghost_count_;
}

bool RowCachePolicy::GhostHas(std::uint64_t key) const {
  const std::uint64_t h = Mix(key, 0x51ed270b);
  for (const auto& f : ghost_) {
    bool all = true;
    for (int i = 0; i < kGhostHashes && all; ++i) {
      const std::uint64_t bit =
          (h >> (i * 16) ^ (h >> 40) * static_cast<std::uint64_t>(i + 1) * 0x9E37ULL) & (ghost_bits_ - 1);
      all = (f[bit >> 6] >> (bit & 63) & 1U) != 0;
    }
    if (all) return true;
  }
  return false;
}

std::uint32_t RowCachePolicy::SampleVictim() {
  float best = 0;
  std::size_t best_i = 0;
  for (std::uint32_t s = 0; s < std::max<std::uint32_t>(options_.samples, 1); ++s) {
    rng_ ^= rng_ << 13;
    rng_ ^= rng_ >> 7;
    rng_ ^= rng_ << 17;
    const std::size_t i = rng_ % main_.size();
    if (s == 0 || priority_[main_[i]] < best) {
      best = priority_[main_[i]];
      best_i = i;
    }
  }
  const std::uint32_t victim = main_[best_i];
  main_[best_i] = main_.back();
  main_pos_[main_[best_i]] = static_cast<std::uint32_t>(best_i);
  main_.pop_back();
  main_pos_[victim] = kNone;
  where_[victim] = kFree;
  aging_ = best;
  GhostAdd(key_[victim]);
  return victim;
}

void RowCachePolicy::IntoMain(std::uint32_t slot) {
  where_[slot] = kMain;
  main_pos_[slot] = static_cast<std::uint32_t>(main_.size());
  main_.push_back(slot);
  priority_[slot] = Priority(slot);
}

std::uint32_t RowCachePolicy::Admit(std::uint64_t key, int order, std::uint32_t reads, bool main) {
  const auto weight = static_cast<float>(std::max(0.25, 1.0 - 0.25 * (order - 2)));
  if (main) {
    // A fresh slot while the main area has room, else the slot of a row evicted from it.
    std::uint32_t slot = main_.size() < main_cap_ ? FreshSlot() : kNone;
    if (slot == kNone) slot = SampleVictim();
    key_[slot] = key;
    reads_[slot] = reads;
    weight_[slot] = weight;
    IntoMain(slot);
    return slot;
  }
  // Into the small FIFO; if full, its oldest row leaves first.
  std::uint32_t slot = kNone;
  if (small_size_ >= small_cap_ && small_size_ > 0) {
    const std::uint32_t old = small_[small_head_];
    small_head_ = (small_head_ + 1) % small_.size();
    --small_size_;
    if (reads_[old] > 1 && main_cap_ > 0) {
      // Read again while in S: it moves to main in its own slot; a row evicted from main frees one.
      if (main_.size() >= main_cap_) slot = SampleVictim();
      IntoMain(old);
    } else {
      where_[old] = kFree;
      GhostAdd(key_[old]);
      slot = old;
    }
  }
  if (slot == kNone) slot = FreshSlot();
  if (slot == kNone || small_cap_ == 0) return kNone;
  key_[slot] = key;
  reads_[slot] = reads;
  weight_[slot] = weight;
  where_[slot] = kSmall;
  small_[(small_head_ + small_size_) % small_.size()] = slot;
  ++small_size_;
  return slot;
}

void RowCachePolicy::OnHit(std::uint32_t slot) {
  if (options_.kind == RowCachePolicyKind::kLru) {
    if (head_ == slot) return;
    // Unlink and push to the front.
    if (prev_[slot] != kNone) next_[prev_[slot]] = next_[slot];
    if (next_[slot] != kNone)
      prev_[next_[slot]] = prev_[slot];
    else
      tail_ = prev_[slot];
    prev_[slot] = kNone;
    next_[slot] = head_;
    prev_[head_] = slot;
    head_ = slot;
    return;
  }
  ++reads_[slot];
  if (where_[slot] == kMain) priority_[slot] = Priority(slot);
}

RowCachePolicy::Admission RowCachePolicy::LruMiss(std::uint64_t key) {
  std::uint32_t slot = FreshSlot();
  if (slot == kNone) {
    slot = tail_;
    tail_ = prev_[slot];
    if (tail_ != kNone)
      next_[tail_] = kNone;
    else
      head_ = kNone;
  }
  key_[slot] = key;
  prev_[slot] = kNone;
  next_[slot] = head_;
  if (head_ != kNone) prev_[head_] = slot;
  head_ = slot;
  if (tail_ == kNone) tail_ = slot;
  return {true, slot};
}

RowCachePolicy::Admission RowCachePolicy::OnMiss(std::uint64_t key, int order) {
  if (capacity_ == 0) return {};
  if (options_.kind == RowCachePolicyKind::kLru) return LruMiss(key);
  std::uint32_t slot = kNone;
  if (main_cap_ > 0 && GhostHas(key)) {
    slot = Admit(key, order, 2, true);
  } else if (main_cap_ > 0 && options_.prior && options_.prior->Count(key) >= options_.prior_admit_count) {
    slot = Admit(key, order, 1, true);
  } else {
    slot = Admit(key, order, 1, false);
  }
  if (slot == kNone) return {};
  return {true, slot};
}

}  // namespace engram::memory
