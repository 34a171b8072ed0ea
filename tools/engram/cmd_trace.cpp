// engram trace summary: what a token trace asks of the tables (tokens, row lookups, distinct rows per
// region) and how fast this machine hashes it.
#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "engram/hasher.hpp"

namespace engram::cli {
namespace {

struct TraceArgs {
  std::string layout;
  std::string tokens;
  std::string token_map;
  bool compressed = false;
  std::size_t seq_len = 0;
  bool json = false;
};

struct LayerSummary {
  std::int32_t layer_id = 0;
  std::vector<std::int64_t> distinct;  // per column
  std::int64_t distinct_total = 0;
};

// Distinct rows per region, counted with one bit per row of the layer's table.
LayerSummary CountDistinct(const Layout& layout, int li, std::span<const std::int64_t> rows) {
  const auto cols = static_cast<std::size_t>(layout.columns());
  LayerSummary s;
  s.layer_id = layout.layer(li).layer_id;
  s.distinct.assign(cols, 0);
  std::vector<std::uint64_t> bits((static_cast<std::size_t>(layout.layer_rows(li)) + 63) / 64, 0);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto r = static_cast<std::uint64_t>(rows[i]);
    std::uint64_t& word = bits[r >> 6];
    const std::uint64_t bit = 1ULL << (r & 63U);
    if ((word & bit) == 0) {
      word |= bit;
      ++s.distinct[i % cols];
    }
  }
  for (auto d : s.distinct) s.distinct_total += d;
  return s;
}

int RunSummary(const TraceArgs& a) {
  auto layout = Layout::Resolve(a.layout);
  if (!layout.ok()) return Fail("trace summary", layout.status());
  if (a.token_map.empty() && !a.compressed) {
    return Fail("trace summary", Status::InvalidArgument("give --token-map FILE, or --compressed"));
  }
  auto ids = LoadCompressedTokens(a.tokens, a.token_map, *layout);
  if (!ids.ok()) return Fail("trace summary", ids.status());
  auto hasher = Hasher::Create(*layout);
  if (!hasher.ok()) return Fail("trace summary", hasher.status());

  const std::size_t n = ids->size();
  const auto cols = static_cast<std::size_t>(layout->columns());
  const auto layers = static_cast<std::size_t>(layout->num_layers());
  std::vector<std::int64_t> rows(layers * n * cols);
  // Hashing rate: best of 5 passes over the whole trace, every layer, one thread.
  double best_s = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    for (std::size_t l = 0; l < layers; ++l) {
      Status s = HashFreshSequences(hasher->layer(static_cast<int>(l)), *ids, a.seq_len,
                                    std::span(rows).subspan(l * n * cols, n * cols));
      if (!s.ok()) return Fail("trace summary", s);
    }
    best_s = std::min(best_s, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const double total_rows = static_cast<double>(rows.size());
  const std::size_t seq_len = a.seq_len == 0 ? n : a.seq_len;
  const std::size_t sequences = n == 0 ? 0 : (n + seq_len - 1) / seq_len;

  std::vector<LayerSummary> summaries;
  for (std::size_t l = 0; l < layers; ++l) {
    summaries.push_back(CountDistinct(*layout, static_cast<int>(l), std::span(rows).subspan(l * n * cols, n * cols)));
  }

  if (a.json) {
    nlohmann::ordered_json j;
    j["layout"] = layout->name();
    j["tokens"] = n;
    j["sequences"] = sequences;
    j["seq_len"] = seq_len;
    j["row_lookups"] = rows.size();
    j["hash_seconds"] = best_s;
    j["hash_rows_per_second"] = total_rows / best_s;
    nlohmann::ordered_json jl = nlohmann::ordered_json::array();
    for (const auto& s : summaries) {
      nlohmann::ordered_json regions = nlohmann::ordered_json::array();
      for (std::size_t c = 0; c < cols; ++c) {
        regions.push_back({{"order", 2 + c / static_cast<std::size_t>(layout->heads())},
                           {"head", c % static_cast<std::size_t>(layout->heads())},
                           {"lookups", n},
                           {"distinct_rows", s.distinct[c]}});
      }
      jl.push_back({{"layer_id", s.layer_id},
                    {"row_lookups", n * cols},
                    {"distinct_rows", s.distinct_total},
                    {"regions", regions}});
    }
    j["layers"] = jl;
    std::puts(j.dump(2).c_str());
    return 0;
  }

  std::printf("trace %s: %zu tokens in %zu sequence(s) of up to %zu, layout %s\n", a.tokens.c_str(), n, sequences,
              seq_len, layout->name().c_str());
  std::printf("hashing: %.0f row ids (%zu layers x %zu tokens x %zu) in %.1f ms = %.1f M rows/s on one core\n",
              total_rows, layers, n, cols, best_s * 1e3, total_rows / best_s / 1e6);
  for (const auto& s : summaries) {
    std::printf("\nlayer %d: %zu row lookups, %lld distinct rows (%.1f%%)\n", s.layer_id, n * cols,
                static_cast<long long>(s.distinct_total),
                n == 0 ? 0.0 : 100.0 * static_cast<double>(s.distinct_total) / static_cast<double>(n * cols));
    std::printf("  distinct rows per region (of %zu lookups each):\n  order", n);
    for (int k = 0; k < layout->heads(); ++k) std::printf("%10s", fmt::format("h{}", k).c_str());
    std::printf("%10s\n", "mean %");
    for (int o = 0; o < layout->num_orders(); ++o) {
      std::printf("  n=%d  ", o + 2);
      double sum = 0;
      for (int k = 0; k < layout->heads(); ++k) {
        const int column = o * layout->heads() + k;
        const auto d = s.distinct[static_cast<std::size_t>(column)];
        sum += static_cast<double>(d);
        std::printf("%10lld", static_cast<long long>(d));
      }
      std::printf("%9.1f%%\n", n == 0 ? 0.0 : 100.0 * sum / layout->heads() / static_cast<double>(n));
    }
  }
  return 0;
}

}  // namespace

Runner AddTraceCommand(CLI::App& app) {
  auto args = std::make_shared<TraceArgs>();
  CLI::App* cmd = app.add_subcommand("trace", "Analyse token traces against a table layout");
  cmd->require_subcommand(1, 1);
  CLI::App* summary = cmd->add_subcommand(
      "summary",
      "Hash a token trace for every Engram layer and print tokens, row lookups, distinct rows per\n"
      "(order, head) region and the single-core hashing rate. Distinct rows are what a cache must hold to\n"
      "serve every repeat; lookups minus distinct rows are the repeats a cache could serve.");
  AddLayoutOption(*summary, args->layout, true);
  summary->add_option("--tokens", args->tokens, "Token ids, little-endian int32")->required();
  auto* map = summary->add_option("--token-map", args->token_map, "Raw -> compressed id map, little-endian int32");
  auto* comp = summary->add_flag("--compressed", args->compressed, "The token ids are already compressed");
  map->excludes(comp);
  summary->add_option("--seq-len", args->seq_len, "Tokens per sequence; 0 means one sequence")->capture_default_str();
  summary->add_flag("--json", args->json, "Print one JSON object instead of tables");
  return [args]() -> int { return RunSummary(*args); };
}

}  // namespace engram::cli
