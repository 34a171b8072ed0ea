// PinnedArena: one large block of host memory for the host tier and staging, mapped on the largest pages
// the machine offers, touched in parallel, and optionally registered with a GPU runtime (pinned) so that
// copies and zero-copy kernels can reach it.
//
// Page paths, tried in order under HugePages::kAuto (each step down is logged and reported, never silent):
//   1. explicit huge pages: mmap(MAP_HUGETLB) of 2 MiB pages from the kernel's hugetlb pool
//      (/proc/sys/vm/nr_hugepages); with ArenaOptions::reserve = kGrowPool the pool is grown by the
//      shortfall first (root only);
//   2. transparent huge pages: an ordinary mapping aligned to 2 MiB with madvise(MADV_HUGEPAGE);
//   3. normal 4 KiB pages.
// Pinning 32 GiB on the lent H100 host: cudaHostAlloc 19 s; huge pages + cudaHostRegister 1.7 s
// (../shared/reference/measured-limits.md). Huge pages make registration ~12x faster because the driver
// walks 512x fewer pages.
//
// Memory is handed out by Allocate (a bump allocator: the arena is sized once and parts are never returned
// individually; pools built on top recycle them). The arena must be destroyed before the process exits
// (it unregisters from the GPU runtime in its destructor).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>

#include "engram/status.hpp"

namespace engram::memory {

// Registers host memory with a GPU runtime. engram::gpu::CudaHostRegistrar() provides the CUDA one; the
// host library never calls CUDA itself.
class HostRegistrar {
 public:
  virtual ~HostRegistrar() = default;
  [[nodiscard]] virtual std::string_view name() const noexcept = 0;
  // Pins [p, p + bytes) and maps it for device access.
  [[nodiscard]] virtual Status Register(void* p, std::size_t bytes) = 0;
  [[nodiscard]] virtual Status Unregister(void* p) = 0;
};

enum class HugePages : std::uint8_t {
  kAuto,         // explicit huge pages, else transparent huge pages, else normal pages (logged, reported)
  kExplicit,     // explicit huge pages or an error (kUnavailable naming what is missing)
  kTransparent,  // transparent huge pages (madvise) or normal pages if THP is disabled (reported)
  kNone,         // normal pages
};

enum class HugePageReserve : std::uint8_t {
  kUsePool,   // use the hugetlb pages already reserved on the machine
  kGrowPool,  // first add the shortfall to /proc/sys/vm/nr_hugepages (needs root; a refusal is reported)
};

enum class PagePath : std::uint8_t { kExplicitHuge, kTransparentHuge, kNormal };
std::string_view PagePathName(PagePath path) noexcept;

struct ArenaOptions {
  // Which pages to use. Default: kAuto.
  HugePages huge_pages = HugePages::kAuto;
  // Whether to grow the hugetlb pool when it is short. Default: kUsePool (never changes system settings).
  HugePageReserve reserve = HugePageReserve::kUsePool;
  // Threads that touch (fault in) the pages. 0: one per hardware thread, at most 16. Default: 0.
  std::uint32_t touch_threads = 0;
  // If set, the arena is registered (pinned) through it after touching. Not owned; must outlive the arena.
  // Default: none (pageable memory, still faulted in).
  HostRegistrar* registrar = nullptr;
  // A name for logs and errors. Default: "arena".
  std::string name = "arena";
};

// What Create did and how long each part took.
struct ArenaReport {
  std::uint64_t bytes = 0;       // usable bytes (the request rounded up to the page size)
  std::uint64_t page_bytes = 0;  // 2 MiB or 4 KiB
  PagePath path = PagePath::kNormal;
  std::string fallback;  // why a larger page path was not taken ("" if the first choice worked)
  bool registered = false;
  std::string registrar;  // the registrar's name, if any
  std::uint32_t touch_threads = 0;
  double map_seconds = 0;
  double touch_seconds = 0;
  double register_seconds = 0;
  // Transparent path only: AnonHugePages of this mapping after touching (from /proc/self/smaps), bytes.
  std::uint64_t transparent_huge_bytes = 0;
};

class PinnedArena {
 public:
  // Maps, touches and (optionally) registers `bytes` of host memory. Errors: bytes == 0 (kInvalidArgument),
  // the machine cannot provide the pages asked for (kUnavailable / kResourceExhausted, naming why), the
  // registrar fails (its status, with the arena's name).
  static Result<std::unique_ptr<PinnedArena>> Create(std::uint64_t bytes, const ArenaOptions& options = {});
  ~PinnedArena();
  PinnedArena(const PinnedArena&) = delete;
  PinnedArena& operator=(const PinnedArena&) = delete;

  [[nodiscard]] std::byte* data() const noexcept { return base_; }
  [[nodiscard]] std::uint64_t size() const noexcept { return report_.bytes; }
  [[nodiscard]] const ArenaReport& report() const noexcept { return report_; }
  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  // Bytes not yet handed out by Allocate.
  [[nodiscard]] std::uint64_t available() const;

  // Hands out `bytes` aligned to `alignment` (a power of two, at most the page size). kResourceExhausted
  // (naming the arena, the request and what is left) when it does not fit. Thread-safe.
  [[nodiscard]] Result<std::span<std::byte>> Allocate(std::uint64_t bytes, std::uint64_t alignment = 4096);

 private:
  PinnedArena() = default;
  std::byte* base_ = nullptr;
  std::uint64_t mapped_bytes_ = 0;
  HostRegistrar* registrar_ = nullptr;
  std::string name_;
  ArenaReport report_;
  mutable std::mutex mu_;
  std::uint64_t used_ = 0;
};

// A one-line description of a report ("4.0 GiB on 2 MiB explicit huge pages: map 0.01 s, touch 0.41 s on
// 16 threads, registered with CUDA in 0.08 s").
std::string DescribeArena(const ArenaReport& report);

}  // namespace engram::memory
