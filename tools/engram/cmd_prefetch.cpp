// engram prefetch: serving-shaped steps through the prefetcher (CPU backend) on a real store, driven by
// a token trace: B sequences prefilled in one step, then decoded one token per step. Reports per-tier
// hit rates, rows/s and per-layer waits.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "../../core/percentile.hpp"
#include "commands.hpp"
#include "engram/memory/host_tier.hpp"
#include "engram/prefetch/prefetcher.hpp"

namespace engram::cli {
namespace {

using detail::Percentile;

struct PrefetchArgs {
  std::string store;
  std::string tokens;
  std::string token_map;
  bool compressed = false;
  std::size_t batch = 32;
  std::size_t prefill = 256;
  std::size_t decode = 32;
  std::uint64_t host_cache = 0;
  std::string resident = "none";
  std::uint32_t gather_threads = 4;
  std::uint32_t read_threads = 8;
  std::string read_path = "multiget";
  std::uint64_t staging = 1ULL << 30;
  bool json = false;
};

int Run(const PrefetchArgs& a) {
  const char* what = "prefetch";
  store::StoreOptions so;
  so.read_threads = a.read_threads;
  so.read_path = a.read_path == "direct" ? store::ReadPath::kDirectBlocks : store::ReadPath::kMultiGet;
  auto st = store::Store::Open(a.store, so);
  if (!st.ok()) return Fail(what, st.status());
  const Layout& layout = (*st)->layout();
  auto latest = (*st)->Latest();
  if (!latest.ok()) return Fail(what, latest.status());
  auto version = (*st)->Pin(*latest);
  if (!version.ok()) return Fail(what, version.status());
  auto ids = LoadCompressedTokens(a.tokens, a.token_map, layout);
  if (!ids.ok()) return Fail(what, ids.status());
  const std::size_t per_seq = a.prefill + a.decode;
  if (a.batch == 0 || per_seq == 0 || a.batch * per_seq > ids->size()) {
    return Fail(what, Status::InvalidArgument(fmt::format("{} sequences x {} tokens need {} tokens; the trace has {}",
                                                          a.batch, per_seq, a.batch * per_seq, ids->size())));
  }

  std::unique_ptr<memory::HostTier> host;
  if (a.host_cache > 0 || a.resident != "none") {
    memory::HostTierOptions ho;
    ho.cache_bytes = a.host_cache;
    if (a.resident == "all") ho.resident = memory::ResidentRegions::kAll;
    if (a.resident == "2gram") {
      ho.resident = memory::ResidentRegions::kChosen;
      for (int l = 0; l < layout.num_layers(); ++l) {
        for (int c = 0; c < layout.heads(); ++c) ho.regions.push_back({l, c});
      }
    }
    auto h = memory::HostTier::Create(layout, ho);
    if (!h.ok()) return Fail(what, h.status());
    host = std::move(*h);
    if (a.resident != "none") {
      const Status s = host->LoadResident(**st, *version);
      if (!s.ok()) return Fail(what, s);
    }
  }
  prefetch::PrefetcherOptions po;
  po.gather_threads = a.gather_threads;
  po.staging_bytes = a.staging;
  auto p = prefetch::Prefetcher::Create(**st, *version, host.get(), po);
  if (!p.ok()) return Fail(what, p.status());

  std::vector<SequenceId> seqs;
  for (std::size_t i = 0; i < a.batch; ++i) seqs.push_back(*(*p)->CreateSequence());
  const int layers = layout.num_layers();
  std::vector<std::vector<double>> waits(static_cast<std::size_t>(layers));
  std::vector<double> decode_steps;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  using Clock = std::chrono::steady_clock;
  for (std::size_t step = 0; step <= a.decode; ++step) {
    const std::size_t begin = step == 0 ? 0 : a.prefill + step - 1;
    const std::size_t len = step == 0 ? a.prefill : 1;
    if (len == 0) continue;
    std::vector<prefetch::SequenceInput> batch;
    for (std::size_t i = 0; i < a.batch; ++i) {
      batch.push_back({seqs[i], std::span(*ids).subspan(i * per_seq + begin, len), {}});
    }
    const auto t0 = Clock::now();
    auto sid = (*p)->Submit(batch);
    if (!sid.ok()) return Fail(what, sid.status());
    for (int l = 0; l < layers; ++l) {
      const auto w0 = Clock::now();
      const Status s = (*p)->Wait(*sid, l);
      if (!s.ok()) return Fail(what, s);
      waits[static_cast<std::size_t>(l)].push_back(std::chrono::duration<double>(Clock::now() - w0).count());
    }
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    (step == 0 ? prefill_seconds : decode_seconds) += secs;
    if (step > 0) decode_steps.push_back(secs);
    const Status s = (*p)->Finish(*sid);
    if (!s.ok()) return Fail(what, s);
  }
  const prefetch::PrefetchStats stats = (*p)->stats();
  std::uint64_t distinct = 0, resident = 0, cached = 0, disk = 0, lookups = 0;
  for (const auto& l : stats.layers) {
    distinct += l.distinct;
    resident += l.resident_hits;
    cached += l.cache_hits;
    disk += l.disk_rows;
    lookups += l.lookups;
  }
  const double total_seconds = prefill_seconds + decode_seconds;
  auto frac = [&](std::uint64_t x) {
    return distinct == 0 ? 0.0 : static_cast<double>(x) / static_cast<double>(distinct);
  };
  if (a.json) {
    nlohmann::ordered_json j;
    j["sequences"] = a.batch;
    j["prefill_tokens_per_sequence"] = a.prefill;
    j["decode_steps"] = a.decode;
    j["prefill_tokens_per_second"] =
        prefill_seconds > 0 ? static_cast<double>(a.batch * a.prefill) / prefill_seconds : 0;
    j["decode_tokens_per_second"] = decode_seconds > 0 ? static_cast<double>(a.batch * a.decode) / decode_seconds : 0;
    j["rows_per_second"] = total_seconds > 0 ? static_cast<double>(lookups) / total_seconds : 0;
    j["distinct_rows"] = distinct;
    j["resident_share"] = frac(resident);
    j["cache_share"] = frac(cached);
    j["disk_share"] = frac(disk);
    j["decode_step_p50_ms"] = 1e3 * Percentile(decode_steps, 0.5);
    j["decode_step_p99_ms"] = 1e3 * Percentile(decode_steps, 0.99);
    j["layer_wait_ms"] = nlohmann::ordered_json::array();
    for (int l = 0; l < layers; ++l) {
      const auto& w = waits[static_cast<std::size_t>(l)];
      j["layer_wait_ms"].push_back({{"layer_id", layout.layer(l).layer_id},
                                    {"p50", 1e3 * Percentile(w, 0.5)},
                                    {"p95", 1e3 * Percentile(w, 0.95)},
                                    {"p99", 1e3 * Percentile(w, 0.99)}});
    }
    j["stats"] = nlohmann::json::parse((*p)->StatsJson());
    std::puts(j.dump(2).c_str());
    return 0;
  }
  std::printf("store %s (%s, version %llu), trace %s: %zu sequences, prefill %zu tokens each, %zu decode steps\n",
              a.store.c_str(), layout.name().c_str(), static_cast<unsigned long long>(*latest), a.tokens.c_str(),
              a.batch, a.prefill, a.decode);
  if (host) {
    const auto hs = host->stats();
    std::printf("host tier: %.1f MiB resident, %.1f MiB cache (%llu rows); %s\n",
                static_cast<double>(hs.resident_bytes) / 1048576.0, static_cast<double>(hs.cache_bytes) / 1048576.0,
                static_cast<unsigned long long>(hs.cache_rows), memory::DescribeArena(host->arena_report()).c_str());
    if (hs.loaded_bytes > 0) {
      std::printf("resident load: %.1f MiB in %.2f s (%.0f MiB/s)\n", static_cast<double>(hs.loaded_bytes) / 1048576.0,
                  hs.load_seconds, static_cast<double>(hs.loaded_bytes) / 1048576.0 / std::max(hs.load_seconds, 1e-9));
    }
  } else {
    std::printf("host tier: none (every row from the store)\n");
  }
  std::printf("rows: %llu lookups, %llu distinct after de-duplication per step (%.2fx)\n",
              static_cast<unsigned long long>(lookups), static_cast<unsigned long long>(distinct),
              distinct == 0 ? 0.0 : static_cast<double>(lookups) / static_cast<double>(distinct));
  std::printf("served by: resident %.1f%%, host cache %.1f%%, disk %.1f%%\n", 100 * frac(resident), 100 * frac(cached),
              100 * frac(disk));
  std::printf("prefill: %.0f tokens/s (%.1f ms for %zu tokens)\n",
              prefill_seconds > 0 ? static_cast<double>(a.batch * a.prefill) / prefill_seconds : 0,
              1e3 * prefill_seconds, a.batch * a.prefill);
  std::printf("decode: %.0f tokens/s, step p50 %.2f ms, p99 %.2f ms\n",
              decode_seconds > 0 ? static_cast<double>(a.batch * a.decode) / decode_seconds : 0,
              1e3 * Percentile(decode_steps, 0.5), 1e3 * Percentile(decode_steps, 0.99));
  std::printf("rows delivered: %.2f M rows/s overall\n",
              total_seconds > 0 ? static_cast<double>(lookups) / total_seconds / 1e6 : 0);
  std::printf("per-layer wait (the caller blocked in Wait, all steps): ");
  for (int l = 0; l < layers; ++l) {
    const auto& w = waits[static_cast<std::size_t>(l)];
    std::printf("%slayer %d p50 %.2f / p95 %.2f / p99 %.2f ms", l == 0 ? "" : "; ", layout.layer(l).layer_id,
                1e3 * Percentile(w, 0.5), 1e3 * Percentile(w, 0.95), 1e3 * Percentile(w, 0.99));
  }
  std::printf("\ndisk: %llu reads, %.1f MiB, mean queue depth %.1f (peak %llu)\n",
              static_cast<unsigned long long>(stats.io.reads) + static_cast<unsigned long long>(stats.io.direct_reads),
              static_cast<double>(stats.io.bytes + stats.io.direct_bytes) / 1048576.0, stats.io.mean_queue_depth,
              static_cast<unsigned long long>(stats.io.peak_in_flight));
  return 0;
}

}  // namespace

Runner AddPrefetchCommand(CLI::App& app) {
  auto a = std::make_shared<PrefetchArgs>();
  CLI::App* cmd = app.add_subcommand(
      "prefetch",
      "Run serving-shaped steps through the prefetcher (CPU backend) on a store: --batch sequences from\n"
      "the trace, each prefilled with --prefill tokens in one step, then --decode steps of one token each.\n"
      "Prints the share of rows served by each tier, tokens/s, rows/s and per-layer waits.");
  cmd->add_option("--store", a->store, "Store directory")->required();
  cmd->add_option("--tokens", a->tokens, "Token ids, little-endian int32")->required()->check(CLI::ExistingFile);
  auto* map = cmd->add_option("--token-map", a->token_map, "Raw -> compressed id map, little-endian int32");
  auto* comp = cmd->add_flag("--compressed", a->compressed, "The token ids are already compressed");
  map->excludes(comp);
  cmd->add_option("--batch", a->batch, "Sequences per step")->capture_default_str();
  cmd->add_option("--prefill", a->prefill, "Prefill tokens per sequence (one step)")->capture_default_str();
  cmd->add_option("--decode", a->decode, "Decode steps (one token per sequence each)")->capture_default_str();
  cmd->add_option("--host-cache", a->host_cache, "Host row cache, bytes (suffixes K, M, G: powers of 1024)")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  cmd->add_option("--resident", a->resident, "Regions held whole in host memory: none, 2gram or all")
      ->check(CLI::IsMember({"none", "2gram", "all"}))
      ->capture_default_str();
  cmd->add_option("--gather-threads", a->gather_threads, "Threads gathering rows")->capture_default_str();
  cmd->add_option("--read-threads", a->read_threads, "Store read threads")->capture_default_str();
  cmd->add_option("--read-path", a->read_path, "Store read path: multiget or direct")
      ->check(CLI::IsMember({"multiget", "direct"}))
      ->capture_default_str();
  cmd->add_option("--staging", a->staging, "Staging budget, bytes")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  cmd->add_flag("--json", a->json, "Print one JSON object");
  return [a]() -> int { return Run(*a); };
}

}  // namespace engram::cli
