#include "engram/memory/buffer_pool.hpp"

#include <fmt/format.h>

#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

namespace engram::memory {

struct PooledBuffer::Shared {
  std::string name;
  std::uint64_t alignment = 0;
  std::uint64_t units = 0;  // budget in units of the alignment
  std::byte* base = nullptr;
  bool heap = false;  // base was allocated here (std::aligned_alloc)
  bool pinned = false;
  std::mutex mu;
  std::condition_variable freed;
  std::map<std::uint64_t, std::uint64_t> free_ranges;  // offset -> length, in units; never adjacent
  BufferPoolStats stats;

  ~Shared() {
    if (heap) std::free(base);  // NOLINT(cppcoreguidelines-no-malloc): pairs with std::aligned_alloc
  }

  // First fit; returns the offset or units (no room).
  std::uint64_t Take(std::uint64_t n) {
    for (auto it = free_ranges.begin(); it != free_ranges.end(); ++it) {
      if (it->second < n) continue;
      const std::uint64_t off = it->first;
      const std::uint64_t left = it->second - n;
      free_ranges.erase(it);
      if (left > 0) free_ranges.emplace(off + n, left);
      return off;
    }
    return units;
  }

  void Give(std::uint64_t off, std::uint64_t n) {
    auto next = free_ranges.lower_bound(off);
    if (next != free_ranges.end() && off + n == next->first) {
      n += next->second;
      next = free_ranges.erase(next);
    }
    if (next != free_ranges.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second == off) {
        prev->second += n;
        return;
      }
    }
    free_ranges.emplace(off, n);
  }
};

PooledBuffer::PooledBuffer(PooledBuffer&& other) noexcept
    : pool_(std::move(other.pool_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      offset_(other.offset_),
      reserved_(std::exchange(other.reserved_, 0)) {}

PooledBuffer& PooledBuffer::operator=(PooledBuffer&& other) noexcept {
  if (this != &other) {
    reset();
    pool_ = std::move(other.pool_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    offset_ = other.offset_;
    reserved_ = std::exchange(other.reserved_, 0);
  }
  return *this;
}

void PooledBuffer::reset() noexcept {
  if (data_ == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(pool_->mu);
    pool_->Give(offset_, reserved_);
    pool_->stats.in_use_bytes -= reserved_ * pool_->alignment;
  }
  pool_->freed.notify_all();
  data_ = nullptr;
  size_ = 0;
  reserved_ = 0;
  pool_.reset();
}

Result<std::unique_ptr<BufferPool>> BufferPool::Create(const BufferPoolOptions& options, PinnedArena* arena) {
  const std::uint64_t align = options.alignment;
  if (align == 0 || (align & (align - 1)) != 0) {
    return Status::InvalidArgument(
        fmt::format("buffer pool '{}': alignment {} is not a power of two", options.name, align));
  }
  if (options.budget_bytes == 0) {
    return Status::InvalidArgument(fmt::format("buffer pool '{}': budget of 0 bytes", options.name));
  }
  auto shared = std::make_shared<PooledBuffer::Shared>();
  shared->name = options.name;
  shared->alignment = align;
  shared->units = (options.budget_bytes + align - 1) / align;
  const std::uint64_t bytes = shared->units * align;
  if (arena != nullptr) {
    ENGRAM_ASSIGN_OR_RETURN(std::span<std::byte> region,
                            arena->Allocate(bytes, align).WithContext(fmt::format("buffer pool '{}'", options.name)));
    shared->base = region.data();
    shared->pinned = arena->report().registered;
  } else {
    shared->base = static_cast<std::byte*>(std::aligned_alloc(align, bytes));  // NOLINT(cppcoreguidelines-no-malloc)
    if (shared->base == nullptr) {
      return Status::ResourceExhausted(
          fmt::format("buffer pool '{}': the heap refused {} bytes aligned to {}", options.name, bytes, align));
    }
    shared->heap = true;
    std::memset(shared->base, 0, bytes);  // fault the pages in now, not on the hot path
  }
  shared->free_ranges.emplace(0, shared->units);
  shared->stats.budget_bytes = bytes;
  return std::unique_ptr<BufferPool>(new BufferPool(std::move(shared)));
}

BufferPool::BufferPool(std::shared_ptr<PooledBuffer::Shared> shared) : shared_(std::move(shared)) {}
BufferPool::~BufferPool() = default;

std::uint64_t BufferPool::budget_bytes() const noexcept {
  return shared_->units * shared_->alignment;
}
bool BufferPool::pinned() const noexcept {
  return shared_->pinned;
}
const std::string& BufferPool::name() const noexcept {
  return shared_->name;
}

BufferPoolStats BufferPool::stats() const {
  std::lock_guard<std::mutex> lock(shared_->mu);
  return shared_->stats;
}

Result<PooledBuffer> BufferPool::TryAcquire(std::uint64_t bytes) {
  return AcquireImpl(bytes, false, std::chrono::nanoseconds(0));
}

Result<PooledBuffer> BufferPool::Acquire(std::uint64_t bytes, std::chrono::nanoseconds timeout) {
  return AcquireImpl(bytes, true, timeout);
}

Result<PooledBuffer> BufferPool::AcquireImpl(std::uint64_t bytes, bool wait, std::chrono::nanoseconds timeout) {
  PooledBuffer::Shared& s = *shared_;
  const std::uint64_t n = std::max<std::uint64_t>(1, (bytes + s.alignment - 1) / s.alignment);
  std::unique_lock<std::mutex> lock(s.mu);
  if (n > s.units) {
    ++s.stats.over_budget;
    return Status::ResourceExhausted(
        fmt::format("buffer pool '{}': {} bytes requested, budget {} bytes", s.name, bytes, s.units * s.alignment));
  }
  std::uint64_t off = s.Take(n);
  if (off == s.units) {
    if (!wait) {
      ++s.stats.busy;
      return Status::ResourceExhausted(fmt::format("buffer pool '{}': busy: {} bytes requested, {} of {} in use",
                                                   s.name, bytes, s.stats.in_use_bytes, s.units * s.alignment));
    }
    ++s.stats.waits;
    const auto t0 = std::chrono::steady_clock::now();
    const auto deadline = t0 + timeout;
    while (off == s.units) {
      if (s.freed.wait_until(lock, deadline) == std::cv_status::timeout) {
        off = s.Take(n);
        if (off != s.units) break;
        ++s.stats.timeouts;
        s.stats.waited_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        return Status::DeadlineExceeded(
            fmt::format("buffer pool '{}': {} bytes did not come free in {} ms ({} of {} in use)", s.name, bytes,
                        std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count(), s.stats.in_use_bytes,
                        s.units * s.alignment));
      }
      off = s.Take(n);
    }
    s.stats.waited_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  s.stats.in_use_bytes += n * s.alignment;
  s.stats.peak_bytes = std::max(s.stats.peak_bytes, s.stats.in_use_bytes);
  ++s.stats.acquired;
  PooledBuffer b;
  b.pool_ = shared_;
  b.data_ = s.base + off * s.alignment;
  b.size_ = bytes;
  b.offset_ = off;
  b.reserved_ = n;
  return b;
}

}  // namespace engram::memory
