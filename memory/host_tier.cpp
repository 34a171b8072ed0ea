#include "engram/memory/host_tier.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "../core/hash_mix.hpp"

namespace engram::memory {

Result<std::unique_ptr<HostTier>> HostTier::Create(const Layout& layout, const HostTierOptions& options,
                                                   std::uint64_t max_bytes) {
  std::unique_ptr<HostTier> t(new HostTier(layout, options));
  const auto cols = static_cast<std::size_t>(layout.columns());
  const std::uint64_t row_bytes = layout.row_bytes();
  std::vector<std::uint8_t> chosen(static_cast<std::size_t>(layout.num_layers()) * cols,
                                   options.resident == ResidentRegions::kAll ? 1 : 0);
  if (options.resident == ResidentRegions::kChosen) {
    for (const RegionRef& r : options.regions) {
      if (r.layer_index < 0 || r.layer_index >= layout.num_layers() || r.column < 0 || r.column >= layout.columns()) {
        return Status::InvalidArgument(fmt::format("host tier: region (layer index {}, column {}) is not in layout {}",
                                                   r.layer_index, r.column, layout.name()));
      }
      chosen[static_cast<std::size_t>(r.layer_index) * cols + static_cast<std::size_t>(r.column)] = 1;
    }
  }
  std::uint64_t resident_bytes = 0;
  for (int l = 0; l < layout.num_layers(); ++l) {
    for (std::size_t c = 0; c < cols; ++c) {
      if (chosen[static_cast<std::size_t>(l) * cols + c] != 0) {
        resident_bytes += static_cast<std::uint64_t>(layout.layer(l).primes[c]) * row_bytes;
      }
    }
  }
  const std::uint64_t cache_rows = options.cache_bytes / row_bytes;
  // At least 64 slots per shard: a small cache gets fewer shards rather than none.
  const auto shards = static_cast<std::uint32_t>(
      std::clamp<std::uint64_t>(cache_rows / 64, 1, std::max<std::uint32_t>(1, options.cache_shards)));
  t->shard_slots_ = static_cast<std::uint32_t>(std::min<std::uint64_t>(cache_rows / shards, UINT32_MAX - 1));
  const std::uint64_t cache_bytes = static_cast<std::uint64_t>(t->shard_slots_) * shards * row_bytes;
  const std::uint64_t total = resident_bytes + cache_bytes + 4096ULL * (cols * layout.num_layers() + shards);
  if (max_bytes != 0 && total > max_bytes) {
    return Status::ResourceExhausted(
        fmt::format("host tier: {} bytes of resident regions and {} of cache need {} bytes; the budget is {} bytes",
                    resident_bytes, cache_bytes, total, max_bytes));
  }
  if (resident_bytes == 0 && cache_bytes == 0) {
    return Status::InvalidArgument("host tier: no resident region and no cache (nothing to hold)");
  }
  ArenaOptions ao = options.arena;
  if (ao.name == "arena") ao.name = "host tier";
  ENGRAM_ASSIGN_OR_RETURN(t->arena_, PinnedArena::Create(total, ao));
  t->region_base_.assign(chosen.size(), nullptr);
  // One block per run of adjacent resident columns of a layer (adjacent regions are adjacent rows), so a
  // run loads with one sequential read.
  for (int l = 0; l < layout.num_layers(); ++l) {
    for (std::size_t c = 0; c < cols;) {
      if (chosen[static_cast<std::size_t>(l) * cols + c] == 0) {
        ++c;
        continue;
      }
      std::size_t e = c;
      while (e < cols && chosen[static_cast<std::size_t>(l) * cols + e] != 0) ++e;
      Run run;
      run.layer_index = l;
      run.first_row = layout.region_offset(l, static_cast<int>(c));
      run.rows = (e == cols ? layout.layer_rows(l) : layout.region_offset(l, static_cast<int>(e))) - run.first_row;
      ENGRAM_ASSIGN_OR_RETURN(std::span<std::byte> block,
                              t->arena_->Allocate(static_cast<std::uint64_t>(run.rows) * row_bytes));
      run.base = block.data();
      for (std::size_t k = c; k < e; ++k) {
        t->region_base_[static_cast<std::size_t>(l) * cols + k] =
            run.base +
            static_cast<std::size_t>(layout.region_offset(l, static_cast<int>(k)) - run.first_row) * row_bytes;
      }
      t->runs_.push_back(run);
      c = e;
    }
  }
  if (t->shard_slots_ > 0) {
    for (std::uint32_t s = 0; s < shards; ++s) {
      auto shard = std::make_unique<Shard>();
      shard->policy = std::make_unique<RowCachePolicy>(t->shard_slots_, options.policy);
      shard->key_in.assign(t->shard_slots_, UINT64_MAX);
      shard->slot_of.reserve(t->shard_slots_);
      ENGRAM_ASSIGN_OR_RETURN(std::span<std::byte> rows, t->arena_->Allocate(t->shard_slots_ * row_bytes));
      shard->rows = rows.data();
      t->shards_.push_back(std::move(shard));
    }
  }
  return t;
}

HostTier::~HostTier() = default;

HostTier::Shard& HostTier::ShardOf(std::uint64_t key) noexcept {
  return *shards_[detail::Mix64(key) % shards_.size()];
}

bool HostTier::IsResident(int layer_index, int column) const noexcept {
  return ResidentRow(layer_index, column, layout_.region_offset(layer_index, column)) != nullptr;
}

const std::byte* HostTier::ResidentRow(int layer_index, int column, std::int64_t row) const noexcept {
  const std::size_t i = static_cast<std::size_t>(layer_index) * static_cast<std::size_t>(layout_.columns()) +
                        static_cast<std::size_t>(column);
  const std::byte* base = region_base_[i];
  if (base == nullptr) return nullptr;
  return base + static_cast<std::size_t>(row - layout_.region_offset(layer_index, column)) * layout_.row_bytes();
}

Status HostTier::LoadResident(const store::Store& store, const store::VersionHandle& version) {
  if (!(store.layout() == layout_)) {
    return Status::InvalidArgument(fmt::format("host tier: the store's layout {} is not the tier's layout {}",
                                               store.layout().name(), layout_.name()));
  }
  const auto t0 = std::chrono::steady_clock::now();
  const std::size_t row_bytes = layout_.row_bytes();
  const std::uint32_t threads = options_.load_threads != 0
                                    ? options_.load_threads
                                    : std::clamp<std::uint32_t>(std::thread::hardware_concurrency(), 1, 32);
  // Pieces of at least 4 MiB (about two per thread), taken in order by the loading threads.
  struct Piece {
    const Run* run;
    std::int64_t first;
    std::int64_t rows;
  };
  std::vector<Piece> pieces;
  for (const Run& run : runs_) {
    const std::int64_t min_rows = std::max<std::int64_t>(1, (4LL << 20) / static_cast<std::int64_t>(row_bytes));
    const std::int64_t per = std::max<std::int64_t>(min_rows, run.rows / (2 * static_cast<std::int64_t>(threads)) + 1);
    for (std::int64_t r = 0; r < run.rows; r += per) pieces.push_back({&run, r, std::min(per, run.rows - r)});
  }
  std::atomic<std::size_t> next{0};
  std::mutex error_mu;
  Status error;
  auto work = [&] {
    for (std::size_t i = next++; i < pieces.size(); i = next++) {
      const Piece& p = pieces[i];
      Status s = store.ReadRange(version, p.run->layer_index, p.run->first_row + p.first,
                                 std::span(p.run->base + static_cast<std::size_t>(p.first) * row_bytes,
                                           static_cast<std::size_t>(p.rows) * row_bytes));
      if (!s.ok()) {
        std::lock_guard<std::mutex> lock(error_mu);
        if (error.ok()) {
          error = std::move(s).WithContext(
              fmt::format("host tier: loading layer {} rows [{}, {})", layout_.layer(p.run->layer_index).layer_id,
                          p.run->first_row + p.first, p.run->first_row + p.first + p.rows));
        }
        next = pieces.size();
      }
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (std::uint32_t t = 1; t < std::min<std::size_t>(threads, pieces.size()); ++t) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();
  ENGRAM_RETURN_IF_ERROR(error);
  for (const Run& run : runs_) loaded_bytes_ += static_cast<std::uint64_t>(run.rows) * row_bytes;
  load_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return Status::Ok();
}

bool HostTier::Get(int layer_index, int column, std::int64_t row, std::byte* dst) {
  if (const std::byte* r = ResidentRow(layer_index, column, row); r != nullptr) {
    std::memcpy(dst, r, layout_.row_bytes());
    resident_hits_.Add();
    return true;
  }
  if (!shards_.empty()) {
    const std::uint64_t key = RowKey(layer_index, row);
    Shard& s = ShardOf(key);
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.slot_of.find(key);
    if (it != s.slot_of.end()) {
      std::memcpy(dst, s.rows + static_cast<std::size_t>(it->second) * layout_.row_bytes(), layout_.row_bytes());
      s.policy->OnHit(it->second);
      cache_hits_.Add();
      return true;
    }
  }
  misses_.Add();
  return false;
}

bool HostTier::Contains(int layer_index, int column, std::int64_t row) {
  if (ResidentRow(layer_index, column, row) != nullptr) return true;
  if (shards_.empty()) return false;
  const std::uint64_t key = RowKey(layer_index, row);
  Shard& s = ShardOf(key);
  std::lock_guard<std::mutex> lock(s.mu);
  return s.slot_of.count(key) != 0;
}

void HostTier::Admit(int layer_index, int column, std::int64_t row, const std::byte* src) {
  if (shards_.empty() || ResidentRow(layer_index, column, row) != nullptr) return;
  const std::uint64_t key = RowKey(layer_index, row);
  Shard& s = ShardOf(key);
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.slot_of.count(key) != 0) return;  // another reader admitted it meanwhile
  const RowCachePolicy::Admission a = s.policy->OnMiss(key, 2 + column / layout_.heads());
  if (!a.admit) return;
  if (s.key_in[a.slot] != UINT64_MAX) {
    s.slot_of.erase(s.key_in[a.slot]);
    evictions_.Add();
  }
  s.key_in[a.slot] = key;
  s.slot_of.emplace(key, a.slot);
  std::memcpy(s.rows + static_cast<std::size_t>(a.slot) * layout_.row_bytes(), src, layout_.row_bytes());
  admissions_.Add();
}

HostTierStats HostTier::stats() const {
  HostTierStats st;
  const std::uint64_t row_bytes = layout_.row_bytes();
  for (std::size_t i = 0; i < region_base_.size(); ++i) {
    if (region_base_[i] == nullptr) continue;
    const auto l = static_cast<int>(i / static_cast<std::size_t>(layout_.columns()));
    const auto c = i % static_cast<std::size_t>(layout_.columns());
    st.resident_bytes += static_cast<std::uint64_t>(layout_.layer(l).primes[c]) * row_bytes;
  }
  st.cache_rows = static_cast<std::uint64_t>(shard_slots_) * shards_.size();
  st.cache_bytes = st.cache_rows * row_bytes;
  for (const auto& s : shards_) {
    std::lock_guard<std::mutex> lock(s->mu);
    st.cached_rows += s->slot_of.size();
  }
  st.resident_hits = resident_hits_.Sum();
  st.cache_hits = cache_hits_.Sum();
  st.misses = misses_.Sum();
  st.admissions = admissions_.Sum();
  st.evictions = evictions_.Sum();
  st.loaded_bytes = loaded_bytes_;
  st.load_seconds = load_seconds_;
  return st;
}

}  // namespace engram::memory
