// The compiler's 128-bit unsigned integer (GCC, Clang and nvcc host code), named once so that
// -Wpedantic stays on everywhere else. Internal.
#pragma once

namespace engram::detail {
__extension__ typedef unsigned __int128 Uint128;  // NOLINT(modernize-use-using): __extension__ needs typedef
}  // namespace engram::detail

namespace engram::detail {
__extension__ typedef __int128 Int128;  // NOLINT(modernize-use-using)
}  // namespace engram::detail
