// CUDA registration of host memory for engram::memory::PinnedArena. Compiles without CUDA headers.
#pragma once

#include <memory>

#include "engram/memory/pinned_arena.hpp"
#include "engram/status.hpp"

namespace engram::gpu {

// A registrar that pins memory with cudaHostRegister(cudaHostRegisterPortable | cudaHostRegisterMapped),
// so that every device can copy from it and kernels can read it through its mapped device address.
// kUnavailable (with the driver's reason) when no GPU is usable. Register blocks while the driver pins.
Result<std::unique_ptr<memory::HostRegistrar>> MakeCudaHostRegistrar();

// Device address of registered host memory (for zero-copy kernels); kInvalidArgument if `host` is not
// registered.
Result<void*> MappedDevicePointer(void* host);

}  // namespace engram::gpu
