// A RocksDB FileSystem whose random-access files read through io_uring with O_DIRECT (internal).
//
// Debian's RocksDB is built without io_uring, so engram plugs it in through RocksDB's public FileSystem
// interface: files opened for direct reads (DBOptions::use_direct_reads) are served by
// IoUringRandomAccessFile, whose MultiRead submits the whole batch of block reads to one io_uring
// submission and waits for all completions; everything else forwards to the wrapped file system.
//
// Correctness rules of the completion loop (as liburing and RocksDB's own io_uring code do):
//   - results are negative errno, never errno; -EAGAIN and -EINTR resubmit the same request;
//   - a short read resubmits the remainder (offset + done) unless it reached the end of the file;
//   - requests must be aligned for O_DIRECT (offset, length and buffer to the file's direct-I/O
//     alignment): RocksDB aligns them when use_direct_reads is set; an unaligned request is an error,
//     never a silent buffered read.
// One ring per calling thread (created on first use, freed when the thread exits); a ring is never
// shared, so no locks on the hot path.
#pragma once

#include <rocksdb/file_system.h>

#include <atomic>
#include <cstdint>
#include <memory>

#include "engram/status.hpp"
#include "queue_depth.hpp"

namespace engram::store {

struct IoUringStats {
  std::atomic<std::uint64_t> multireads{0};   // MultiRead calls
  std::atomic<std::uint64_t> submissions{0};  // io_uring_submit calls that carried new reads
  std::atomic<std::uint64_t> reads{0};        // read requests (SQEs) issued, resubmissions included
  std::atomic<std::uint64_t> resubmits{0};    // -EAGAIN / -EINTR / short-read resubmissions
  std::atomic<std::uint64_t> bytes{0};        // bytes read
  detail::QueueDepthGauge depth;              // reads in the kernel
};

namespace detail {
// Reads issued and bytes read by this thread through the io_uring file system and direct block reads,
// since the thread began: the difference around a synchronous call is that call's own I/O.
struct ThreadReadCounts {
  std::uint64_t reads = 0;
  std::uint64_t bytes = 0;
};
ThreadReadCounts& ThisThreadReads() noexcept;
}  // namespace detail

class IoUringFileSystem : public rocksdb::FileSystemWrapper {
 public:
  // Probes io_uring (a ring must initialise); kUnavailable with the kernel's reason otherwise.
  static Result<std::shared_ptr<IoUringFileSystem>> Create(const std::shared_ptr<rocksdb::FileSystem>& base,
                                                           unsigned queue_depth = 256);

  explicit IoUringFileSystem(const std::shared_ptr<rocksdb::FileSystem>& base, unsigned queue_depth)
      : FileSystemWrapper(base), queue_depth_(queue_depth) {}

  static const char* kClassName() { return "EngramIoUringFileSystem"; }
  [[nodiscard]] const char* Name() const override { return kClassName(); }

  rocksdb::IOStatus NewRandomAccessFile(const std::string& fname, const rocksdb::FileOptions& options,
                                        std::unique_ptr<rocksdb::FSRandomAccessFile>* result,
                                        rocksdb::IODebugContext* dbg) override;

  [[nodiscard]] const IoUringStats& stats() const noexcept { return *stats_; }
  [[nodiscard]] unsigned queue_depth() const noexcept { return queue_depth_; }

 private:
  unsigned queue_depth_;
  std::shared_ptr<IoUringStats> stats_ = std::make_shared<IoUringStats>();
};

}  // namespace engram::store
