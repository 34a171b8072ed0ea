// A bit-exact reproduction of numpy's default_rng(seed).integers(low, high, size, dtype=int64)
// (numpy >= 1.17: SeedSequence -> PCG64 XSL-RR 128/64 -> Lemire's bounded integers), so that the
// multipliers of new Engram layouts can be derived without Python. Internal, not installed.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "engram/detail/uint128.hpp"
#include "engram/status.hpp"

namespace engram::detail {

// numpy.random.SeedSequence(entropy).generate_state(n_words, np.uint32) for a non-negative integer
// entropy and no spawn key.
std::vector<std::uint32_t> SeedSequenceGenerateState32(std::uint64_t entropy, std::size_t n_words);

// numpy.random.PCG64 (the generator behind default_rng).
class Pcg64 {
 public:
  // Seeds as numpy's PCG64(SeedSequence(seed)) does.
  explicit Pcg64(std::uint64_t seed);
  std::uint64_t NextU64() noexcept;

 private:
  detail::Uint128 state_ = 0;
  detail::Uint128 inc_ = 0;
};

// default_rng(seed).integers(low, high, size=count, dtype=np.int64), high exclusive.
Result<std::vector<std::int64_t>> NumpyIntegers(std::uint64_t seed, std::int64_t low, std::int64_t high,
                                                std::size_t count);

}  // namespace engram::detail
