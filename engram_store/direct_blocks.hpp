// Direct block reads of a generation's pages (internal; StoreOptions::read_path = kDirectBlocks).
//
// Every data block of a generation is one 4 KiB-aligned page holding one key (block_align, pages sized to
// one block), so page p of an SST file whose first page is f sits at offset (p - f) * 4096. This reader
// keeps one io_uring per calling thread queue_depth reads deep, refilling it as reads complete, and checks
// every block as RocksDB does before handing out its value: the entry header, the expected key and type,
// the value size, the restart array, no compression, and the kXXH3 block checksum. A block that fails any
// check is reported as corruption; no byte of it is returned. The layout of every file is checked once,
// on its first block, when the reader is built: a file that does not match is an error (kUnavailable),
// never a silent switch to another read path.
#pragma once

#include <rocksdb/db.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engram/status.hpp"
#include "queue_depth.hpp"

namespace engram::store::detail {

struct DirectBlockStats {
  std::atomic<std::uint64_t> reads{0};
  std::atomic<std::uint64_t> submissions{0};
  std::atomic<std::uint64_t> bytes{0};
  QueueDepthGauge depth;  // reads in the kernel
};

class DirectBlockReader {
 public:
  static Result<std::unique_ptr<DirectBlockReader>> Create(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf,
                                                           std::shared_ptr<DirectBlockStats> stats);
  DirectBlockReader(const DirectBlockReader&) = delete;
  DirectBlockReader& operator=(const DirectBlockReader&) = delete;
  ~DirectBlockReader();

  // Reads the pages `keys` (8-byte page keys as integers; any order, no repeats), expecting
  // value_bytes(i) bytes of rows in page i, and calls deliver(i, value) for each checked page.
  // Returns the first error (an unreadable or corrupt block names its file, offset and key).
  [[nodiscard]] Status Read(std::span<const std::uint64_t> keys,
                            const std::function<std::uint32_t(std::size_t)>& value_bytes, unsigned queue_depth,
                            const std::function<void(std::size_t, const std::byte*)>& deliver) const;

  // Reads the `count` consecutive pages from `first_key` (a scan: the pages of a range lie consecutively
  // in their files) in reads of up to 2 MiB, four in flight on a ring of the call's own, checking every
  // block as Read does; calls deliver(i, value) for page first_key + i, expecting value_bytes(i) bytes.
  [[nodiscard]] Status ReadSpan(std::uint64_t first_key, std::uint64_t count,
                                const std::function<std::uint32_t(std::uint64_t)>& value_bytes,
                                const std::function<void(std::uint64_t, const std::byte*)>& deliver) const;

 private:
  struct File {
    std::uint64_t first_key = 0;
    std::uint64_t last_key = 0;
    int fd = -1;
    std::string path;
  };
  DirectBlockReader() = default;
  // The file holding page `key`, or nullptr.
  [[nodiscard]] const File* FileOf(std::uint64_t key) const noexcept;
  std::vector<File> files_;  // sorted by first_key
  std::shared_ptr<DirectBlockStats> stats_;
};

}  // namespace engram::store::detail
