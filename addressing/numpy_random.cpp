#include "numpy_random.hpp"

#include <fmt/format.h>

namespace engram::detail {
namespace {

// SeedSequence constants (numpy/random/bit_generator.pyx).
constexpr std::uint32_t kInitA = 0x43b0d7e5U;
constexpr std::uint32_t kMultA = 0x931e8875U;
constexpr std::uint32_t kInitB = 0x8b51f9ddU;
constexpr std::uint32_t kMultB = 0x58f38dedU;
constexpr std::uint32_t kMixMultL = 0xca01f9ddU;
constexpr std::uint32_t kMixMultR = 0x4973f715U;
constexpr int kXShift = 16;
constexpr std::size_t kPoolSize = 4;

std::uint32_t HashMix(std::uint32_t value, std::uint32_t& hash_const) {
  value ^= hash_const;
  hash_const *= kMultA;
  value *= hash_const;
  value ^= value >> kXShift;
  return value;
}

std::uint32_t Mix(std::uint32_t x, std::uint32_t y) {
  std::uint32_t result = kMixMultL * x - kMixMultR * y;
  result ^= result >> kXShift;
  return result;
}

std::array<std::uint32_t, kPoolSize> SeedSequencePool(std::uint64_t entropy) {
  // _coerce_to_uint32_array: little-endian 32-bit words, [0] for zero.
  std::vector<std::uint32_t> words;
  if (entropy == 0) words.push_back(0);
  for (std::uint64_t n = entropy; n > 0; n >>= 32) words.push_back(static_cast<std::uint32_t>(n));

  std::array<std::uint32_t, kPoolSize> pool{};
  std::uint32_t hash_const = kInitA;
  for (std::size_t i = 0; i < kPoolSize; ++i) {
    pool[i] = HashMix(i < words.size() ? words[i] : 0U, hash_const);
  }
  for (std::size_t src = 0; src < kPoolSize; ++src) {
    for (std::size_t dst = 0; dst < kPoolSize; ++dst) {
      if (src != dst) pool[dst] = Mix(pool[dst], HashMix(pool[src], hash_const));
    }
  }
  for (std::size_t src = kPoolSize; src < words.size(); ++src) {
    for (std::size_t dst = 0; dst < kPoolSize; ++dst) pool[dst] = Mix(pool[dst], HashMix(words[src], hash_const));
  }
  return pool;
}

constexpr Uint128 kPcgMultiplier =
    (static_cast<Uint128>(2549297995355413924ULL) << 64) | 4865540595714422341ULL;  // PCG_DEFAULT_MULTIPLIER_128

}  // namespace

std::vector<std::uint32_t> SeedSequenceGenerateState32(std::uint64_t entropy, std::size_t n_words) {
  const auto pool = SeedSequencePool(entropy);
  std::vector<std::uint32_t> state(n_words);
  std::uint32_t hash_const = kInitB;
  for (std::size_t i = 0; i < n_words; ++i) {
    std::uint32_t v = pool[i % kPoolSize];
    v ^= hash_const;
    hash_const *= kMultB;
    v *= hash_const;
    v ^= v >> kXShift;
    state[i] = v;
  }
  return state;
}

Pcg64::Pcg64(std::uint64_t seed) {
  // generate_state(4, np.uint64) is generate_state(8, np.uint32) viewed as little-endian uint64.
  const auto w = SeedSequenceGenerateState32(seed, 8);
  std::uint64_t s[4];
  for (int i = 0; i < 4; ++i)
    s[i] = static_cast<std::uint64_t>(w[2 * i]) | (static_cast<std::uint64_t>(w[2 * i + 1]) << 32);
  const Uint128 init_state = (static_cast<Uint128>(s[0]) << 64) | s[1];
  const Uint128 init_seq = (static_cast<Uint128>(s[2]) << 64) | s[3];
  // pcg_setseq_128_srandom_r
  state_ = 0;
  inc_ = (init_seq << 1) | 1U;
  state_ = state_ * kPcgMultiplier + inc_;
  state_ += init_state;
  state_ = state_ * kPcgMultiplier + inc_;
}

std::uint64_t Pcg64::NextU64() noexcept {
  state_ = state_ * kPcgMultiplier + inc_;  // step, then output (XSL-RR)
  const auto hi = static_cast<std::uint64_t>(state_ >> 64);
  const auto lo = static_cast<std::uint64_t>(state_);
  const unsigned rot = static_cast<unsigned>(state_ >> 122);
  const std::uint64_t x = hi ^ lo;
  return (x >> rot) | (x << ((64U - rot) & 63U));
}

Result<std::vector<std::int64_t>> NumpyIntegers(std::uint64_t seed, std::int64_t low, std::int64_t high,
                                                std::size_t count) {
  if (high <= low) return Status::InvalidArgument(fmt::format("integers: high {} must exceed low {}", high, low));
  Pcg64 rng(seed);
  const std::uint64_t range = static_cast<std::uint64_t>(high) - static_cast<std::uint64_t>(low) - 1U;
  std::vector<std::int64_t> out(count);
  if (range == 0) {
    for (auto& v : out) v = low;
    return out;
  }
  if (range <= 0xFFFFFFFFULL) {
    // numpy draws 32-bit values (two per 64-bit output, low half first) for such ranges; not needed by
    // the reference layouts and not reproduced here.
    return Status::InvalidArgument(
        fmt::format("integers: range {} fits 32 bits; only ranges above 2^32 are reproduced", range + 1));
  }
  // bounded_lemire_uint64
  const std::uint64_t range_excl = range + 1U;
  for (auto& v : out) {
    Uint128 m = static_cast<Uint128>(rng.NextU64()) * range_excl;
    auto leftover = static_cast<std::uint64_t>(m);
    if (leftover < range_excl) {
      const std::uint64_t threshold = (UINT64_MAX - range) % range_excl;
      while (leftover < threshold) {
        m = static_cast<Uint128>(rng.NextU64()) * range_excl;
        leftover = static_cast<std::uint64_t>(m);
      }
    }
    v = low + static_cast<std::int64_t>(m >> 64);
  }
  return out;
}

}  // namespace engram::detail
