// A Fenwick (binary indexed) tree over positions 0..n-1 (internal): point adds and prefix sums in
// O(log n). The trace analysis and the capacity planner count, with one, the distinct rows touched since a
// row's previous access (its LRU stack distance): 1 at each row's latest access. `Count` is the counter
// type (int32 where memory per position matters).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace engram::detail {

template <typename Count>
class Fenwick {
 public:
  explicit Fenwick(std::size_t n) : t_(n + 1, 0) {}
  void Add(std::size_t i, int v) {
    for (++i; i < t_.size(); i += i & (~i + 1)) t_[i] += static_cast<Count>(v);
  }
  // Sum over [0, i].
  [[nodiscard]] std::int64_t Prefix(std::size_t i) const {
    std::int64_t s = 0;
    for (++i; i > 0; i -= i & (~i + 1)) s += t_[i];
    return s;
  }

 private:
  std::vector<Count> t_;
};

}  // namespace engram::detail
