// `engram calibrate`'s GPU measurements (engram/prefetch/planner.hpp): pinned host -> device copies (a
// fixed cost and a rate, fitted over sizes), a kernel gathering random rows from mapped pinned host memory
// (zero-copy) and from device memory, a kernel launch with an event, and pinning through CUDA. Compiles
// without CUDA headers.
#pragma once

#include "engram/prefetch/planner.hpp"
#include "engram/status.hpp"

namespace engram::gpu {

// Fills the GPU fields of `c` (and re-measures pinning with CUDA registration). kUnavailable without a GPU.
[[nodiscard]] Status CalibrateDevice(plan::Calibration& c, double seconds = 0.5);

}  // namespace engram::gpu
