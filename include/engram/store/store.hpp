// Store: the table of record. Every row of every Engram table of a layout, in a RocksDB database in one
// directory that also holds the layout, the token map and the manifest (versions, generations, tensor
// checksums). Read-mostly, read at random a few hundred bytes at a time.
//
// Versions. An ingest writes a complete *generation* (a column family of immutable rows, bulk-loaded
// from sorted SST files) and publishes a version that points at it; a row edit publishes a version that
// overlays a few rows on its parent. A version becomes visible in one synced manifest write, so a crash
// at any point leaves the previous versions intact; unreferenced generations left by a crash are dropped
// at the next open. Readers pin a version; dropping it hides it from new readers, and its data goes
// when the last pin does.
//
// Thread safety: all methods may be called from several threads.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engram/layout.hpp"
#include "engram/status.hpp"
#include "engram/store/safetensors.hpp"
#include "engram/store/synth.hpp"
#include "engram/token_map.hpp"

namespace engram::store {

using VersionId = std::uint64_t;

enum class IoMode : std::uint8_t {
  kPosix,    // RocksDB's own POSIX file system, O_DIRECT reads
  kIoUring,  // engram's io_uring file system: MultiRead batches submitted to io_uring, O_DIRECT
};

enum class ReadPath : std::uint8_t {
  kMultiGet,      // RocksDB MultiGet through the io_uring (or POSIX) file system
  kDirectBlocks,  // engram reads each page's 4 KiB block itself, one io_uring kept full, checking each block
                  // as RocksDB does (docs/store.md); refused with kUnavailable if a file is not laid out so
};

struct StoreOptions {
  // How table files are read. Default: kIoUring. If the kernel refuses io_uring, Open fails with
  // kUnavailable saying so; choose kPosix explicitly to run without it (no silent fallback).
  IoMode io = IoMode::kIoUring;
  // Rows per RocksDB key (a "page" of consecutive rows of one layer). 0 chooses the largest page that
  // fits one 4 KiB block (15 rows of 264 B). Fixed when the store is created. Default: 0.
  std::uint32_t rows_per_key = 0;
  // Bytes of RocksDB block cache for data blocks. 0: none (the host tier above caches rows; every read
  // reaches the disk). Index blocks are always held in memory. Default: 0.
  std::uint64_t block_cache_bytes = 0;
  // Threads that run the MultiGets of one read in parallel. Default: 8.
  std::uint32_t read_threads = 8;
  // Keys per MultiGet call (1..32; RocksDB turns each call's keys into one MultiRead per file, so one thread
  // has at most this many reads in flight). The read's queue depth is about read_threads x
  // multiget_keys; more threads with fewer keys each keep the queue fuller (docs/store.md). Default: 32.
  std::uint32_t multiget_keys = 32;
  // How pages are read. Default: kMultiGet.
  ReadPath read_path = ReadPath::kMultiGet;
  // Reads in flight per calling thread with ReadPath::kDirectBlocks. Default: 128.
  std::uint32_t direct_queue_depth = 128;
  // Target size of the SST files an ingest writes. Default: 1 GiB.
  std::uint64_t ingest_file_bytes = 1ULL << 30;
  // Threads that read, pack and write SST files in parallel during an ingest. Default: 4.
  std::uint32_t ingest_threads = 4;
  // Progress lines on stderr for ingest/verify (only on a terminal). Default: false (quiet).
  bool progress = false;
};

struct VersionInfo {
  VersionId id = 0;
  VersionId parent = 0;  // 0: none (an ingest)
  std::uint64_t generation = 0;
  std::string kind;  // "ingest" or "edit"
  std::int64_t created_unix = 0;
  std::uint64_t edited_rows = 0;  // rows this version replaces (edits only)
  std::string source;             // checkpoint directory (ingest)
};

struct TensorChecksum {
  std::string name;
  std::uint64_t bytes = 0;
  // XXH3 tree of the tensor's bytes, computed while ingesting: XXH3-64 of the little-endian XXH3-64 digests of
  // consecutive chunks of the manifest's checksum_chunk_rows rows (docs/store.md).
  std::uint64_t xxh3 = 0;
};

struct IngestOptions {
  TensorNaming naming;
};

struct RowEdit {
  int layer_index = 0;
  std::int64_t row = 0;
  std::vector<std::byte> bytes;  // exactly layout().row_bytes()
};

struct VerifyReport {
  VersionId version = 0;
  std::uint64_t rows_checked = 0;
  std::uint64_t bytes_checked = 0;
  double seconds = 0;
};

struct StoreInfo {
  std::string dir;
  std::uint32_t rows_per_key = 0;
  std::uint64_t bytes_on_disk = 0;  // SST files of live generations plus edits
  std::vector<VersionInfo> versions;
  std::string last_verification;  // "" if never verified; else a one-line summary
};

// Counters of the io_uring read path since the store was opened (all zero in IoMode::kPosix).
struct StoreIoStats {
  bool io_uring = false;
  std::uint64_t multireads = 0;          // RocksDB MultiRead calls reaching the file system
  std::uint64_t submissions = 0;         // io_uring submissions that carried reads
  std::uint64_t reads = 0;               // read requests issued (resubmissions included)
  std::uint64_t resubmits = 0;           // -EAGAIN / -EINTR / short-read resubmissions
  std::uint64_t bytes = 0;               // bytes read from disk
  std::uint64_t direct_reads = 0;        // 4 KiB block reads by ReadPath::kDirectBlocks
  std::uint64_t direct_submissions = 0;  // their io_uring submissions
  std::uint64_t direct_bytes = 0;        // bytes they read
  // Queue depth, both read paths together: reads in the kernel now, the most there have been, and the
  // mean just after a submission (what the disk was offered).
  std::uint64_t in_flight = 0;
  std::uint64_t peak_in_flight = 0;
  double mean_queue_depth = 0;
};

// The disk reads of one call (Store::ReadRows). Counted for IoMode::kIoUring and direct block reads;
// IoMode::kPosix reads through RocksDB's own file system and counts none.
struct ReadStats {
  std::uint64_t reads = 0;  // read requests issued (resubmissions included)
  std::uint64_t bytes = 0;  // bytes read from disk
};

class Store;

// A pinned version: its rows stay readable while the handle lives. Cheap to copy.
class VersionHandle {
 public:
  [[nodiscard]] VersionId id() const noexcept;
  [[nodiscard]] bool valid() const noexcept { return state_ != nullptr; }

 private:
  friend class Store;
  struct State;
  std::shared_ptr<const State> state_;
};

class Store {
 public:
  // Creates an empty store in `dir` (which must not hold one) for `layout`, with an optional token map.
  static Result<std::unique_ptr<Store>> Create(const std::string& dir, const Layout& layout, const TokenMap* token_map,
                                               const StoreOptions& options = {});
  // Opens a store. If `expected` is given and differs from the stored layout, kInvalidArgument names the
  // first difference. Generations no version references (a crashed ingest) are dropped.
  static Result<std::unique_ptr<Store>> Open(const std::string& dir, const StoreOptions& options = {},
                                             const Layout* expected = nullptr);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  [[nodiscard]] const Layout& layout() const noexcept;
  // The token map stored with the table, if any.
  [[nodiscard]] const TokenMap* token_map() const noexcept;
  [[nodiscard]] std::vector<VersionInfo> versions() const;
  // The newest visible version; kNotFound if the store is empty.
  [[nodiscard]] Result<VersionId> Latest() const;
  [[nodiscard]] std::vector<TensorChecksum> tensor_checksums(VersionId version) const;
  [[nodiscard]] StoreInfo Info() const;
  [[nodiscard]] StoreIoStats io_stats() const;

  // Loads every Engram table of the layout from `checkpoint` as a new version (parent: none). The
  // checkpoint's tensors must have the names, dtypes and shapes the layout implies; a mismatch is an
  // error naming the tensor and field, and nothing becomes visible.
  [[nodiscard]] Result<VersionId> Ingest(const Checkpoint& checkpoint, const IngestOptions& options = {});

  // A new version: `base` with the given rows replaced, in one atomic write.
  [[nodiscard]] Result<VersionId> EditRows(VersionId base, std::span<const RowEdit> edits);

  // Hides `version` from new readers; its data is removed once no pin and no other version needs it.
  [[nodiscard]] Status DropVersion(VersionId version);

  [[nodiscard]] Result<VersionHandle> Pin(VersionId version) const;

  // Reads rows of one layer of a pinned version into `out` (rows.size() * row_bytes, in request order).
  // Rows may repeat and come in any order; each distinct key is read once. Errors: a row outside the
  // layer (kOutOfRange naming it), a block that fails its checksum (kCorruption naming the layer and the
  // rows; no bytes of it are returned). If `stats` is given, this call's own disk reads are added to it
  // (exact when other threads read at the same time, unlike differences of io_stats()).
  [[nodiscard]] Status ReadRows(const VersionHandle& version, int layer_index, std::span<const std::int64_t> rows,
                                std::span<std::byte> out, ReadStats* stats = nullptr) const;

  // Reads rows [first_row, first_row + out.size() / row_bytes) of one layer in order, sequentially (a scan:
  // large read-ahead, read_threads iterators over consecutive parts), for loading a resident host tier.
  // Edited rows of the version are applied. Every block is checksummed; errors as ReadRows.
  [[nodiscard]] Status ReadRange(const VersionHandle& version, int layer_index, std::int64_t first_row,
                                 std::span<std::byte> out) const;

  // Re-reads every row of `version` (checksummed blocks), recomputes each source tensor's XXH3 and
  // compares it with the manifest. The first bad row or block is named in the error. The result is
  // recorded as the store's last verification.
  [[nodiscard]] Result<VerifyReport> Verify(VersionId version);

  struct Impl;

 private:
  explicit Store(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace engram::store
