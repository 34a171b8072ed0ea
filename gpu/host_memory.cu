#include "cuda_check.hpp"
#include "engram/gpu/device.hpp"
#include "engram/gpu/host_memory.hpp"

namespace engram::gpu {
namespace {

class CudaHostRegistrar final : public memory::HostRegistrar {
 public:
  [[nodiscard]] std::string_view name() const noexcept override { return "CUDA (cudaHostRegister)"; }
  [[nodiscard]] Status Register(void* p, std::size_t bytes) override {
    ENGRAM_CUDA_RETURN(cudaHostRegister(p, bytes, cudaHostRegisterPortable | cudaHostRegisterMapped));
    return Status::Ok();
  }
  [[nodiscard]] Status Unregister(void* p) override {
    ENGRAM_CUDA_RETURN(cudaHostUnregister(p));
    return Status::Ok();
  }
};

}  // namespace

Result<std::unique_ptr<memory::HostRegistrar>> MakeCudaHostRegistrar() {
  ENGRAM_ASSIGN_OR_RETURN(DeviceInfo info, CurrentDevice());
  (void)info;
  return std::unique_ptr<memory::HostRegistrar>(new CudaHostRegistrar());
}

Result<void*> MappedDevicePointer(void* host) {
  // Ask first, so that unregistered memory is an answer, not a CUDA API error.
  cudaPointerAttributes attr{};
  ENGRAM_CUDA_RETURN(cudaPointerGetAttributes(&attr, host));
  if (attr.type != cudaMemoryTypeHost) {
    return Status::InvalidArgument("MappedDevicePointer: the memory is not registered with CUDA (pinned)");
  }
  void* dev = nullptr;
  const cudaError_t err = cudaHostGetDevicePointer(&dev, host, 0);
  if (err != cudaSuccess) {
    return Status::InvalidArgument(std::string("cudaHostGetDevicePointer: ") + cudaGetErrorString(err) +
                                   " (is the memory registered?)");
  }
  return dev;
}

}  // namespace engram::gpu
