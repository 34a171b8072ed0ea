// bench_pin: how long pinning a host tier takes, by path, against cudaHostAlloc of the same bytes in the
// same run, and a 1 GiB host->device copy from each to show the memory really is pinned.
//
//   bench_pin [--gib 32] [--paths explicit,transparent,normal] [--grow-pool]
//
// --grow-pool lets the explicit path add huge pages to /proc/sys/vm/nr_hugepages (root); the bench puts
// the old value back at the end.
#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engram/gpu/host_memory.hpp"
#include "engram/memory/pinned_arena.hpp"

namespace {

using engram::memory::ArenaOptions;
using engram::memory::HugePages;
using engram::memory::PinnedArena;

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// GB/s of a 1 GiB host->device copy from `host` (best of 3).
double CopyRate(const void* host, void* dev, std::size_t bytes) {
  double best = 0;
  for (int i = 0; i < 3; ++i) {
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    cudaEventRecord(a);
    cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice);
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    best = std::max(best, static_cast<double>(bytes) / (ms * 1e6));
  }
  return best;
}

std::string ReadFirstLine(const char* path) {
  std::ifstream in(path);
  std::string s;
  std::getline(in, s);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  double gib = 32;
  std::string paths = "explicit,transparent,normal";
  bool grow = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--gib" && i + 1 < argc) {
      gib = std::atof(argv[++i]);
    } else if (a == "--paths" && i + 1 < argc) {
      paths = argv[++i];
    } else if (a == "--grow-pool") {
      grow = true;
    } else {
      std::fprintf(stderr, "usage: bench_pin [--gib 32] [--paths explicit,transparent,normal] [--grow-pool]\n");
      return 2;
    }
  }
  auto reg = engram::gpu::MakeCudaHostRegistrar();
  if (!reg.ok()) {
    std::printf("SKIP: no GPU: %s\n", reg.status().ToString().c_str());
    return 0;
  }
  const auto bytes = static_cast<std::size_t>(gib * 1073741824.0);
  const std::size_t copy_bytes = std::min<std::size_t>(bytes, 1ULL << 30);
  void* dev = nullptr;
  if (cudaMalloc(&dev, copy_bytes) != cudaSuccess) return 1;
  const std::string old_pool = ReadFirstLine("/proc/sys/vm/nr_hugepages");
  std::printf("bench_pin: %.1f GiB; hugetlb pool before: %s pages; THP: %s\n", gib, old_pool.c_str(),
              ReadFirstLine("/sys/kernel/mm/transparent_hugepage/enabled").c_str());

  // Baseline: cudaHostAlloc of the same bytes, touched.
  const double t0 = Now();
  void* host = nullptr;
  if (cudaHostAlloc(&host, bytes, cudaHostAllocPortable | cudaHostAllocMapped) != cudaSuccess) {
    std::printf("cudaHostAlloc of %zu bytes failed\n", bytes);
    return 1;
  }
  const double alloc_s = Now() - t0;
  std::memset(host, 1, copy_bytes);
  const double base_rate = CopyRate(host, dev, copy_bytes);
  const double t1 = Now();
  cudaFreeHost(host);
  const double free_s = Now() - t1;
  std::printf("%-34s %8.2f s to pin (free %.2f s)  H2D %5.1f GB/s\n", "baseline cudaHostAlloc", alloc_s, free_s,
              base_rate);

  std::stringstream ss(paths);
  std::string p;
  while (std::getline(ss, p, ',')) {
    ArenaOptions o;
    o.registrar = reg->get();
    o.huge_pages = p == "explicit"      ? HugePages::kExplicit
                   : p == "transparent" ? HugePages::kTransparent
                                        : HugePages::kNone;
    o.reserve = grow ? engram::memory::HugePageReserve::kGrowPool : engram::memory::HugePageReserve::kUsePool;
    o.name = p;
    const double s0 = Now();
    auto arena = PinnedArena::Create(bytes, o);
    const double total = Now() - s0;
    if (!arena.ok()) {
      std::printf("%-34s unavailable: %s\n", p.c_str(), arena.status().ToString().c_str());
      continue;
    }
    std::memset((*arena)->data(), 1, copy_bytes);
    const double rate = CopyRate((*arena)->data(), dev, copy_bytes);
    const engram::memory::ArenaReport r = (*arena)->report();  // a copy: the arena goes before it is printed
    const double d0 = Now();
    arena->reset();
    const double release = Now() - d0;
    std::printf(
        "%-34s %8.2f s to pin (map %.2f + touch %.2f + register %.2f; release %.2f)  H2D %5.1f GB/s  "
        "%.1fx faster than cudaHostAlloc\n",
        (std::string("arena, ") + std::string(engram::memory::PagePathName(r.path))).c_str(), total, r.map_seconds,
        r.touch_seconds, r.register_seconds, release, rate, alloc_s / total);
    std::printf("    %s\n", engram::memory::DescribeArena(r).c_str());
  }
  if (grow) {
    std::ofstream out("/proc/sys/vm/nr_hugepages");
    out << old_pool << "\n";
  }
  cudaFree(dev);
  return 0;
}
