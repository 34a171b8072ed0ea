#include "engram/prefetch/dequant.hpp"

#include <array>
#include <bit>
#include <cmath>

namespace engram::prefetch {
namespace {

// E4M3 (bias 7, no infinities; S.1111.111 is NaN) as float, exactly.
constexpr std::array<float, 256> MakeTable() {
  std::array<float, 256> t{};
  for (unsigned c = 0; c < 256; ++c) {
    const unsigned e = (c >> 3) & 15U;
    const unsigned m = c & 7U;
    float v = 0;
    if (e == 0) {
      v = static_cast<float>(m) / 8.0F / 64.0F;  // m/8 x 2^-6
    } else {
      v = 1.0F + static_cast<float>(m) / 8.0F;
      for (unsigned i = 0; i < e; ++i) v *= 2.0F;
      v /= 128.0F;  // 2^(e - 7)
    }
    t[c] = (c & 0x80U) != 0 ? -v : v;
  }
  return t;
}
constexpr std::array<float, 256> kE4M3 = MakeTable();

std::uint16_t ToBf16(float f) noexcept {
  const auto u = std::bit_cast<std::uint32_t>(f);
  // Round to nearest even on the 16 bits dropped (inputs are never NaN here).
  return static_cast<std::uint16_t>((u + 0x7FFFU + ((u >> 16) & 1U)) >> 16);
}

}  // namespace

bool DequantizeRowE4M3(const std::byte* row, std::uint32_t dim, std::uint16_t* out, std::uint32_t* bad_index) noexcept {
  const auto* codes = reinterpret_cast<const std::uint8_t*>(row);
  const std::uint8_t* scales = codes + dim;
  for (std::uint32_t g = 0; g < dim / 32; ++g) {
    const std::uint8_t s = scales[g];
    if (s == 0xFF) {
      *bad_index = dim + g;
      return false;
    }
    // 2^(s - 127) is exact in float (2^-127 as a subnormal), and so is every product below: E4M3 has 4
    // significant bits, and the smallest result, 2^-9 x 2^-127, is above float's 2^-149.
    const float scale = std::ldexp(1.0F, static_cast<int>(s) - 127);
    for (std::uint32_t i = g * 32; i < g * 32 + 32; ++i) {
      const std::uint8_t c = codes[i];
      if ((c & 0x7FU) == 0x7FU) {
        *bad_index = i;
        return false;
      }
      out[i] = ToBf16(kE4M3[c] * scale);
    }
  }
  return true;
}

}  // namespace engram::prefetch
