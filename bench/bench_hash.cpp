// Hashing rate on one core, rows per second, for both presets on the real trace, with the naive
// baseline (the same one-pass loop, but a hardware divide per row) measured in the same run.
//
//   build/bench/bench_hash [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <map>

#include "bench_data.hpp"
#include "engram/hasher.hpp"

namespace engram {
namespace {

const std::vector<std::int32_t>& Trace() {
  static const std::vector<std::int32_t> ids = bench::LoadTraceCompressed();
  return ids;
}

constexpr std::size_t kSeqLen = 4096;

// The naive baseline: one pass over orders like the real hasher, `%` (a divide) per row.
void NaiveHash(const Layout& layout, int li, std::span<const std::int32_t> ids, std::size_t seq_len,
               std::int64_t* out) {
  const LayerSpec& l = layout.layer(li);
  const int n_max = layout.max_ngram();
  const int heads = layout.heads();
  std::int64_t offsets[kMaxColumns];
  for (int c = 0; c < layout.columns(); ++c) offsets[c] = layout.region_offset(li, c);
  for (std::size_t t = 0; t < ids.size(); ++t) {
    const std::size_t start = t - t % seq_len;
    std::uint64_t mix = 0;
    for (int j = 0; j < n_max; ++j) {
      const std::int64_t x = t - static_cast<std::size_t>(j) >= start && t >= static_cast<std::size_t>(j)
                                 ? ids[t - static_cast<std::size_t>(j)]
                                 : layout.pad_id();
      mix ^= static_cast<std::uint64_t>(x) * static_cast<std::uint64_t>(l.multipliers[static_cast<std::size_t>(j)]);
      if (j == 0) continue;
      const auto m = static_cast<std::int64_t>(mix);
      for (int k = 0; k < heads; ++k) {
        const int c = (j - 1) * heads + k;
        const std::int64_t p = l.primes[static_cast<std::size_t>(c)];
        std::int64_t r = m % p;
        r += r < 0 ? p : 0;
        *out++ = offsets[c] + r;
      }
    }
  }
}

// Both benchmarks hash the whole trace one sequence (a prefill chunk of kSeqLen tokens) at a time into
// one reused output buffer, as a serving step does: the rows stay in cache for their consumer, and the
// figure is the hash's cost, not the memory system's write bandwidth.
template <typename HashSequence>
void HashTracePerSequence(benchmark::State& state, const Layout& layout, HashSequence&& hash_sequence) {
  const auto& ids = Trace();
  const auto cols = static_cast<std::size_t>(layout.columns());
  std::vector<std::int64_t> rows(kSeqLen * cols);
  for (auto _ : state) {
    for (std::size_t s = 0; s < ids.size(); s += kSeqLen) {
      const std::size_t n = std::min(kSeqLen, ids.size() - s);
      hash_sequence(std::span(ids).subspan(s, n), std::span(rows).first(n * cols));
      benchmark::DoNotOptimize(rows.data());
      benchmark::ClobberMemory();
    }
  }
  state.counters["rows/s"] =
      benchmark::Counter(static_cast<double>(ids.size() * cols), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Hash(benchmark::State& state, const char* preset) {
  auto layout = *Layout::Preset(preset);
  auto hasher = *LayerHasher::Create(layout, 0);
  HashTracePerSequence(state, layout, [&](std::span<const std::int32_t> ids, std::span<std::int64_t> out) {
    (void)HashFreshSequences(hasher, ids, 0, out);
  });
}

void BM_NaiveDivide(benchmark::State& state, const char* preset) {
  auto layout = *Layout::Preset(preset);
  HashTracePerSequence(state, layout, [&](std::span<const std::int32_t> ids, std::span<std::int64_t> out) {
    NaiveHash(layout, 0, ids, kSeqLen, out.data());
  });
}

BENCHMARK_CAPTURE(BM_Hash, flash, "deepseek-v4.1-flash")->Unit(benchmark::kMillisecond)->MinTime(1.0);
BENCHMARK_CAPTURE(BM_NaiveDivide, flash, "deepseek-v4.1-flash")->Unit(benchmark::kMillisecond)->MinTime(1.0);
BENCHMARK_CAPTURE(BM_Hash, demo, "engram-demo")->Unit(benchmark::kMillisecond)->MinTime(1.0);
BENCHMARK_CAPTURE(BM_NaiveDivide, demo, "engram-demo")->Unit(benchmark::kMillisecond)->MinTime(1.0);

// Prints each benchmark as usual and, at the end, engram's rate over the naive baseline per preset.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      auto it = r.counters.find("rows/s");
      if (it != r.counters.end()) rates_[r.benchmark_name()] = it->second.value;
    }
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    for (const char* p : {"flash", "demo"}) {
      const double fast = rates_[std::string("BM_Hash/") + p + "/min_time:1.000"];
      const double naive = rates_[std::string("BM_NaiveDivide/") + p + "/min_time:1.000"];
      if (fast > 0 && naive > 0) {
        std::printf("%-6s engram %.1f M rows/s, naive divide %.1f M rows/s, ratio %.2fx (one core)\n", p, fast / 1e6,
                    naive / 1e6, fast / naive);
      }
    }
  }

 private:
  std::map<std::string, double> rates_;
};

}  // namespace
}  // namespace engram

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  engram::RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
