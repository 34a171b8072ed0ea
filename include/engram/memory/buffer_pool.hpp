// BufferPool: staging buffers with a hard byte budget, aligned for O_DIRECT, handed out as move-only
// handles that return their bytes when they go away.
//
// The pool's memory is taken once, at creation, from a PinnedArena (pinned, huge pages) or from the heap;
// it never grows. A request larger than the budget is refused at once (kResourceExhausted naming the pool,
// the request and the budget); a request that fits the budget but not the bytes free now either fails
// (TryAcquire: kResourceExhausted, "busy") or waits for releases up to a timeout (Acquire:
// kDeadlineExceeded). Nothing ever allocates past the budget, so a burst of work becomes an error or a
// wait the caller sees, never an out-of-memory kill.
//
// Allocation is first fit over the free ranges, in units of the alignment, coalescing on release.
// Thread-safe. Buffers may outlive the pool object (they keep its memory alive).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "engram/memory/pinned_arena.hpp"
#include "engram/status.hpp"

namespace engram::memory {

struct BufferPoolOptions {
  // Total bytes the pool may hand out at once (rounded up to the alignment). Default: 64 MiB.
  std::uint64_t budget_bytes = 64ULL << 20;
  // Start and size granularity of every buffer, a power of two (4096 suits O_DIRECT). Default: 4096.
  std::uint64_t alignment = 4096;
  // A name for errors and statistics. Default: "staging".
  std::string name = "staging";
};

struct BufferPoolStats {
  std::uint64_t budget_bytes = 0;
  std::uint64_t in_use_bytes = 0;
  std::uint64_t peak_bytes = 0;
  std::uint64_t acquired = 0;     // buffers handed out
  std::uint64_t over_budget = 0;  // requests larger than the budget (refused)
  std::uint64_t busy = 0;         // TryAcquire refusals: fits the budget, not the free bytes
  std::uint64_t waits = 0;        // Acquire calls that had to wait
  std::uint64_t timeouts = 0;     // Acquire calls that gave up
  double waited_seconds = 0;      // total time Acquire calls waited
};

class BufferPool;

// A buffer from a BufferPool. Move-only; returns its bytes to the pool when destroyed or reset.
class PooledBuffer {
 public:
  PooledBuffer() = default;
  PooledBuffer(PooledBuffer&& other) noexcept;
  PooledBuffer& operator=(PooledBuffer&& other) noexcept;
  PooledBuffer(const PooledBuffer&) = delete;
  PooledBuffer& operator=(const PooledBuffer&) = delete;
  ~PooledBuffer() { reset(); }

  [[nodiscard]] bool valid() const noexcept { return data_ != nullptr; }
  [[nodiscard]] std::byte* data() const noexcept { return data_; }
  // The bytes asked for (the pool reserves them rounded up to its alignment).
  [[nodiscard]] std::uint64_t size() const noexcept { return size_; }
  [[nodiscard]] std::span<std::byte> span() const noexcept { return {data_, size_}; }
  // Returns the bytes to the pool now.
  void reset() noexcept;

 private:
  friend class BufferPool;
  struct Shared;
  std::shared_ptr<Shared> pool_;
  std::byte* data_ = nullptr;
  std::uint64_t size_ = 0;
  std::uint64_t offset_ = 0;    // in units of the alignment
  std::uint64_t reserved_ = 0;  // in units of the alignment
};

class BufferPool {
 public:
  // Takes budget_bytes from `arena` (pinned) or, if arena is null, from the heap (aligned, touched).
  static Result<std::unique_ptr<BufferPool>> Create(const BufferPoolOptions& options, PinnedArena* arena = nullptr);
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // A buffer of `bytes` now, or kResourceExhausted: larger than the budget, or "busy" (not free now).
  [[nodiscard]] Result<PooledBuffer> TryAcquire(std::uint64_t bytes);
  // A buffer of `bytes`, waiting up to `timeout` for other buffers to come back. kResourceExhausted if
  // larger than the budget (no wait); kDeadlineExceeded if the bytes did not come free in time.
  [[nodiscard]] Result<PooledBuffer> Acquire(std::uint64_t bytes, std::chrono::nanoseconds timeout);

  [[nodiscard]] std::uint64_t budget_bytes() const noexcept;
  [[nodiscard]] bool pinned() const noexcept;  // memory from a registered arena
  [[nodiscard]] BufferPoolStats stats() const;
  [[nodiscard]] const std::string& name() const noexcept;

 private:
  explicit BufferPool(std::shared_ptr<PooledBuffer::Shared> shared);
  Result<PooledBuffer> AcquireImpl(std::uint64_t bytes, bool wait, std::chrono::nanoseconds timeout);
  std::shared_ptr<PooledBuffer::Shared> shared_;
};

}  // namespace engram::memory
