#include "engram/memory/trace_analysis.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <nlohmann/json.hpp>
#include <queue>
#include <thread>

#include "../core/fenwick.hpp"
#include "../core/hash_mix.hpp"
#include "../core/thread_pool.hpp"
#include "engram/detail/set_cache.hpp"
#include "engram/hasher.hpp"
#include "engram/memory/cache_sim.hpp"
#include "engram/token_map.hpp"

namespace engram::memory {
namespace {

constexpr std::uint32_t kNever = UINT32_MAX;

// The lookup stream as dense ids (0..distinct-1 in order of first appearance) and each id's order.
struct Stream {
  std::vector<std::uint32_t> ids;
  std::vector<std::uint64_t> keys;    // dense id -> (layer << 40) | row
  std::vector<std::uint8_t> columns;  // dense id -> column (order and head)
};

// Open addressing from (layer, row) keys to dense ids; doubles when half full.
class DenseIds {
 public:
  explicit DenseIds(std::size_t expected) { Resize(std::max<std::size_t>(16, std::bit_ceil(expected * 2))); }
  // Returns (id, inserted).
  std::pair<std::uint32_t, bool> Get(std::uint64_t key) {
    if (2 * (static_cast<std::size_t>(next_) + 1) > slots_.size()) Resize(slots_.size() * 2);
    std::size_t i = detail::Mix64(key) & mask_;
    while (true) {
      Slot& s = slots_[i];
      if (s.key == key + 1) return {s.id, false};
      if (s.key == 0) {
        s.key = key + 1;
        s.id = next_++;
        return {s.id, true};
      }
      i = (i + 1) & mask_;
    }
  }

 private:
  struct Slot {
    std::uint64_t key = 0;  // key + 1; 0: empty
    std::uint32_t id = 0;
  };
  void Resize(std::size_t capacity) {
    std::vector<Slot> old(capacity);
    old.swap(slots_);
    mask_ = capacity - 1;
    for (const Slot& s : old) {
      if (s.key == 0) continue;
      std::size_t i = detail::Mix64(s.key - 1) & mask_;
      while (slots_[i].key != 0) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }
  std::vector<Slot> slots_;
  std::size_t mask_ = 0;
  std::uint32_t next_ = 0;
};

// Belady's MIN with bypass at `capacity` rows; `next` is each lookup's next use (kNever if none).
std::uint64_t OptimalHits(const std::vector<std::uint32_t>& ids, const std::vector<std::uint32_t>& next,
                          std::size_t distinct, std::uint64_t capacity) {
  if (capacity == 0) return 0;
  std::vector<std::uint32_t> cached_next(distinct, 0);
  std::vector<std::uint8_t> cached(distinct, 0);
  std::priority_queue<std::pair<std::uint32_t, std::uint32_t>> heap;  // (next use, id), stale entries skipped
  std::uint64_t size = 0;
  std::uint64_t hits = 0;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const std::uint32_t k = ids[i];
    const std::uint32_t nu = next[i];
    if (cached[k] != 0) {
      ++hits;
      if (nu == kNever) {
        cached[k] = 0;  // never read again: free its place now (MIN would evict it first anyway)
        --size;
      } else {
        cached_next[k] = nu;
        heap.emplace(nu, k);
      }
      continue;
    }
    if (nu == kNever) continue;  // bypass: a row never read again is not worth a place
    if (size < capacity) {
      cached[k] = 1;
      cached_next[k] = nu;
      heap.emplace(nu, k);
      ++size;
      continue;
    }
    while (cached[heap.top().second] == 0 || cached_next[heap.top().second] != heap.top().first) heap.pop();
    if (heap.top().first > nu) {
      cached[heap.top().second] = 0;
      heap.pop();
      cached[k] = 1;
      cached_next[k] = nu;
      heap.emplace(nu, k);
    }
  }
  return hits;
}

// The implemented policy, driven exactly as the host tier's cache drives it.
std::uint64_t PolicyHits(const Stream& s, const Layout& layout, std::uint64_t capacity,
                         const RowCachePolicyOptions& options) {
  PolicyCacheSim cache(capacity, options, 1, s.keys.size());
  std::uint64_t hits = 0;
  const int heads = layout.heads();
  for (const std::uint32_t k : s.ids) {
    if (cache.Lookup(k)) {
      ++hits;
    } else {
      cache.Admit(k, s.keys[k], 2 + s.columns[k] / heads);
    }
  }
  return hits;
}

// The device pipeline's HBM cache (detail/set_cache.hpp), one lookup at a time: the same sets, priorities
// and levels as its kernels (which apply them to all of a layer's lookups at once).
std::uint64_t SetCacheHits(const Stream& s, const Layout& layout, std::uint64_t capacity) {
  SetCacheSim cache(capacity);
  const int heads = layout.heads();
  std::uint64_t hits = 0;
  for (const std::uint32_t k : s.ids) {
    if (cache.Lookup(s.keys[k])) {
      ++hits;
    } else {
      cache.Admit(s.keys[k], 2 + s.columns[k] / heads);
    }
  }
  return hits;
}

}  // namespace

Result<TraceAnalysis> AnalyzeTrace(const Layout& layout, std::span<const std::int32_t> compressed_ids,
                                   const TraceAnalysisOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  ENGRAM_RETURN_IF_ERROR(CheckCompressedIds(compressed_ids, layout));
  for (double f : options.fractions) {
    if (!(f > 0 && f <= 1)) {
      return Status::InvalidArgument(fmt::format("trace analysis: cache fraction {} is outside (0, 1]", f));
    }
  }
  ENGRAM_ASSIGN_OR_RETURN(Hasher hasher, Hasher::Create(layout));
  const std::size_t n = compressed_ids.size();
  const auto cols = static_cast<std::size_t>(layout.columns());
  const auto layers = static_cast<std::size_t>(layout.num_layers());
  const std::size_t lookups = n * cols * layers;
  if (lookups >= kNever) {
    return Status::InvalidArgument(
        fmt::format("trace analysis: {} lookups; at most {} (cut the trace)", lookups, kNever - 1));
  }
  TraceAnalysis out;
  out.layout = layout.name();
  out.tokens = n;
  out.lookups = lookups;
  const std::size_t seq_len = options.seq_len == 0 ? std::max<std::size_t>(n, 1) : options.seq_len;
  out.sequences = (n + seq_len - 1) / seq_len;

  // Row ids, token-major: token t, layer l, column c.
  Stream s;
  s.ids.resize(lookups);
  {
    DenseIds dense(std::min<std::size_t>(lookups, 1U << 26));
    // Hash each layer, then interleave into the stream as token-major order.
    std::vector<std::vector<std::int64_t>> per_layer(layers);
    for (std::size_t l = 0; l < layers; ++l) {
      per_layer[l].resize(n * cols);
      ENGRAM_RETURN_IF_ERROR(
          HashFreshSequences(hasher.layer(static_cast<int>(l)), compressed_ids, options.seq_len, per_layer[l]));
    }
    std::size_t i = 0;
    for (std::size_t t = 0; t < n; ++t) {
      for (std::size_t l = 0; l < layers; ++l) {
        for (std::size_t c = 0; c < cols; ++c, ++i) {
          const std::uint64_t key = RowKey(static_cast<int>(l), per_layer[l][t * cols + c]);
          const auto [id, inserted] = dense.Get(key);
          if (inserted) {
            s.keys.push_back(key);
            s.columns.push_back(static_cast<std::uint8_t>(c));
          }
          s.ids[i] = id;
        }
      }
    }
  }
  const std::size_t distinct = s.keys.size();
  out.distinct = distinct;

  // Per region and per order.
  out.regions.resize(layers * cols);
  for (std::size_t l = 0; l < layers; ++l) {
    for (std::size_t c = 0; c < cols; ++c) {
      RegionAnalysis& r = out.regions[l * cols + c];
      r.layer_index = static_cast<int>(l);
      r.layer_id = layout.layer(static_cast<int>(l)).layer_id;
      r.column = static_cast<int>(c);
      r.order = 2 + static_cast<int>(c) / layout.heads();
      r.head = static_cast<int>(c) % layout.heads();
      r.region_rows = layout.layer(static_cast<int>(l)).primes[c];
      r.lookups = n;
    }
  }
  for (std::size_t k = 0; k < distinct; ++k) {
    ++out.regions[(s.keys[k] >> 40) * cols + s.columns[k]].distinct;
  }
  for (int o = 2; o <= layout.max_ngram(); ++o) {
    OrderAnalysis oa;
    oa.order = o;
    for (const auto& r : out.regions) {
      if (r.order == o) {
        oa.lookups += r.lookups;
        oa.distinct += r.distinct;
      }
    }
    oa.reuse = oa.lookups == 0 ? 0 : 1.0 - static_cast<double>(oa.distinct) / static_cast<double>(oa.lookups);
    out.orders.push_back(oa);
  }

  // Next use of every lookup, and LRU stack distances (a Fenwick tree over positions).
  std::vector<std::uint32_t> next(lookups, kNever);
  {
    std::vector<std::uint32_t> last(distinct, kNever);
    for (std::size_t i = lookups; i-- > 0;) {
      next[i] = last[s.ids[i]];
      last[s.ids[i]] = static_cast<std::uint32_t>(i);
    }
  }
  std::vector<std::uint64_t> capacities;
  for (double f : options.fractions) {
    capacities.push_back(std::max<std::uint64_t>(1, static_cast<std::uint64_t>(f * static_cast<double>(distinct))));
  }
  std::vector<std::uint64_t> lru_hits(capacities.size(), 0);
  {
    detail::Fenwick<std::int32_t> fw(lookups);
    std::vector<std::uint32_t> prev(distinct, kNever);
    out.reuse_distance.assign(34, 0);
    for (std::size_t i = 0; i < lookups; ++i) {
      const std::uint32_t k = s.ids[i];
      if (prev[k] != kNever) {
        // Distinct rows looked up since: latest-lookup marks strictly after prev[k].
        const auto d = static_cast<std::uint64_t>(fw.Prefix(i == 0 ? 0 : i - 1) - fw.Prefix(prev[k]));
        ++out.reuse_distance[static_cast<std::size_t>(std::bit_width(d + 1) - 1)];
        for (std::size_t c = 0; c < capacities.size(); ++c) {
          if (d < capacities[c]) ++lru_hits[c];
        }
        fw.Add(prev[k], -1);
      }
      fw.Add(i, 1);
      prev[k] = static_cast<std::uint32_t>(i);
    }
    while (!out.reuse_distance.empty() && out.reuse_distance.back() == 0) out.reuse_distance.pop_back();
  }

  out.caches.resize(capacities.size());
  const std::uint32_t threads =
      options.threads != 0 ? options.threads : std::max(1U, std::thread::hardware_concurrency());
  detail::ThreadPool pool(std::min<std::size_t>(threads, capacities.size() * 2) - 1);
  // Tasks 0..C-1: optimal; C..2C-1: policy; 2C..3C-1: the device cache (each independent, over the same
  // stream).
  pool.ParallelFor(capacities.size() * 3, [&](std::size_t task) {
    const std::size_t c = task % capacities.size();
    const double denom = static_cast<double>(std::max<std::uint64_t>(lookups, 1));
    if (task < capacities.size()) {
      out.caches[c].optimal = static_cast<double>(OptimalHits(s.ids, next, distinct, capacities[c])) / denom;
    } else if (task >= 2 * capacities.size()) {
      out.caches[c].device = static_cast<double>(SetCacheHits(s, layout, capacities[c])) / denom;
    } else {
      RowCachePolicyOptions po = options.policy;
      if (options.small_fifo == SmallFifoSizing::kBySize) po.small_fraction = SmallFractionFor(options.fractions[c]);
      out.caches[c].policy = static_cast<double>(PolicyHits(s, layout, capacities[c], po)) / denom;
    }
  });
  for (std::size_t c = 0; c < capacities.size(); ++c) {
    out.caches[c].fraction = options.fractions[c];
    out.caches[c].rows = capacities[c];
    out.caches[c].lru = static_cast<double>(lru_hits[c]) / static_cast<double>(std::max<std::uint64_t>(lookups, 1));
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

std::string TraceAnalysisJson(const TraceAnalysis& a) {
  nlohmann::ordered_json j;
  j["layout"] = a.layout;
  j["tokens"] = a.tokens;
  j["sequences"] = a.sequences;
  j["lookups"] = a.lookups;
  j["distinct_rows"] = a.distinct;
  j["orders"] = nlohmann::ordered_json::array();
  for (const auto& o : a.orders) {
    j["orders"].push_back({{"order", o.order}, {"lookups", o.lookups}, {"distinct", o.distinct}, {"reuse", o.reuse}});
  }
  j["regions"] = nlohmann::ordered_json::array();
  for (const auto& r : a.regions) {
    j["regions"].push_back({{"layer", r.layer_id},
                            {"column", r.column},
                            {"order", r.order},
                            {"head", r.head},
                            {"region_rows", r.region_rows},
                            {"lookups", r.lookups},
                            {"distinct", r.distinct}});
  }
  j["reuse_distance_log2"] = a.reuse_distance;
  j["caches"] = nlohmann::ordered_json::array();
  for (const auto& c : a.caches) {
    j["caches"].push_back({{"fraction", c.fraction},
                           {"rows", c.rows},
                           {"lru", c.lru},
                           {"policy", c.policy},
                           {"optimal", c.optimal},
                           {"device", c.device}});
  }
  return j.dump(2);
}

}  // namespace engram::memory
