// Trace analysis: what a token stream asks of a layout's tables, and how caches of given sizes would
// serve it. Used by `engram trace analyze` (docs/cli.md; its JSON is a stable interface) and by the
// capacity planner to size the host and GPU tiers.
//
// The lookup stream: the trace is cut into sequences of seq_len tokens (0: one sequence), each hashed
// fresh; token by token, every Engram layer's rows are looked up in column order. A cache holds rows
// of all layers together (a row is (layer, row id)); its size is a fraction of the distinct rows of
// the whole stream. Four policies are simulated over the same stream:
//   - LRU, exactly, from every lookup's reuse (stack) distance;
//   - the implemented policy (memory/row_cache_policy.hpp), the same code the host tier runs;
//   - the device pipeline's HBM cache (gpu::MissPath::kDevice: 16-way sets, TinyLFU admission), the
//     decisions its kernels make, one lookup at a time;
//   - the optimal policy (Belady's MIN with bypass: on a miss, the row is kept only if it is re-read
//     before the row that would be evicted), the upper bound for any cache of that size.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engram/layout.hpp"
#include "engram/memory/row_cache_policy.hpp"
#include "engram/status.hpp"

namespace engram::memory {

enum class SmallFifoSizing : std::uint8_t { kBySize, kAsGiven };

struct TraceAnalysisOptions {
  // Tokens per sequence (each starts with pad history). 0: the whole trace is one sequence. Default: 0.
  std::size_t seq_len = 0;
  // Cache sizes to simulate, as fractions of the distinct rows. Default: 0.1%, 1%, 5%, 10%, 25%.
  std::vector<double> fractions = {0.001, 0.01, 0.05, 0.1, 0.25};
  // The implemented policy's settings (its prior included). Default: RowCachePolicyOptions{}.
  RowCachePolicyOptions policy;
  // Whether each cache size gets the small-FIFO share simulation favours for it (SmallFractionFor), or
  // policy.small_fraction as given. Default: kBySize.
  SmallFifoSizing small_fifo = SmallFifoSizing::kBySize;
  // Threads for the simulations (one cache size per thread). 0: hardware threads. Default: 0.
  std::uint32_t threads = 0;
};

struct RegionAnalysis {
  int layer_index = 0;
  std::int32_t layer_id = 0;
  int column = 0;
  int order = 0;  // n-gram order 2..max_ngram
  int head = 0;
  std::int64_t region_rows = 0;  // the region's size (its prime)
  std::uint64_t lookups = 0;
  std::uint64_t distinct = 0;
};

struct OrderAnalysis {
  int order = 0;
  std::uint64_t lookups = 0;
  std::uint64_t distinct = 0;
  // Fraction of lookups that re-read a row seen before (1 - distinct / lookups).
  double reuse = 0;
};

struct CachePoint {
  double fraction = 0;
  std::uint64_t rows = 0;  // capacity in rows
  double lru = 0;          // hit rates over all lookups, in [0, 1]
  double policy = 0;
  double optimal = 0;
  double device = 0;  // the device pipeline's set-associative HBM cache (detail/set_cache.hpp), same size
};

struct TraceAnalysis {
  std::string layout;
  std::uint64_t tokens = 0;
  std::uint64_t sequences = 0;
  std::uint64_t lookups = 0;
  std::uint64_t distinct = 0;
  std::vector<RegionAnalysis> regions;
  std::vector<OrderAnalysis> orders;
  // Reuse distance histogram: reuse_distance[k] = lookups whose LRU stack distance d (distinct rows
  // touched since the row's previous lookup) satisfies 2^k <= d + 1 < 2^(k+1); first reads are not in it.
  std::vector<std::uint64_t> reuse_distance;
  std::vector<CachePoint> caches;
  double seconds = 0;
};

// Analyzes compressed ids (checked against the layout). Memory: about 40 bytes per lookup.
Result<TraceAnalysis> AnalyzeTrace(const Layout& layout, std::span<const std::int32_t> compressed_ids,
                                   const TraceAnalysisOptions& options = {});

// The JSON form printed by `engram trace analyze --json` (stable: docs/cli.md).
std::string TraceAnalysisJson(const TraceAnalysis& analysis);

}  // namespace engram::memory
