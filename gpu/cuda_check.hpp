// CUDA error handling for gpu/ (internal). fmt 9's headers do not compile under nvcc in C++20 mode, so
// .cu files build their messages with std::string.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "engram/status.hpp"

namespace engram::gpu::detail {

inline Status CudaStatus(cudaError_t err, const char* expr, const char* file, int line) {
  if (err == cudaSuccess) return Status::Ok();
  const StatusCode code =
      (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver || err == cudaErrorInitializationError ||
       err == cudaErrorSystemDriverMismatch)
          ? StatusCode::kUnavailable
          : (err == cudaErrorMemoryAllocation ? StatusCode::kResourceExhausted : StatusCode::kInternal);
  return {code, std::string(expr) + " failed: " + cudaGetErrorString(err) + " (" + cudaGetErrorName(err) + ") at " +
                    file + ":" + std::to_string(line)};
}

}  // namespace engram::gpu::detail

// Returns a Status naming the call and CUDA's error if `expr` (a cudaError_t) is not cudaSuccess.
#define ENGRAM_CUDA_RETURN(expr) \
  ENGRAM_RETURN_IF_ERROR(::engram::gpu::detail::CudaStatus((expr), #expr, __FILE__, __LINE__))
