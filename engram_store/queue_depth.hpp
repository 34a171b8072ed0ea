// A queue-depth gauge for reads submitted to io_uring (internal): how many are in the kernel now, the
// most there have been, and the depth just after each submission (its mean is the queue depth the disk
// saw). Lock-free; shared by every thread's ring.
#pragma once

#include <liburing.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>

namespace engram::store::detail {

struct QueueDepthGauge {
  std::atomic<std::int64_t> in_flight{0};
  std::atomic<std::uint64_t> peak{0};
  std::atomic<std::uint64_t> depth_sum{0};  // in_flight just after each submission, summed

  void Submitted(std::uint64_t n) noexcept {
    const auto now =
        static_cast<std::uint64_t>(in_flight.fetch_add(static_cast<std::int64_t>(n)) + static_cast<std::int64_t>(n));
    depth_sum.fetch_add(now, std::memory_order_relaxed);
    std::uint64_t p = peak.load(std::memory_order_relaxed);
    while (now > p && !peak.compare_exchange_weak(p, now, std::memory_order_relaxed)) {
    }
  }
  void Completed(std::uint64_t n = 1) noexcept { in_flight.fetch_sub(static_cast<std::int64_t>(n)); }
};

// Before a read path returns an error: waits for the `n` reads it still has in `ring` (they write into
// buffers it is about to give up, and their completions must not be mistaken for a later call's), and
// takes them off `depth`.
inline void DrainInFlight(io_uring& ring, std::size_t n, QueueDepthGauge& depth) noexcept {
  depth.Completed(n);
  while (n > 0) {
    io_uring_cqe* cqe = nullptr;
    const int rc = io_uring_wait_cqe(&ring, &cqe);
    if (rc == -EINTR) continue;
    if (rc < 0) return;  // the ring is unusable; nothing more can be reaped
    io_uring_cqe_seen(&ring, cqe);
    --n;
  }
}

}  // namespace engram::store::detail
