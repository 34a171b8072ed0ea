// A counter that many threads add to without sharing a cache line (an implementation detail): each thread adds to one
// of kStripes padded atomics; reading sums them.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <thread>

namespace engram::detail {

class StripedCounter {
 public:
  void Add(std::uint64_t n = 1) noexcept { stripes_[Stripe()].v.fetch_add(n, std::memory_order_relaxed); }
  [[nodiscard]] std::uint64_t Sum() const noexcept {
    std::uint64_t s = 0;
    for (const auto& x : stripes_) s += x.v.load(std::memory_order_relaxed);
    return s;
  }

 private:
  static constexpr std::size_t kStripes = 32;
  static std::size_t Stripe() noexcept {
    thread_local const std::size_t stripe = std::hash<std::thread::id>{}(std::this_thread::get_id()) % kStripes;
    return stripe;
  }
  struct alignas(64) Padded {
    std::atomic<std::uint64_t> v{0};
  };
  std::array<Padded, kStripes> stripes_{};
};

}  // namespace engram::detail
