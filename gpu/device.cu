#include "cuda_check.hpp"
#include "engram/gpu/device.hpp"

namespace engram::gpu {

Result<DeviceInfo> CurrentDevice() {
  DeviceInfo info;
  ENGRAM_CUDA_RETURN(cudaRuntimeGetVersion(&info.runtime_version));
  ENGRAM_CUDA_RETURN(cudaDriverGetVersion(&info.driver_version));
  if (info.driver_version == 0) return Status::Unavailable("no CUDA driver is installed");
  int count = 0;
  ENGRAM_CUDA_RETURN(cudaGetDeviceCount(&count));
  if (count == 0) return Status::Unavailable("the CUDA driver reports no device");
  ENGRAM_CUDA_RETURN(cudaGetDevice(&info.ordinal));
  cudaDeviceProp prop{};
  ENGRAM_CUDA_RETURN(cudaGetDeviceProperties(&prop, info.ordinal));
  info.name = prop.name;
  info.compute_major = prop.major;
  info.compute_minor = prop.minor;
  info.multiprocessors = prop.multiProcessorCount;
  info.total_memory = prop.totalGlobalMem;
  return info;
}

}  // namespace engram::gpu
