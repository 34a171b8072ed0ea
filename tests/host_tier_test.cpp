// HostTier's row cache under concurrent readers and writers, and its configuration checks.
#include "engram/memory/host_tier.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

namespace engram::memory {
namespace {

// The bytes of (layer, row) in this test: every byte derived from the key, so a torn or misplaced row shows.
void RowBytes(int layer, std::int64_t row, std::byte* out, std::size_t n) {
  std::uint64_t x = (static_cast<std::uint64_t>(layer) << 40 | static_cast<std::uint64_t>(row)) * 0x9E3779B97F4A7C15ULL;
  for (std::size_t i = 0; i < n; ++i) {
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ULL;
    out[i] = static_cast<std::byte>(x >> 56);
  }
}

Layout Demo() {
  return *Layout::Preset("engram-demo");
}

TEST(HostTier, ConcurrentReadersAndWritersNeverSeeATornOrWrongRow) {
  const Layout layout = Demo();
  HostTierOptions o;
  o.cache_bytes = 2000ULL * layout.row_bytes();  // small: constant eviction
  o.cache_shards = 4;
  o.arena.huge_pages = HugePages::kNone;
  auto tier = HostTier::Create(layout, o);
  ASSERT_TRUE(tier.ok()) << tier.status().ToString();
  const std::size_t rb = layout.row_bytes();
  std::atomic<std::uint64_t> wrong{0}, hits{0};
  std::vector<std::thread> threads;
  threads.reserve(8);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::byte> got(rb), want(rb);
      std::uint64_t x = 12345 + static_cast<std::uint64_t>(t);
      for (int i = 0; i < 20000; ++i) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        const int layer = static_cast<int>((x >> 60) & 1U);
        const std::int64_t row = static_cast<std::int64_t>((x >> 33) % (i % 2 == 0 ? 500 : 20000));
        const int column = 0;
        RowBytes(layer, row, want.data(), rb);
        if ((*tier)->Get(layer, column, row, got.data())) {
          hits.fetch_add(1);
          if (got != want) wrong.fetch_add(1);
        } else {
          (*tier)->Admit(layer, column, row, want.data());
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0U);
  EXPECT_GT(hits.load(), 0U);
  const HostTierStats st = (*tier)->stats();
  EXPECT_LE(st.cached_rows, st.cache_rows);
  EXPECT_EQ(st.cache_hits + st.misses, 8U * 20000);
}

TEST(HostTier, AConfigurationOverTheBudgetIsRefusedBeforeAnythingIsMapped) {
  const Layout layout = Demo();
  HostTierOptions o;
  o.resident = ResidentRegions::kAll;
  auto tier = HostTier::Create(layout, o, /*max_bytes=*/1 << 20);
  ASSERT_FALSE(tier.ok());
  EXPECT_EQ(tier.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(tier.status().message().find("budget"), std::string::npos) << tier.status().ToString();
}

TEST(HostTier, BadRegionsAndAnEmptyTierAreRefused) {
  const Layout layout = Demo();
  HostTierOptions o;
  o.resident = ResidentRegions::kChosen;
  o.regions = {{0, layout.columns()}};
  EXPECT_EQ(HostTier::Create(layout, o).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(HostTier::Create(layout, HostTierOptions{}).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace engram::memory
