// GPU presence and properties. Compiles without CUDA headers: streams are passed as CUstream_st*,
// which is what cudaStream_t is.
#pragma once

#include <cstddef>
#include <string>

#include "engram/status.hpp"

struct CUstream_st;

namespace engram::gpu {

// A CUDA stream (cudaStream_t). nullptr is the legacy default stream; engram never picks one itself.
using Stream = CUstream_st*;

struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int compute_major = 0;
  int compute_minor = 0;
  int multiprocessors = 0;
  std::size_t total_memory = 0;
  int driver_version = 0;   // e.g. 13000
  int runtime_version = 0;  // the CUDA runtime engram was built with
};

// The current device's properties. kUnavailable, with the driver's reason, when there is no usable
// GPU (no device, no driver, or a driver older than the runtime). Blocks while the driver initialises.
Result<DeviceInfo> CurrentDevice();

}  // namespace engram::gpu
