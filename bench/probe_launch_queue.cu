// probe_launch_queue: what a thread can still do while another thread is blocked in a kernel launch.
//
// The working set's hand-off has the engine's stream wait on a flag (cuStreamWaitValue32) that the
// prefetcher's worker sets later by enqueueing work on its own stream. An engine that enqueues more than a
// stream's launch queue holds behind such a wait blocks inside the launch until the flag is set. This
// measures, on the machine it runs on:
//   - the queue's depth (launches accepted behind an unresolved wait before a launch blocks);
//   - for each CUDA call the worker might make, whether it completes on another thread meanwhile, or
//     waits for the blocked launch (which would never return: a deadlock).
// Each probe runs in a child process (fork before any CUDA call in the parent), killed after 5 s if stuck.
//
// Usage: probe_launch_queue            (no options; prints one line per probe)
// Measured on the H100 (docs/gpu.md, "The prefetcher's worker creates no CUDA objects").
#include <cuda.h>
#include <cuda_runtime.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

#define CK(x)                                                     \
  do {                                                            \
    const cudaError_t e_ = (x);                                   \
    if (e_ != cudaSuccess) {                                      \
      std::printf("%s failed: %s\n", #x, cudaGetErrorString(e_)); \
      std::_Exit(2);                                              \
    }                                                             \
  } while (0)

__global__ void Nop(int* p) {
  if (p != nullptr && threadIdx.x == 1023) *p = 1;
}

using WaitFn = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);
using WriteFn = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);

template <typename Fn>
Fn Driver(const char* name) {
  void* p = nullptr;
  cudaDriverEntryPointQueryResult q{};
  CK(cudaGetDriverEntryPointByVersion(name, &p, 12000, cudaEnableDefault, &q));
  if (p == nullptr || q != cudaDriverEntryPointSuccess) {
    std::printf("the driver has no %s\n", name);
    std::_Exit(2);
  }
  return reinterpret_cast<Fn>(p);
}

// What a probe may use, made before the queue fills.
struct Resources {
  cudaStream_t stream = nullptr;
  void* pinned = nullptr;
  void* device = nullptr;
  cudaEvent_t event = nullptr;
};

// In a child: stream `a` waits on a flag; the main thread launches `n` loaded kernels behind it; after 1 s a
// second thread runs `probe` on its own stream, then sets the flag. Prints the launches queued before the
// probe and how long the probe took. Returns 0 if everything completed.
int Child(long n, const std::string& name, const std::function<void(Resources&)>& probe) {
  CK(cudaFree(nullptr));
  cudaFuncAttributes attr{};
  CK(cudaFuncGetAttributes(&attr, Nop));  // loaded now: no lazy loading inside the probe
  cudaStream_t a = nullptr;
  Resources r;
  CK(cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking));
  CK(cudaHostAlloc(&r.pinned, 4096, 0));
  CK(cudaMalloc(&r.device, 4096));
  CK(cudaEventCreateWithFlags(&r.event, cudaEventDisableTiming));
  unsigned* flag = nullptr;
  CK(cudaMalloc(&flag, 4));
  CK(cudaMemset(flag, 0, 4));
  CK(cudaDeviceSynchronize());
  const auto wait = Driver<WaitFn>("cuStreamWaitValue32");
  const auto write = Driver<WriteFn>("cuStreamWriteValue32");
  if (wait(reinterpret_cast<CUstream>(a), reinterpret_cast<CUdeviceptr>(flag), 1, CU_STREAM_WAIT_VALUE_EQ) !=
      CUDA_SUCCESS) {
    std::printf("cuStreamWaitValue32 failed\n");
    return 2;
  }
  std::atomic<long> launched{0};
  std::thread other([&] {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const long before = launched.load();
    const auto t0 = Clock::now();
    probe(r);
    const double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
    std::printf("%-36s completes while the launching thread is blocked (%.0f us; %ld launches queued)\n", name.c_str(),
                us, before);
    if (write(reinterpret_cast<CUstream>(r.stream), reinterpret_cast<CUdeviceptr>(flag), 1,
              CU_STREAM_WRITE_VALUE_DEFAULT) != CUDA_SUCCESS) {
      std::printf("cuStreamWriteValue32 failed\n");
      std::_Exit(2);
    }
  });
  for (long i = 0; i < n; ++i) {
    Nop<<<1, 32, 0, a>>>(nullptr);
    launched.fetch_add(1);
  }
  CK(cudaStreamSynchronize(a));
  other.join();
  return 0;
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  struct Probe {
    std::string name;
    std::function<void(Resources&)> fn;
  };
  const std::vector<Probe> probes = {
      {"cudaMemcpyAsync (pinned, 4 KiB)",
       [](Resources& r) { CK(cudaMemcpyAsync(r.device, r.pinned, 4096, cudaMemcpyHostToDevice, r.stream)); }},
      {"cudaMemsetAsync (4 KiB)", [](Resources& r) { CK(cudaMemsetAsync(r.device, 0, 4096, r.stream)); }},
      {"cudaLaunchKernel (a loaded kernel)", [](Resources& r) { Nop<<<1, 32, 0, r.stream>>>(nullptr); }},
      {"cudaEventRecord", [](Resources& r) { CK(cudaEventRecord(r.event, r.stream)); }},
      {"cudaEventSynchronize (completed)", [](Resources& r) { CK(cudaEventSynchronize(r.event)); }},
      {"cudaEventCreate",
       [](Resources&) {
         cudaEvent_t e = nullptr;
         CK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
       }},
      {"cudaStreamCreate",
       [](Resources&) {
         cudaStream_t x = nullptr;
         CK(cudaStreamCreateWithFlags(&x, cudaStreamNonBlocking));
       }},
      {"cudaMalloc (1 MiB)",
       [](Resources&) {
         void* p = nullptr;
         CK(cudaMalloc(&p, 1 << 20));
       }},
  };
  int failures = 0;
  for (const Probe& p : probes) {
    const pid_t pid = fork();
    if (pid == 0) {
      alarm(5);
      std::_Exit(Child(20000, p.name, p.fn));
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status)) {
      std::printf("%-36s WAITS for the blocked launch (killed after 5 s: a deadlock if the flag depended on it)\n",
                  p.name.c_str());
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      std::printf("%-36s probe failed (exit %d)\n", p.name.c_str(), WEXITSTATUS(status));
      ++failures;
    }
  }
  return failures == 0 ? 0 : 1;
}
