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
#include "engram/memory/trace_analysis.hpp"

namespace engram::cli {
namespace {

struct TraceArgs {
  std::string layout;
  std::string tokens;
  std::string token_map;
  bool compressed = false;
  std::size_t seq_len = 0;
  bool json = false;
  // analyze
  std::string prior_tokens;
  std::vector<double> fractions = {0.001, 0.01, 0.05, 0.1, 0.25};
  std::string policy = "adaptive";
  std::uint32_t threads = 0;
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

int RunAnalyze(const TraceArgs& a) {
  const char* what = "trace analyze";
  auto layout = Layout::Resolve(a.layout);
  if (!layout.ok()) return Fail(what, layout.status());
  if (a.token_map.empty() && !a.compressed) {
    return Fail(what, Status::InvalidArgument("give --token-map FILE, or --compressed"));
  }
  auto ids = LoadCompressedTokens(a.tokens, a.token_map, *layout);
  if (!ids.ok()) return Fail(what, ids.status());
  memory::TraceAnalysisOptions o;
  o.seq_len = a.seq_len;
  o.fractions = a.fractions;
  o.threads = a.threads;
  o.policy.kind = a.policy == "lru" ? memory::RowCachePolicyKind::kLru : memory::RowCachePolicyKind::kAdaptiveFrequency;
  std::size_t prior_tokens = 0;
  if (!a.prior_tokens.empty()) {
    auto prior_ids = LoadCompressedTokens(a.prior_tokens, a.token_map, *layout);
    if (!prior_ids.ok()) return Fail(what, prior_ids.status());
    auto prior = memory::RowPrior::Build(*layout, *prior_ids, a.seq_len);
    if (!prior.ok()) return Fail(what, prior.status());
    o.policy.prior = *prior;
    prior_tokens = prior_ids->size();
  }
  auto r = memory::AnalyzeTrace(*layout, *ids, o);
  if (!r.ok()) return Fail(what, r.status());
  if (a.json) {
    std::puts(memory::TraceAnalysisJson(*r).c_str());
    return 0;
  }
  std::printf("trace %s: %llu tokens in %llu sequence(s), layout %s: %llu row lookups, %llu distinct rows (%.1f%%)\n",
              a.tokens.c_str(), static_cast<unsigned long long>(r->tokens),
              static_cast<unsigned long long>(r->sequences), r->layout.c_str(),
              static_cast<unsigned long long>(r->lookups), static_cast<unsigned long long>(r->distinct),
              r->lookups == 0 ? 0.0 : 100.0 * static_cast<double>(r->distinct) / static_cast<double>(r->lookups));
  std::printf("\nper order (all layers, all heads):\n  %-6s %14s %14s %8s\n", "order", "lookups", "distinct", "reuse");
  for (const auto& ord : r->orders) {
    std::printf("  n=%-4d %14llu %14llu %7.1f%%\n", ord.order, static_cast<unsigned long long>(ord.lookups),
                static_cast<unsigned long long>(ord.distinct), 100.0 * ord.reuse);
  }
  std::printf("\nreuse distance (distinct rows read in between), lookups that re-read a row:\n");
  for (std::size_t k = 0; k < r->reuse_distance.size(); ++k) {
    if (r->reuse_distance[k] == 0) continue;
    std::printf("  [%12llu, %12llu) %12llu\n", static_cast<unsigned long long>((1ULL << k) - 1),
                static_cast<unsigned long long>((2ULL << k) - 1),
                static_cast<unsigned long long>(r->reuse_distance[k]));
  }
  std::printf("\ncache hit rates (a cache of all layers' rows; policy: %s%s):\n", a.policy.c_str(),
              prior_tokens > 0 ? fmt::format(", prior from {} tokens of {}", prior_tokens, a.prior_tokens).c_str()
                               : ", no prior");
  std::printf("  %8s %12s %8s %8s %8s %8s %14s %14s %12s\n", "size", "rows", "LRU", "policy", "device", "optimal",
              "policy/optimal", "device/optimal", "LRU/optimal");
  auto pct = [](double x, double opt) { return opt > 0 ? 100 * x / opt : 0.0; };
  for (const auto& c : r->caches) {
    std::printf("  %7.1f%% %12llu %8.4f %8.4f %8.4f %8.4f %13.1f%% %13.1f%% %11.1f%%\n", 100 * c.fraction,
                static_cast<unsigned long long>(c.rows), c.lru, c.policy, c.device, c.optimal, pct(c.policy, c.optimal),
                pct(c.device, c.optimal), pct(c.lru, c.optimal));
  }
  std::printf("(device: the set-associative HBM cache of the working set's device pipeline)\n");
  std::printf("(%.1f s)\n", r->seconds);
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

  CLI::App* analyze = cmd->add_subcommand(
      "analyze",
      "Distinct rows per region, reuse, and cache hit rates for LRU, the implemented policy, the device\n"
      "pipeline's HBM cache and the optimal (Belady) policy at cache sizes given as fractions of the\n"
      "distinct rows, counted over the row lookups of every Engram layer. With --json: one object whose\n"
      "\"caches\" array holds {\"fraction\", \"rows\", \"lru\", \"policy\", \"optimal\", \"device\"} per size (a\n"
      "stable interface; docs/cli.md; \"device\" is the GPU working set's device-pipeline cache).");
  AddLayoutOption(*analyze, args->layout, true);
  analyze->add_option("--tokens", args->tokens, "Token ids, little-endian int32")->required();
  auto* amap = analyze->add_option("--token-map", args->token_map, "Raw -> compressed id map, little-endian int32");
  auto* acomp = analyze->add_flag("--compressed", args->compressed, "The token ids are already compressed");
  amap->excludes(acomp);
  analyze->add_option("--seq-len", args->seq_len, "Tokens per sequence; 0 means one sequence")->capture_default_str();
  analyze->add_flag("--json", args->json, "Print one JSON object instead of tables");
  analyze
      ->add_option("--prior-tokens", args->prior_tokens,
                   "Token ids of OTHER text to build the policy's frequency prior from (never the trace itself)")
      ->check(CLI::ExistingFile);
  analyze->add_option("--fractions", args->fractions, "Cache sizes as fractions of the distinct rows")
      ->delimiter(',')
      ->check(CLI::Range(1e-9, 1.0))
      ->capture_default_str();
  analyze->add_option("--policy", args->policy, "The policy column: adaptive (the host tier's) or lru")
      ->check(CLI::IsMember({"adaptive", "lru"}))
      ->capture_default_str();
  analyze->add_option("--threads", args->threads, "Simulation threads; 0: all hardware threads")->capture_default_str();
  return [args, analyze]() -> int { return analyze->parsed() ? RunAnalyze(*args) : RunSummary(*args); };
}

}  // namespace engram::cli
