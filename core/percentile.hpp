// Internal: the p-quantile (0 <= p <= 1) of a sample by the nearest-rank rule on the sorted values; 0 for
// an empty sample. One definition for every tool and benchmark that reports p50/p95/p99.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

namespace engram::detail {

inline double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
}

}  // namespace engram::detail
