#include "engram/memory/pinned_arena.hpp"

#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "engram/log.hpp"

namespace engram::memory {
namespace {

constexpr std::uint64_t kSmallPage = 4096;

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// A "Key:   value kB" field of /proc/meminfo, in its unit (pages or kB); -1 if absent.
std::int64_t MeminfoField(const std::string& key) {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::strtoll(line.c_str() + key.size() + 1, nullptr, 10);
  }
  return -1;
}

std::string ReadLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

std::uint64_t RoundUp(std::uint64_t v, std::uint64_t to) {
  return (v + to - 1) / to * to;
}

// Tries to map `bytes` from the hugetlb pool; on failure returns nullptr and says why.
std::byte* MapExplicit(std::uint64_t bytes, std::uint64_t page, HugePageReserve reserve, std::string* why) {
  const std::int64_t free_pages = MeminfoField("HugePages_Free");
  const auto needed = static_cast<std::int64_t>(bytes / page);
  if (free_pages < needed && reserve == HugePageReserve::kGrowPool) {
    const std::int64_t total = MeminfoField("HugePages_Total");
    std::ofstream out("/proc/sys/vm/nr_hugepages");
    out << (total + needed - std::max<std::int64_t>(free_pages, 0)) << "\n";
    out.close();
    if (!out) {
      *why = fmt::format("could not grow /proc/sys/vm/nr_hugepages by {} pages (not root?)", needed - free_pages);
    }
  }
  const std::int64_t now_free = MeminfoField("HugePages_Free");
  if (now_free < needed) {
    if (why->empty()) {
      *why = fmt::format("the hugetlb pool has {} free {} KiB pages, {} needed (raise /proc/sys/vm/nr_hugepages{})",
                         std::max<std::int64_t>(now_free, 0), page / 1024, needed,
                         reserve == HugePageReserve::kUsePool ? " or use HugePageReserve::kGrowPool as root" : "");
    } else {
      *why += fmt::format("; the pool has {} free pages, {} needed", std::max<std::int64_t>(now_free, 0), needed);
    }
    return nullptr;
  }
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
  if (p == MAP_FAILED) {
    *why = fmt::format("mmap(MAP_HUGETLB) of {} bytes: {}", bytes, std::strerror(errno));
    return nullptr;
  }
  return static_cast<std::byte*>(p);
}

// Maps `bytes` at a `align`-aligned address (an ordinary anonymous mapping).
std::byte* MapAligned(std::uint64_t bytes, std::uint64_t align, std::string* why) {
  void* p = ::mmap(nullptr, bytes + align, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    *why = fmt::format("mmap of {} bytes: {}", bytes, std::strerror(errno));
    return nullptr;
  }
  // Trim the mapping to the aligned part (pointer arithmetic on the mapping, no integer-to-pointer casts).
  auto* raw = static_cast<std::byte*>(p);
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  const std::uint64_t head = RoundUp(addr, align) - addr;
  std::byte* aligned = raw + head;
  if (head > 0) ::munmap(raw, head);
  const std::uint64_t tail = align - head;
  if (tail > 0) ::munmap(aligned + bytes, tail);
  return aligned;
}

// AnonHugePages (bytes) of the mapping that starts at `base`, from /proc/self/smaps.
std::uint64_t AnonHugeBytes(const void* base) {
  std::ifstream in("/proc/self/smaps");
  std::string line;
  const std::string start = fmt::format("{:x}-", reinterpret_cast<std::uintptr_t>(base));
  bool inside = false;
  while (std::getline(in, line)) {
    if (!line.empty() && std::isxdigit(static_cast<unsigned char>(line[0])) != 0 &&
        line.find('-') != std::string::npos && line.find(' ') > line.find('-')) {
      inside = line.rfind(start, 0) == 0;
      continue;
    }
    if (inside && line.rfind("AnonHugePages:", 0) == 0) {
      return static_cast<std::uint64_t>(std::strtoll(line.c_str() + 14, nullptr, 10)) * 1024;
    }
  }
  return 0;
}

void Touch(std::byte* base, std::uint64_t bytes, std::uint64_t page, std::uint32_t threads) {
  const std::uint64_t pages = bytes / page;
  const std::uint64_t per = (pages + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (std::uint32_t t = 0; t < threads; ++t) {
    const std::uint64_t first = t * per;
    const std::uint64_t last = std::min(pages, first + per);
    if (first >= last) break;
    pool.emplace_back([=] {
      for (std::uint64_t i = first; i < last; ++i) {
        // Writing one byte of each page faults it in (zeroed by the kernel); 4 KiB steps also cover
        // transparent huge pages that the kernel could not assemble.
        for (std::uint64_t off = 0; off < page; off += kSmallPage) {
          *reinterpret_cast<volatile char*>(base + i * page + off) = 0;
        }
      }
    });
  }
  for (auto& th : pool) th.join();
}

}  // namespace

std::string_view PagePathName(PagePath path) noexcept {
  switch (path) {
    case PagePath::kExplicitHuge: return "explicit huge pages";
    case PagePath::kTransparentHuge: return "transparent huge pages";
    case PagePath::kNormal: return "normal pages";
  }
  return "?";
}

Result<std::unique_ptr<PinnedArena>> PinnedArena::Create(std::uint64_t bytes, const ArenaOptions& options) {
  if (bytes == 0) return Status::InvalidArgument(fmt::format("arena '{}': size 0", options.name));
  std::unique_ptr<PinnedArena> a(new PinnedArena());
  a->name_ = options.name;
  ArenaReport& r = a->report_;
  r.touch_threads = options.touch_threads != 0 ? options.touch_threads
                                               : std::clamp<std::uint32_t>(std::thread::hardware_concurrency(), 1, 16);
  std::int64_t huge_kib = MeminfoField("Hugepagesize");
  const std::uint64_t huge = huge_kib > 0 ? static_cast<std::uint64_t>(huge_kib) * 1024 : (2ULL << 20);
  std::string why;
  const auto t0 = std::chrono::steady_clock::now();
  if (options.huge_pages == HugePages::kAuto || options.huge_pages == HugePages::kExplicit) {
    const std::uint64_t size = RoundUp(bytes, huge);
    a->base_ = MapExplicit(size, huge, options.reserve, &why);
    if (a->base_ != nullptr) {
      r.path = PagePath::kExplicitHuge;
      r.bytes = size;
      r.page_bytes = huge;
    } else if (options.huge_pages == HugePages::kExplicit) {
      return Status::Unavailable(fmt::format("arena '{}': explicit huge pages for {} bytes: {}", a->name_, bytes, why));
    }
  }
  if (a->base_ == nullptr && options.huge_pages != HugePages::kNone) {
    const std::string thp = ReadLine("/sys/kernel/mm/transparent_hugepage/enabled");
    if (thp.find("[never]") != std::string::npos || thp.empty()) {
      if (!why.empty()) why += "; ";
      why += thp.empty() ? "transparent huge pages: not offered by this kernel"
                         : "transparent huge pages: disabled (/sys/kernel/mm/transparent_hugepage/enabled: never)";
    } else {
      const std::uint64_t size = RoundUp(bytes, huge);
      std::string map_why;
      a->base_ = MapAligned(size, huge, &map_why);
      if (a->base_ == nullptr) {
        return Status::ResourceExhausted(fmt::format("arena '{}': {}", a->name_, map_why));
      }
      if (::madvise(a->base_, size, MADV_HUGEPAGE) != 0) {
        if (!why.empty()) why += "; ";
        why += fmt::format("madvise(MADV_HUGEPAGE): {}", std::strerror(errno));
      }
      r.path = PagePath::kTransparentHuge;
      r.bytes = size;
      r.page_bytes = huge;
    }
  }
  if (a->base_ == nullptr) {
    const std::uint64_t size = RoundUp(bytes, kSmallPage);
    std::string map_why;
    a->base_ = MapAligned(size, kSmallPage, &map_why);
    if (a->base_ == nullptr) return Status::ResourceExhausted(fmt::format("arena '{}': {}", a->name_, map_why));
    r.path = PagePath::kNormal;
    r.bytes = size;
    r.page_bytes = kSmallPage;
  }
  a->mapped_bytes_ = r.bytes;
  r.fallback = why;
  r.map_seconds = Since(t0);
  if (!why.empty() && options.huge_pages != HugePages::kNone) {
    Log(LogLevel::kWarn, "arena '{}': using {} ({})", a->name_, PagePathName(r.path), why);
  }

  const auto t1 = std::chrono::steady_clock::now();
  Touch(a->base_, r.bytes, r.page_bytes, r.touch_threads);
  r.touch_seconds = Since(t1);
  if (r.path == PagePath::kTransparentHuge) r.transparent_huge_bytes = AnonHugeBytes(a->base_);

  if (options.registrar != nullptr) {
    const auto t2 = std::chrono::steady_clock::now();
    r.registrar = std::string(options.registrar->name());
    ENGRAM_RETURN_IF_ERROR_CTX(options.registrar->Register(a->base_, r.bytes),
                               fmt::format("arena '{}': registering {} bytes with {}", a->name_, r.bytes, r.registrar));
    a->registrar_ = options.registrar;
    r.registered = true;
    r.register_seconds = Since(t2);
  }
  Log(LogLevel::kInfo, "arena '{}': {}", a->name_, DescribeArena(r));
  return a;
}

PinnedArena::~PinnedArena() {
  if (registrar_ != nullptr) {
    const Status s = registrar_->Unregister(base_);
    if (!s.ok()) Log(LogLevel::kError, "arena '{}': unregistering: {}", name_, s.ToString());
  }
  if (base_ != nullptr) ::munmap(base_, mapped_bytes_);
}

std::uint64_t PinnedArena::available() const {
  std::lock_guard<std::mutex> lock(mu_);
  return report_.bytes - used_;
}

Result<std::span<std::byte>> PinnedArena::Allocate(std::uint64_t bytes, std::uint64_t alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0 || alignment > report_.page_bytes) {
    return Status::InvalidArgument(
        fmt::format("arena '{}': alignment {} is not a power of two up to {}", name_, alignment, report_.page_bytes));
  }
  std::lock_guard<std::mutex> lock(mu_);
  const std::uint64_t start = RoundUp(used_, alignment);
  if (start > report_.bytes || bytes > report_.bytes - start) {
    return Status::ResourceExhausted(fmt::format("arena '{}': {} bytes requested, {} of {} left", name_, bytes,
                                                 report_.bytes - std::min(start, report_.bytes), report_.bytes));
  }
  used_ = start + bytes;
  return std::span<std::byte>(base_ + start, bytes);
}

std::string DescribeArena(const ArenaReport& r) {
  std::string s = fmt::format("{:.2f} GiB on {} KiB {}: map {:.3f} s, touch {:.3f} s on {} threads",
                              static_cast<double>(r.bytes) / 1073741824.0, r.page_bytes / 1024, PagePathName(r.path),
                              r.map_seconds, r.touch_seconds, r.touch_threads);
  if (r.path == PagePath::kTransparentHuge) {
    s += fmt::format(
        " ({:.0f}% backed by huge pages)",
        r.bytes == 0 ? 0.0 : 100.0 * static_cast<double>(r.transparent_huge_bytes) / static_cast<double>(r.bytes));
  }
  s += r.registered ? fmt::format(", registered with {} in {:.3f} s", r.registrar, r.register_seconds)
                    : std::string(", not registered with a GPU runtime (pageable)");
  if (!r.fallback.empty()) s += fmt::format("; fell back: {}", r.fallback);
  return s;
}

}  // namespace engram::memory
