// FP8 rows to BF16: value = E4M3(code) x 2^(E8M0(scale) - 127), rounded to nearest even. Each group of 32
// codes shares one scale. An E4M3 NaN code (0x7F, 0xFF) or an E8M0 NaN scale (0xFF) is invalid; a result
// beyond BF16's range becomes +-infinity (only scales above 2^118 can do that).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "engram/status.hpp"

namespace engram::prefetch {

// Dequantizes one row of `dim` codes followed by dim/32 scales (dim a multiple of 32) into dim BF16 values
// (as uint16 bit patterns). Returns false (and leaves `out` unspecified) if a code or scale is invalid;
// *bad_index is then the byte offset within the row of the first invalid byte.
bool DequantizeRowE4M3(const std::byte* row, std::uint32_t dim, std::uint16_t* out, std::uint32_t* bad_index) noexcept;

}  // namespace engram::prefetch
