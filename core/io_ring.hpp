// An io_uring owned by its scope (internal, not installed).
#pragma once

#include <liburing.h>

namespace engram::detail {

// io_uring_queue_init on construction (its error, a negative errno, kept for the caller to report),
// io_uring_queue_exit on destruction.
class IoRing {
 public:
  explicit IoRing(unsigned depth) : depth_(depth), init_error_(io_uring_queue_init(depth, &ring_, 0)) {}
  IoRing(const IoRing&) = delete;
  IoRing& operator=(const IoRing&) = delete;
  ~IoRing() {
    if (init_error_ == 0) io_uring_queue_exit(&ring_);
  }
  [[nodiscard]] int init_error() const noexcept { return init_error_; }
  [[nodiscard]] io_uring* get() noexcept { return &ring_; }
  [[nodiscard]] unsigned depth() const noexcept { return depth_; }

 private:
  io_uring ring_{};
  unsigned depth_;
  int init_error_;
};

}  // namespace engram::detail
