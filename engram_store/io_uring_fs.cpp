#include "io_uring_fs.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <liburing.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "../core/io_ring.hpp"

namespace engram::store {
namespace {

// One io_uring per thread and queue depth.
using Ring = engram::detail::IoRing;

Ring& ThreadRing(unsigned depth) {
  thread_local std::unique_ptr<Ring> ring;
  if (!ring || ring->depth() != depth) ring = std::make_unique<Ring>(depth);
  return *ring;
}

class IoUringRandomAccessFile : public rocksdb::FSRandomAccessFile {
 public:
  IoUringRandomAccessFile(std::string name, int fd, std::uint64_t size, std::size_t alignment, unsigned depth,
                          std::shared_ptr<IoUringStats> stats)
      : name_(std::move(name)), fd_(fd), size_(size), alignment_(alignment), depth_(depth), stats_(std::move(stats)) {}
  ~IoUringRandomAccessFile() override { ::close(fd_); }

  rocksdb::IOStatus Read(std::uint64_t offset, std::size_t n, const rocksdb::IOOptions& options, rocksdb::Slice* result,
                         char* scratch, rocksdb::IODebugContext* dbg) const override {
    rocksdb::FSReadRequest req;
    req.offset = offset;
    req.len = n;
    req.scratch = scratch;
    rocksdb::IOStatus s = const_cast<IoUringRandomAccessFile*>(this)->MultiRead(&req, 1, options, dbg);
    if (!s.ok()) return s;
    *result = req.result;
    return req.status;
  }

  rocksdb::IOStatus MultiRead(rocksdb::FSReadRequest* reqs, std::size_t num_reqs, const rocksdb::IOOptions& /*options*/,
                              rocksdb::IODebugContext* /*dbg*/) override {
    stats_->multireads.fetch_add(1, std::memory_order_relaxed);
    for (std::size_t i = 0; i < num_reqs; ++i) {
      const auto& r = reqs[i];
      if (r.offset % alignment_ != 0 || r.len % alignment_ != 0 ||
          reinterpret_cast<std::uintptr_t>(r.scratch) % alignment_ != 0) {
        return rocksdb::IOStatus::InvalidArgument(
            fmt::format("{}: unaligned direct read (offset {}, length {}, buffer {}; alignment {})", name_, r.offset,
                        r.len, static_cast<const void*>(r.scratch), alignment_));
      }
    }
    Ring& ring = ThreadRing(depth_);
    if (ring.init_error() != 0) {
      return rocksdb::IOStatus::IOError(
          fmt::format("{}: io_uring_queue_init: {}", name_, std::strerror(-ring.init_error())));
    }
    // Per request: bytes done so far. A request is in flight until it completes, fails or hits EOF.
    std::vector<std::size_t> done(num_reqs, 0);
    std::vector<std::size_t> pending;  // requests to (re)submit
    pending.reserve(num_reqs);
    for (std::size_t i = 0; i < num_reqs; ++i) {
      reqs[i].status = rocksdb::IOStatus::OK();
      if (reqs[i].len == 0) {
        reqs[i].result = rocksdb::Slice(reqs[i].scratch, 0);
      } else {
        pending.push_back(i);
      }
    }
    std::size_t in_flight = 0;
    std::size_t next = 0;
    while (next < pending.size() || in_flight > 0) {
      // Queue as many as the ring holds, then submit them in one call.
      unsigned queued = 0;
      while (next < pending.size() && in_flight < ring.depth()) {
        io_uring_sqe* sqe = io_uring_get_sqe(ring.get());
        if (sqe == nullptr) break;
        const std::size_t i = pending[next++];
        rocksdb::FSReadRequest& r = reqs[i];
        io_uring_prep_read(sqe, fd_, r.scratch + done[i], static_cast<unsigned>(r.len - done[i]), r.offset + done[i]);
        io_uring_sqe_set_data64(sqe, i);
        ++queued;
        ++in_flight;
      }
      if (queued > 0) {
        int rc;
        do {
          rc = io_uring_submit(ring.get());
        } while (rc == -EINTR || rc == -EAGAIN);
        if (rc < 0) {
          in_flight -= queued;  // nothing of this round reached the kernel
          detail::DrainInFlight(*ring.get(), in_flight, stats_->depth);
          return rocksdb::IOStatus::IOError(fmt::format("{}: io_uring_submit: {}", name_, std::strerror(-rc)));
        }
        stats_->submissions.fetch_add(1, std::memory_order_relaxed);
        stats_->reads.fetch_add(queued, std::memory_order_relaxed);
        detail::ThisThreadReads().reads += queued;
        stats_->depth.Submitted(queued);
      }
      // Reap at least one completion, then everything already there.
      io_uring_cqe* cqe = nullptr;
      int rc;
      do {
        rc = io_uring_wait_cqe(ring.get(), &cqe);
      } while (rc == -EINTR);
      if (rc < 0) {
        detail::DrainInFlight(*ring.get(), in_flight, stats_->depth);
        return rocksdb::IOStatus::IOError(fmt::format("{}: io_uring_wait_cqe: {}", name_, std::strerror(-rc)));
      }
      while (cqe != nullptr) {
        const auto i = static_cast<std::size_t>(io_uring_cqe_get_data64(cqe));
        const int res = cqe->res;
        io_uring_cqe_seen(ring.get(), cqe);
        --in_flight;
        stats_->depth.Completed();
        rocksdb::FSReadRequest& r = reqs[i];
        if (res == -EAGAIN || res == -EINTR) {
          stats_->resubmits.fetch_add(1, std::memory_order_relaxed);
          pending.push_back(i);
        } else if (res < 0) {
          r.status = rocksdb::IOStatus::IOError(fmt::format("{}: read of {} bytes at offset {}: {}", name_,
                                                            r.len - done[i], r.offset + done[i], std::strerror(-res)));
          r.result = rocksdb::Slice(r.scratch, 0);
        } else {
          done[i] += static_cast<std::size_t>(res);
          stats_->bytes.fetch_add(static_cast<std::uint64_t>(res), std::memory_order_relaxed);
          detail::ThisThreadReads().bytes += static_cast<std::uint64_t>(res);
          const bool eof = res == 0 || r.offset + done[i] >= size_;
          if (done[i] < r.len && !eof) {
            // A short read: the rest must start aligned to be re-read directly.
            if ((r.offset + done[i]) % alignment_ != 0) {
              r.status = rocksdb::IOStatus::IOError(
                  fmt::format("{}: short direct read ended unaligned at offset {}", name_, r.offset + done[i]));
              r.result = rocksdb::Slice(r.scratch, done[i]);
            } else {
              stats_->resubmits.fetch_add(1, std::memory_order_relaxed);
              pending.push_back(i);
            }
          } else {
            r.result = rocksdb::Slice(r.scratch, done[i]);
          }
        }
        if (io_uring_peek_cqe(ring.get(), &cqe) != 0) cqe = nullptr;
      }
    }
    return rocksdb::IOStatus::OK();
  }

  [[nodiscard]] bool use_direct_io() const override { return true; }

  [[nodiscard]] std::size_t GetRequiredBufferAlignment() const override { return alignment_; }

 private:
  std::string name_;
  int fd_;
  std::uint64_t size_;
  std::size_t alignment_;
  unsigned depth_;
  std::shared_ptr<IoUringStats> stats_;
};

// The file's direct-I/O alignment: statx(STATX_DIOALIGN) where the kernel reports it, else 4096.
std::size_t DirectIoAlignment(int fd) {
#ifdef STATX_DIOALIGN
  struct statx sx {};
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN) != 0 &&
      sx.stx_dio_offset_align > 0) {
    return std::max<std::size_t>(sx.stx_dio_offset_align, sx.stx_dio_mem_align);
  }
#else
  (void)fd;
#endif
  return 4096;
}

}  // namespace

Result<std::shared_ptr<IoUringFileSystem>> IoUringFileSystem::Create(const std::shared_ptr<rocksdb::FileSystem>& base,
                                                                     unsigned queue_depth) {
  io_uring probe{};
  const int rc = io_uring_queue_init(8, &probe, 0);
  if (rc < 0) {
    return Status::Unavailable(fmt::format(
        "io_uring is not available on this machine (io_uring_queue_init: {}); use IoMode::kPosix (--io posix) to read "
        "with pread instead",
        std::strerror(-rc)));
  }
  io_uring_queue_exit(&probe);
  return std::make_shared<IoUringFileSystem>(base, queue_depth);
}

rocksdb::IOStatus IoUringFileSystem::NewRandomAccessFile(const std::string& fname, const rocksdb::FileOptions& options,
                                                         std::unique_ptr<rocksdb::FSRandomAccessFile>* result,
                                                         rocksdb::IODebugContext* dbg) {
  if (!options.use_direct_reads) return target()->NewRandomAccessFile(fname, options, result, dbg);
  int fd;
  do {
    fd = ::open(fname.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    const int err = errno;
    if (err == EINVAL) {
      return rocksdb::IOStatus::NotSupported(
          fmt::format("{}: the file system does not support O_DIRECT (no silent buffered fallback)", fname));
    }
    return err == ENOENT ? rocksdb::IOStatus::PathNotFound(fmt::format("{}: {}", fname, std::strerror(err)))
                         : rocksdb::IOStatus::IOError(fmt::format("open {}: {}", fname, std::strerror(err)));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return rocksdb::IOStatus::IOError(fmt::format("stat {}: {}", fname, std::strerror(err)));
  }
  result->reset(new IoUringRandomAccessFile(fname, fd, static_cast<std::uint64_t>(st.st_size), DirectIoAlignment(fd),
                                            queue_depth_, stats_));
  return rocksdb::IOStatus::OK();
}

namespace detail {
ThreadReadCounts& ThisThreadReads() noexcept {
  thread_local ThreadReadCounts counts;
  return counts;
}
}  // namespace detail

}  // namespace engram::store
