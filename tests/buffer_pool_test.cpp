// BufferPool: hard budget, alignment, move-only handles, waiting and timeouts, with real threads.
#include "engram/memory/buffer_pool.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

namespace engram::memory {
namespace {

using std::chrono::milliseconds;

std::unique_ptr<BufferPool> MakePool(std::uint64_t budget, std::uint64_t align = 4096) {
  BufferPoolOptions o;
  o.budget_bytes = budget;
  o.alignment = align;
  o.name = "test";
  auto p = BufferPool::Create(o);
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  return std::move(p).value();
}

TEST(BufferPool, BuffersAreAlignedAndDisjoint) {
  auto pool = MakePool(64 * 1024);
  auto a = pool->TryAcquire(100);
  auto b = pool->TryAcquire(5000);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a->data()) % 4096, 0U);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b->data()) % 4096, 0U);
  EXPECT_EQ(a->size(), 100U);
  EXPECT_GE(b->data(), a->data() + 4096);
  EXPECT_EQ(pool->stats().in_use_bytes, 3U * 4096);
}

TEST(BufferPool, MoreThanTheBudgetIsRefusedAtOnce) {
  auto pool = MakePool(16 * 1024);
  auto r = pool->Acquire(16 * 1024 + 1, milliseconds(10'000));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("budget 16384"), std::string::npos) << r.status().ToString();
  EXPECT_EQ(pool->stats().over_budget, 1U);
  EXPECT_EQ(pool->stats().waits, 0U);
}

TEST(BufferPool, TryAcquireSaysBusyWhenTheBudgetIsInUse) {
  auto pool = MakePool(8192);
  auto a = pool->TryAcquire(8192);
  ASSERT_TRUE(a.ok());
  auto b = pool->TryAcquire(1);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(b.status().message().find("busy"), std::string::npos);
  a->reset();
  EXPECT_TRUE(pool->TryAcquire(8192).ok());
}

TEST(BufferPool, ReleasedRangesCoalesce) {
  auto pool = MakePool(4 * 4096);
  std::vector<PooledBuffer> bufs;
  bufs.reserve(4);
  for (int i = 0; i < 4; ++i) bufs.push_back(std::move(pool->TryAcquire(4096)).value());
  bufs[1].reset();
  bufs[2].reset();
  EXPECT_TRUE(pool->TryAcquire(2 * 4096).ok());  // the two freed neighbours make one range
  bufs.clear();
  EXPECT_TRUE(pool->TryAcquire(4 * 4096).ok());
  EXPECT_EQ(pool->stats().in_use_bytes, 0U);
  EXPECT_EQ(pool->stats().peak_bytes, 4U * 4096);
}

TEST(BufferPool, MovingAHandleTransfersTheBytesOnce) {
  auto pool = MakePool(4096);
  PooledBuffer a = std::move(pool->TryAcquire(4096)).value();
  PooledBuffer b = std::move(a);
  EXPECT_FALSE(a.valid());  // NOLINT(bugprone-use-after-move): the moved-from state is the contract
  EXPECT_TRUE(b.valid());
  EXPECT_FALSE(pool->TryAcquire(1).ok());
  b = PooledBuffer();
  EXPECT_TRUE(pool->TryAcquire(4096).ok());
}

TEST(BufferPool, AcquireWaitsForARelease) {
  auto pool = MakePool(4096);
  auto held = std::make_unique<PooledBuffer>(std::move(pool->TryAcquire(4096)).value());
  std::thread releaser([&] {
    std::this_thread::sleep_for(milliseconds(50));
    held.reset();
  });
  auto r = pool->Acquire(4096, milliseconds(10'000));
  releaser.join();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(pool->stats().waits, 1U);
  EXPECT_GT(pool->stats().waited_seconds, 0.0);
}

TEST(BufferPool, AcquireTimesOutWithDeadlineExceeded) {
  auto pool = MakePool(4096);
  auto held = pool->TryAcquire(4096);
  auto r = pool->Acquire(4096, milliseconds(20));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(pool->stats().timeouts, 1U);
}

TEST(BufferPool, ManyThreadsNeverExceedTheBudget) {
  auto pool = MakePool(10 * 4096);
  std::vector<std::thread> threads;
  threads.reserve(8);
  std::atomic<int> failures{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 300; ++i) {
        auto b = pool->Acquire(static_cast<std::uint64_t>(1 + (t * 7 + i) % 3) * 4096, milliseconds(10'000));
        if (!b.ok()) {
          failures.fetch_add(1);
          continue;
        }
        std::memset(b->data(), t, b->size());
        for (std::uint64_t k = 0; k < b->size(); ++k) {
          if (b->data()[k] != static_cast<std::byte>(t)) failures.fetch_add(1);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_LE(pool->stats().peak_bytes, 10U * 4096);
  EXPECT_EQ(pool->stats().in_use_bytes, 0U);
  EXPECT_EQ(pool->stats().acquired, 8U * 300);
}

TEST(BufferPool, TakesItsBytesFromAnArenaOnce) {
  ArenaOptions ao;
  ao.huge_pages = HugePages::kNone;
  auto arena = PinnedArena::Create(1 << 20, ao);
  ASSERT_TRUE(arena.ok());
  BufferPoolOptions o;
  o.budget_bytes = 256 * 1024;
  auto pool = BufferPool::Create(o, arena->get());
  ASSERT_TRUE(pool.ok());
  EXPECT_EQ((*arena)->available(), (1U << 20) - 256 * 1024);
  auto b = (*pool)->TryAcquire(1000);
  ASSERT_TRUE(b.ok());
  EXPECT_GE(b->data(), (*arena)->data());
  EXPECT_LT(b->data(), (*arena)->data() + (1 << 20));
  o.budget_bytes = 1 << 20;  // more than the arena has left
  auto too_big = BufferPool::Create(o, arena->get());
  ASSERT_FALSE(too_big.ok());
  EXPECT_EQ(too_big.status().code(), StatusCode::kResourceExhausted);
}

TEST(BufferPool, BadOptionsAreRefused) {
  BufferPoolOptions o;
  o.alignment = 3000;
  EXPECT_EQ(BufferPool::Create(o).status().code(), StatusCode::kInvalidArgument);
  o.alignment = 4096;
  o.budget_bytes = 0;
  EXPECT_EQ(BufferPool::Create(o).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace engram::memory
