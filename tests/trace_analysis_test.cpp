// Trace analysis and the row cache policy on slices of the real Brown trace, checked against
// independent, literal simulations.
#include "engram/memory/trace_analysis.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <list>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

#include "engram/hasher.hpp"
#include "engram/memory/row_cache_policy.hpp"
#include "test_util.hpp"

namespace engram::memory {
namespace {

std::vector<std::int32_t> Slice(std::size_t begin, std::size_t n) {
  const auto& all = test::BrownCompressed();
  return {all.begin() + static_cast<std::ptrdiff_t>(begin), all.begin() + static_cast<std::ptrdiff_t>(begin + n)};
}

// The lookup stream, as the analysis defines it: token-major, then layer, then column.
std::vector<std::uint64_t> Lookups(const Layout& layout, const std::vector<std::int32_t>& ids) {
  const auto cols = static_cast<std::size_t>(layout.columns());
  std::vector<std::vector<std::int64_t>> rows(static_cast<std::size_t>(layout.num_layers()));
  for (int l = 0; l < layout.num_layers(); ++l) rows[static_cast<std::size_t>(l)] = test::ReferenceRows(layout, l, ids);
  std::vector<std::uint64_t> out;
  for (std::size_t t = 0; t < ids.size(); ++t) {
    for (std::size_t l = 0; l < rows.size(); ++l) {
      for (std::size_t c = 0; c < cols; ++c) {
        out.push_back((static_cast<std::uint64_t>(l) << 40) | static_cast<std::uint64_t>(rows[l][t * cols + c]));
      }
    }
  }
  return out;
}

std::uint64_t LiteralLruHits(const std::vector<std::uint64_t>& s, std::size_t cap) {
  std::list<std::uint64_t> order;
  std::unordered_map<std::uint64_t, std::list<std::uint64_t>::iterator> where;
  std::uint64_t hits = 0;
  for (auto k : s) {
    auto it = where.find(k);
    if (it != where.end()) {
      ++hits;
      order.erase(it->second);
    } else if (order.size() == cap) {
      where.erase(order.back());
      order.pop_back();
    }
    order.push_front(k);
    where[k] = order.begin();
  }
  return hits;
}

// Belady's MIN with bypass, by scanning the future (quadratic; tiny inputs only).
std::uint64_t LiteralOptimalHits(const std::vector<std::uint64_t>& s, std::size_t cap) {
  std::set<std::uint64_t> cache;
  std::uint64_t hits = 0;
  auto next_use = [&](std::uint64_t k, std::size_t from) {
    for (std::size_t j = from; j < s.size(); ++j) {
      if (s[j] == k) return j;
    }
    return s.size();
  };
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (cache.count(s[i]) != 0) {
      ++hits;
      continue;
    }
    const std::size_t mine = next_use(s[i], i + 1);
    if (mine == s.size()) continue;
    if (cache.size() < cap) {
      cache.insert(s[i]);
      continue;
    }
    std::uint64_t worst = 0;
    std::size_t worst_use = 0;
    for (auto k : cache) {
      const std::size_t u = next_use(k, i + 1);
      if (u >= worst_use) {
        worst_use = u;
        worst = k;
      }
    }
    if (worst_use > mine) {
      cache.erase(worst);
      cache.insert(s[i]);
    }
  }
  return hits;
}

TEST(TraceAnalysis, LruAndOptimalMatchLiteralSimulations) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto layout = Layout::Preset("engram-demo");
  ASSERT_TRUE(layout.ok());
  const auto ids = Slice(5000, 120);
  TraceAnalysisOptions o;
  o.fractions = {0.01, 0.05, 0.2, 0.5};
  auto r = AnalyzeTrace(*layout, ids, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const auto s = Lookups(*layout, ids);
  ASSERT_EQ(r->lookups, s.size());
  EXPECT_EQ(r->distinct, std::set<std::uint64_t>(s.begin(), s.end()).size());
  for (const auto& c : r->caches) {
    const double n = static_cast<double>(s.size());
    EXPECT_DOUBLE_EQ(c.lru, static_cast<double>(LiteralLruHits(s, c.rows)) / n) << c.fraction;
    EXPECT_DOUBLE_EQ(c.optimal, static_cast<double>(LiteralOptimalHits(s, c.rows)) / n) << c.fraction;
  }
}

TEST(TraceAnalysis, TheLruPolicyDrivenAsTheCacheDrivesItEqualsTheExactLruColumn) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto layout = Layout::Preset("deepseek-v4.1-flash");
  ASSERT_TRUE(layout.ok());
  TraceAnalysisOptions o;
  o.policy.kind = RowCachePolicyKind::kLru;
  auto r = AnalyzeTrace(*layout, Slice(0, 20000), o);
  ASSERT_TRUE(r.ok());
  for (const auto& c : r->caches) EXPECT_DOUBLE_EQ(c.policy, c.lru) << c.fraction;
}

TEST(TraceAnalysis, OptimalBoundsEveryPolicyAndTheCompulsoryMissesBoundOptimal) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto layout = Layout::Preset("deepseek-v4.1-flash");
  ASSERT_TRUE(layout.ok());
  auto r = AnalyzeTrace(*layout, Slice(100000, 30000));
  ASSERT_TRUE(r.ok());
  const double max_hit = 1.0 - static_cast<double>(r->distinct) / static_cast<double>(r->lookups);
  double prev = 0;
  for (const auto& c : r->caches) {
    EXPECT_LE(c.lru, c.optimal);
    EXPECT_LE(c.policy, c.optimal);
    EXPECT_LE(c.device, c.optimal);
    EXPECT_LE(c.optimal, max_hit + 1e-12);
    EXPECT_GE(c.optimal, prev);
    prev = c.optimal;
  }
}

// 60,000 tokens of the real trace at caches of 1% and 5%, analysed once for the tests that read it.
const Result<TraceAnalysis>& RealTextAtOneAndFivePercent() {
  static const Result<TraceAnalysis> r = [] {
    TraceAnalysisOptions o;
    o.fractions = {0.01, 0.05};
    return AnalyzeTrace(*Layout::Preset("deepseek-v4.1-flash"), Slice(0, 60000), o);
  }();
  return r;
}

TEST(TraceAnalysis, ThePolicyBeatsLruClearlyAtOneAndFivePercentOnRealText) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  const auto& r = RealTextAtOneAndFivePercent();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  for (const auto& c : r->caches) {
    EXPECT_GT(c.policy, 1.15 * c.lru) << c.fraction << ": policy " << c.policy << ", LRU " << c.lru;
  }
}

TEST(TraceAnalysis, TheDeviceCacheBeatsLruAtOneAndFivePercentOnRealText) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  const auto& r = RealTextAtOneAndFivePercent();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  for (const auto& c : r->caches) {
    EXPECT_GT(c.device, 1.05 * c.lru) << c.fraction << ": device " << c.device << ", LRU " << c.lru;
  }
}

TEST(TraceAnalysis, APriorFromOtherTextRaisesTheHitRate) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto layout = Layout::Preset("deepseek-v4.1-flash");
  ASSERT_TRUE(layout.ok());
  const auto train = Slice(0, 100000);
  const auto test_ids = Slice(100000, 40000);
  auto prior = RowPrior::Build(*layout, train);
  ASSERT_TRUE(prior.ok());
  EXPECT_GT((*prior)->size(), 0U);
  TraceAnalysisOptions o;
  o.fractions = {0.05};
  auto without = AnalyzeTrace(*layout, test_ids, o);
  o.policy.prior = *prior;
  auto with = AnalyzeTrace(*layout, test_ids, o);
  ASSERT_TRUE(without.ok() && with.ok());
  EXPECT_GT(with->caches[0].policy, without->caches[0].policy);
  EXPECT_DOUBLE_EQ(with->caches[0].optimal, without->caches[0].optimal);
}

TEST(TraceAnalysis, JsonHasTheStableCachesInterface) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto layout = Layout::Preset("deepseek-v4.1-flash");
  ASSERT_TRUE(layout.ok());
  auto r = AnalyzeTrace(*layout, Slice(0, 5000));
  ASSERT_TRUE(r.ok());
  const auto j = nlohmann::json::parse(TraceAnalysisJson(*r));
  ASSERT_TRUE(j.contains("caches"));
  const std::vector<double> fractions = {0.001, 0.01, 0.05, 0.1, 0.25};
  ASSERT_EQ(j["caches"].size(), fractions.size());
  for (std::size_t i = 0; i < fractions.size(); ++i) {
    const auto& c = j["caches"][i];
    EXPECT_DOUBLE_EQ(c["fraction"].get<double>(), fractions[i]);
    EXPECT_EQ(c["rows"].get<std::uint64_t>(),
              static_cast<std::uint64_t>(fractions[i] * static_cast<double>(j["distinct_rows"].get<std::uint64_t>())));
    for (const char* k : {"lru", "policy", "optimal", "device"}) {
      EXPECT_GE(c[k].get<double>(), 0.0);
      EXPECT_LE(c[k].get<double>(), 1.0);
    }
  }
  EXPECT_EQ(j["regions"].size(), static_cast<std::size_t>(layout->num_layers() * layout->columns()));
}

TEST(TraceAnalysis, BadInputIsRefused) {
  auto layout = Layout::Preset("engram-demo");
  ASSERT_TRUE(layout.ok());
  std::vector<std::int32_t> ids = {1, 2, static_cast<std::int32_t>(layout->compressed_vocab_size())};
  EXPECT_FALSE(AnalyzeTrace(*layout, ids).ok());
  TraceAnalysisOptions o;
  o.fractions = {0.0};
  EXPECT_EQ(AnalyzeTrace(*layout, std::vector<std::int32_t>{1, 2, 3}, o).status().code(), StatusCode::kInvalidArgument);
}

// A row cache's bookkeeping around a RowCachePolicy (the key -> slot map the host tier keeps), checking
// on every admission that the slot is inside the capacity and that no more rows than slots are held.
class DrivenPolicy {
 public:
  DrivenPolicy(std::uint32_t capacity, const RowCachePolicyOptions& options)
      : policy_(capacity, options), key_in_(capacity, UINT64_MAX) {}
  // Reads `key`; true on a hit.
  bool Read(std::uint64_t key, int order) {
    auto it = slot_of_.find(key);
    if (it != slot_of_.end()) {
      policy_.OnHit(it->second);
      return true;
    }
    const auto a = policy_.OnMiss(key, order);
    if (!a.admit) return false;
    EXPECT_LT(a.slot, key_in_.size());
    if (a.slot >= key_in_.size()) return false;
    if (key_in_[a.slot] != UINT64_MAX) slot_of_.erase(key_in_[a.slot]);
    key_in_[a.slot] = key;
    slot_of_[key] = a.slot;
    EXPECT_LE(slot_of_.size(), key_in_.size());
    return false;
  }

 private:
  RowCachePolicy policy_;
  std::unordered_map<std::uint64_t, std::uint32_t> slot_of_;
  std::vector<std::uint64_t> key_in_;
};

TEST(RowCachePolicy, SlotsStayInsideTheCapacity) {
  for (auto kind : {RowCachePolicyKind::kLru, RowCachePolicyKind::kAdaptiveFrequency}) {
    RowCachePolicyOptions o;
    o.kind = kind;
    DrivenPolicy p(97, o);
    std::uint64_t x = 1;
    for (int i = 0; i < 200000 && !HasFailure(); ++i) {
      x = x * 6364136223846793005ULL + 1442695040888963407ULL;
      const std::uint64_t key = (x >> 33) % (i % 3 == 0 ? 50 : 5000);  // a hot set and a long tail
      p.Read(key, 2 + static_cast<int>(key % 3));
    }
  }
}

TEST(RowCachePolicy, RowsReadAgainSurviveAFloodOfOneTimeRows) {
  DrivenPolicy p(100, RowCachePolicyOptions{});
  for (int rep = 0; rep < 3; ++rep) {
    for (std::uint64_t k = 0; k < 5; ++k) p.Read(k, 2);  // hot rows, read in a burst
  }
  for (std::uint64_t k = 1000; k < 11000; ++k) p.Read(k, 2);  // 100x the capacity of rows read once
  int kept = 0;
  for (std::uint64_t k = 0; k < 5; ++k) kept += p.Read(k, 2) ? 1 : 0;
  EXPECT_EQ(kept, 5);
}

}  // namespace
}  // namespace engram::memory
