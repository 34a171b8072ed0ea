// The capacity planner (engram/prefetch/planner.hpp) and the cache simulations it runs
// (engram/memory/cache_sim.hpp), on the real trace: its replay against a literal LRU, the tiers it assigns,
// the timing model's stalls, the calibration file and the host measurements.
#include "engram/prefetch/planner.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <list>
#include <unordered_map>

#include "engram/hasher.hpp"
#include "engram/memory/cache_sim.hpp"
#include "store_util.hpp"
#include "test_util.hpp"

namespace engram {
namespace {

using plan::Calibration;
using plan::Phase;
using plan::Tiers;
using plan::Workload;

Layout V41() {
  return *Layout::Preset("deepseek-v4.1-flash");
}

using test::H100LikeCalibration;
Calibration H100Like() {
  return H100LikeCalibration();
}

std::vector<Phase> SmallPhases(double layer_s = 2e-3) {
  return {{"prefill", {2, 256}, 1, 2, layer_s}, {"decode", {16, 1}, 8, 24, layer_s}};
}

plan::ModelPlacement V41Placement() {
  return {40, {1, 14}};
}

Workload Build(const std::vector<Phase>& phases) {
  auto w = Workload::Build(V41(), test::BrownCompressed(), phases, V41Placement());
  EXPECT_TRUE(w.ok()) << w.status().ToString();
  return std::move(*w);
}

// The measured steps' distinct rows, in replay order, built the literal way: every step's tokens hashed
// as the sequences see them, de-duplicated per layer.
struct Access {
  std::uint64_t key;
  bool measured;
};
std::vector<Access> LiteralReplay(const std::vector<Phase>& phases) {
  const Layout layout = V41();
  const auto& ids = test::BrownCompressed();
  std::vector<Access> out;
  for (const Phase& p : phases) {
    for (std::size_t k = 0; k < p.warmup + p.steps; ++k) {
      for (int l = 0; l < layout.num_layers(); ++l) {
        std::vector<std::int64_t> rows;
        for (std::size_t q = 0; q < p.shape.sequences; ++q) {
          // The whole history of the sequence (decode) or the chunk alone (prefill), hashed fresh.
          const auto toks = p.shape.decode() ? prefetch::WorkloadHistory(ids, p.shape, k, q)
                                             : prefetch::WorkloadTokens(ids, p.shape, k, q);
          const auto r = test::ReferenceRows(layout, l, std::vector<std::int32_t>(toks.begin(), toks.end()));
          const std::size_t keep = (p.shape.decode() ? 1 : p.shape.tokens) * static_cast<std::size_t>(layout.columns());
          rows.insert(rows.end(), r.end() - static_cast<std::ptrdiff_t>(keep), r.end());
        }
        std::sort(rows.begin(), rows.end());
        rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
        for (auto r : rows) out.push_back({memory::RowKey(l, r), k >= p.warmup});
      }
    }
  }
  return out;
}

TEST(Planner, HitCurveMatchesALiteralLruOverTheReplay) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  const auto phases = SmallPhases();
  const Workload w = Build(phases);
  const std::vector<std::uint64_t> sizes = {64, 1024, 16384};
  const auto curve = w.HitCurve(sizes);
  const auto replay = LiteralReplay(phases);
  for (std::size_t c = 0; c < sizes.size(); ++c) {
    std::list<std::uint64_t> lru;
    std::unordered_map<std::uint64_t, std::list<std::uint64_t>::iterator> at;
    double hits = 0, measured = 0;
    for (const Access& a : replay) {
      const auto it = at.find(a.key);
      const bool hit = it != at.end();
      if (hit) lru.erase(it->second);
      lru.push_front(a.key);
      at[a.key] = lru.begin();
      if (lru.size() > sizes[c]) {
        at.erase(lru.back());
        lru.pop_back();
      }
      if (a.measured) {
        measured += 1;
        hits += hit ? 1 : 0;
      }
    }
    EXPECT_NEAR(curve[c], hits / measured, 1e-12) << "cache of " << sizes[c] << " rows";
  }
}

TEST(Planner, TablesInHbmReadNothingElse) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  const Workload w = Build(SmallPhases());
  Tiers t;
  t.hbm_all = true;
  const plan::Plan p = w.Predict(t, H100Like(), 264);
  for (const auto& ph : p.phases) {
    for (const auto& l : ph.layers) {
      EXPECT_EQ(l.host_rows + l.disk_rows, 0) << ph.name;
      EXPECT_EQ(l.hbm_rows, l.distinct) << ph.name;
    }
  }
}

TEST(Planner, ResidentHostTablesReadNoDisk) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  const Workload w = Build(SmallPhases());
  Tiers t;
  t.host_resident = true;
  t.hbm_cache_bytes = 4ULL << 20;
  t.path = plan::PlanPath::kDevice;
  const plan::Plan p = w.Predict(t, H100Like(), 264);
  for (const auto& ph : p.phases) {
    for (const auto& l : ph.layers) {
      EXPECT_EQ(l.disk_rows, 0) << ph.name;
      EXPECT_GT(l.hbm_rows, 0) << ph.name << ": the 4 MiB HBM cache hits some re-read rows";
    }
  }
}

// The device path's reads of mapped host memory take GPU time the model would have had: what they take
// beyond reading the same rows from HBM (the baseline's share) is added to each step.
TEST(Planner, ZeroCopyReadsCostTheModelTheirTimeBeyondHbm) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  const Workload w = Build(SmallPhases());
  Tiers t;
  t.host_resident = true;
  t.path = plan::PlanPath::kDevice;
  const Calibration slow = H100Like();
  Calibration fast = slow;
  fast.zero_copy_rows_per_s = fast.hbm_rows_per_s;  // mapped reads as fast as HBM: nothing to take
  const plan::Plan p = w.Predict(t, slow, 264);
  const plan::Plan q = w.Predict(t, fast, 264);
  for (std::size_t ph = 0; ph < p.phases.size(); ++ph) {
    const auto& a = p.phases[ph];
    const auto& b = q.phases[ph];
    for (const auto& l : a.layers) ASSERT_EQ(l.stall_mean_s, 0) << a.name << ": the reads must not stall here";
    EXPECT_GT(a.contention_s, 0) << a.name;
    EXPECT_EQ(b.contention_s, 0) << a.name;
    EXPECT_NEAR(a.step_s - b.step_s, a.contention_s, 1e-9 * a.step_s) << a.name;
    EXPECT_GT(a.loss_vs_compute, b.loss_vs_compute) << a.name;
  }
  Tiers hbm;
  hbm.hbm_all = true;
  for (const auto& ph : w.Predict(hbm, slow, 264).phases) EXPECT_EQ(ph.contention_s, 0) << ph.name;
}

// What a split's simulation costs grows with its caches up to the size that decides like any larger one,
// and not past it (engram plan sizes its threads by it).
TEST(Planner, PredictMemoryGrowsWithTheCachesUpToTheirCap) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  const Workload w = Build(SmallPhases());
  auto bytes = [&](std::uint64_t host, plan::PlanPath path = plan::PlanPath::kStaged) {
    Tiers t;
    t.host_cache_bytes = host;
    t.hbm_cache_bytes = 1ULL << 20;
    t.path = path;
    return w.PredictBytes(t, 264);
  };
  EXPECT_LT(bytes(1ULL << 20), bytes(8ULL << 20));
  EXPECT_EQ(bytes(64ULL << 30), bytes(192ULL << 30)) << "both beyond the cap";
  Tiers hbm;
  hbm.hbm_all = true;
  EXPECT_LT(w.PredictBytes(hbm, 264), bytes(1ULL << 20));
}

TEST(Planner, AHostCacheTakesReadsOffTheDisk) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  const Workload w = Build(SmallPhases());
  Tiers none, cached;
  cached.host_cache_bytes = 64ULL << 20;
  const plan::Plan a = w.Predict(none, H100Like(), 264);
  const plan::Plan b = w.Predict(cached, H100Like(), 264);
  const auto& decode_a = a.phases[1].layers[0];
  const auto& decode_b = b.phases[1].layers[0];
  EXPECT_EQ(decode_a.host_rows, 0);
  EXPECT_GT(decode_b.host_rows, 0);
  EXPECT_LT(decode_b.disk_rows, decode_a.disk_rows);
  EXPECT_LE(decode_b.disk_reads, decode_b.disk_rows);
}

TEST(Planner, DiskReadsStallTheFirstEngramLayerOfAShortDecodeStep) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  // 0.1 ms a layer: the rows of layer 1 (backbone layer 1) are due 0.1 ms after the step starts, and a
  // step of 16 sequences reads hundreds of rows from a disk of 75 K pages/s.
  const Workload w = Build(SmallPhases(1e-4));
  const plan::Plan p = w.Predict(Tiers{}, H100Like(), 264);
  const plan::PhasePlan& decode = p.phases[1];
  EXPECT_GT(decode.layers[0].disk_rows, 100);
  EXPECT_GT(decode.layers[0].stall_mean_s, 1e-3);
  EXPECT_GT(decode.loss_vs_compute, 0.1);
  EXPECT_EQ(decode.bound, "disk reads (store)");
  EXPECT_GE(decode.layers[0].stall_p99_s, decode.layers[0].stall_p50_s);
}

TEST(Planner, AComputeBoundStepHidesTheSameReads) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  // 50 ms a layer: layer 1's rows have 50 ms, far more than its reads take.
  const Workload w = Build(SmallPhases(50e-3));
  const plan::Plan p = w.Predict(Tiers{}, H100Like(), 264);
  EXPECT_EQ(p.phases[1].layers[0].stall_mean_s, 0);
  EXPECT_EQ(p.phases[1].loss_vs_compute, 0);
}

TEST(Planner, TheRuntimesPoliciesHitMoreThanLruOnRealText) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  const Workload w = Build({{"decode", {64, 1}, 256, 64, 1e-3}});
  Tiers policy, lru;
  policy.host_cache_rows = lru.host_cache_rows = 20000;
  lru.cache_model = plan::CacheModel::kLru;
  const auto a = w.Predict(policy, H100Like(), 264).phases[0].layers;
  const auto b = w.Predict(lru, H100Like(), 264).phases[0].layers;
  EXPECT_GT(a[0].host_rows + a[1].host_rows, b[0].host_rows + b[1].host_rows);
}

TEST(Planner, APhaseLongerThanTheTraceIsRefused) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto w = Workload::Build(V41(), test::BrownCompressed(), {{"prefill", {64, 16384}, 0, 4, 1e-3}}, V41Placement());
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kOutOfRange);
  EXPECT_NE(w.status().message().find("phase prefill"), std::string::npos) << w.status().ToString();
}

TEST(Planner, PlacementsMustFitTheModel) {
  auto w = Workload::Build(V41(), std::vector<std::int32_t>(1000, 5), {{"decode", {4, 1}, 0, 4, 1e-3}}, {10, {1, 14}});
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("backbone layer 14"), std::string::npos) << w.status().ToString();
}

TEST(Calibration, JsonRoundTrips) {
  const Calibration c = H100Like();
  auto back = plan::ParseCalibration(plan::CalibrationJson(c), "test");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->store_rows_per_page, 15U);
  EXPECT_DOUBLE_EQ(back->store_pages_per_s, c.store_pages_per_s);
  EXPECT_DOUBLE_EQ(back->zero_copy_rows_per_s, c.zero_copy_rows_per_s);
  EXPECT_EQ(back->gpu, "test");
}

TEST(Calibration, ANegativeRateIsRefusedByName) {
  std::string j = plan::CalibrationJson(H100Like());
  const std::string from = "\"pages_per_s\": 75000.0";
  ASSERT_NE(j.find(from), std::string::npos) << j;
  j.replace(j.find(from), from.size(), "\"pages_per_s\": -1");
  auto c = plan::ParseCalibration(j, "cal.json");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("cal.json: \"store.pages_per_s\""), std::string::npos) << c.status().ToString();
}

TEST(Calibration, MeasuresThisHostsDiskAndStore) {
  test::TempDir dir;
  auto st = test::MakeIngestedStore("deepseek-v4.1-flash", 0.0001);
  plan::CalibrateOptions o;
  o.threads = 2;
  o.seconds = 0.05;
  o.gather_bytes = 64ULL << 20;
  o.disk_file = dir.File("disk.bin");
  o.disk_file_bytes = 16ULL << 20;
  o.store = st->dir.File("store");
  st->version = {};
  st->store.reset();  // the calibration opens the store itself
  auto c = plan::CalibrateHost(o);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_GT(c->gather_rows_per_s, 0);
  EXPECT_GT(c->hash_lookups_per_s, 0);
  EXPECT_GT(c->dedupe_lookups_per_s, 0);
  EXPECT_GT(c->disk_iops, 0);
  EXPECT_GT(c->disk_qd1_latency_s, 0);
  EXPECT_GT(c->store_pages_per_s, 0);
  EXPECT_EQ(c->store_rows_per_page, 15U);
  EXPECT_EQ(std::filesystem::file_size(o.disk_file), o.disk_file_bytes);
}

TEST(CacheSim, ASetKeepsItsRereadRows) {
  memory::SetCacheSim cache(detail::kSetWays);
  // One set of 16 ways: 16 rows fill it; rows 0..7 are read again; 8 new rows then evict rows 8..15.
  for (std::uint64_t k = 0; k < 16; ++k) {
    EXPECT_FALSE(cache.Lookup(k));
    cache.Admit(k, 2);
  }
  for (std::uint64_t k = 0; k < 8; ++k) EXPECT_TRUE(cache.Lookup(k));
  for (std::uint64_t k = 100; k < 108; ++k) {
    EXPECT_FALSE(cache.Lookup(k));
    cache.Admit(k, 2);
  }
  for (std::uint64_t k = 0; k < 8; ++k) EXPECT_TRUE(cache.Lookup(k)) << k;
  int kept = 0;
  for (std::uint64_t k = 8; k < 16; ++k) kept += cache.Lookup(k) ? 1 : 0;
  EXPECT_EQ(kept, 0);
}

// A set cache far larger than the rows simulated (2^35 slots: 512 GiB of keys if held whole) costs what
// its rows do, and still keeps them.
TEST(CacheSim, AHugeSetCacheHoldsOnlyTheSetsItsRowsUse) {
  memory::SetCacheSim cache(std::uint64_t{1} << 35);
  EXPECT_EQ(cache.capacity(), std::uint64_t{1} << 35);
  for (std::uint64_t k = 0; k < 100000; ++k) {
    EXPECT_FALSE(cache.Lookup(k * 7919));
    cache.Admit(k * 7919, 2);
  }
  int hits = 0;
  for (std::uint64_t k = 0; k < 100000; ++k) hits += cache.Lookup(k * 7919) ? 1 : 0;
  EXPECT_EQ(hits, 100000);
}

TEST(CacheSim, AnEmptyPolicyCacheNeverHits) {
  memory::PolicyCacheSim cache(0, memory::RowCachePolicyOptions{}, 1, 4);
  cache.Admit(1, 7, 2);
  EXPECT_FALSE(cache.Lookup(1));
  EXPECT_EQ(cache.capacity(), 0U);
}

}  // namespace
}  // namespace engram
