#include "direct_blocks.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <liburing.h>
#include <rocksdb/metadata.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "io_uring_fs.hpp"

namespace engram::store::detail {
namespace {

constexpr std::size_t kBlock = 4096;

std::uint64_t Be64(const unsigned char* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}

bool Varint32(const unsigned char*& p, const unsigned char* end, std::uint32_t& out) {
  out = 0;
  for (int shift = 0; shift <= 28 && p < end; shift += 7) {
    const unsigned char c = *p++;
    out |= static_cast<std::uint32_t>(c & 0x7FU) << shift;
    if (c < 0x80) return true;
  }
  return false;
}

// The value of a block holding exactly `key` with `value_bytes` bytes, or nullptr with `why` set.
const unsigned char* CheckBlock(const unsigned char* b, std::uint64_t key, std::uint32_t value_bytes,
                                const char** why) {
  const unsigned char* p = b;
  const unsigned char* end = b + kBlock;
  std::uint32_t shared = 0;
  std::uint32_t non_shared = 0;
  std::uint32_t value_len = 0;
  if (!Varint32(p, end, shared) || !Varint32(p, end, non_shared) || !Varint32(p, end, value_len) || shared != 0 ||
      non_shared != 16) {
    *why = "not a one-entry block";
    return nullptr;
  }
  if (value_len != value_bytes || p + 16 + value_len + 8 + 5 > end) {
    *why = "value size";
    return nullptr;
  }
  if (Be64(p) != key || p[8] != 0x01) {  // user key, then the internal footer's type: kTypeValue
    *why = "another key";
    return nullptr;
  }
  const unsigned char* value = p + 16;
  const unsigned char* restarts = value + value_len;
  std::uint32_t restart0 = 0;
  std::uint32_t num_restarts = 0;
  std::memcpy(&restart0, restarts, 4);
  std::memcpy(&num_restarts, restarts + 4, 4);
  if (restart0 != 0 || num_restarts != 1) {
    *why = "restart array";
    return nullptr;
  }
  const auto contents = static_cast<std::size_t>(restarts + 8 - b);
  if (b[contents] != 0) {
    *why = "compressed block";
    return nullptr;
  }
  std::uint32_t stored = 0;
  std::memcpy(&stored, b + contents + 1, 4);
  // RocksDB's kXXH3 block checksum: low 32 bits of XXH3-64 of the contents, XOR the compression-type byte
  // times 0x6b9083d9 (the byte is 0 here).
  if (static_cast<std::uint32_t>(XXH3_64bits(b, contents)) != stored) {
    *why = "checksum mismatch";
    return nullptr;
  }
  return value;
}

// An io_uring `depth` reads deep and `buffer_count` aligned read buffers of `buffer_bytes` each.
struct Ring {
  io_uring ring{};
  unsigned depth = 0;
  unsigned buffer_count = 0;
  int init_error = -1;
  void* buffers = nullptr;
  Ring(unsigned d, unsigned count, std::size_t buffer_bytes) : depth(d), buffer_count(count) {
    init_error = io_uring_queue_init(d, &ring, 0);
    if (posix_memalign(&buffers, kBlock, count * buffer_bytes) != 0) buffers = nullptr;
  }
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;
  ~Ring() {
    if (init_error == 0) io_uring_queue_exit(&ring);
    std::free(buffers);
  }
};

// Submits the `queued` reads prepared on `ring` (waiting for a completion in the same system call when
// `wait`, as fio does) and counts them; on failure the reads already in flight are reaped first.
template <typename Count>
Status Submit(io_uring& ring, unsigned queued, bool wait, Count& in_flight, DirectBlockStats& stats, const char* what) {
  if (queued == 0) return Status::Ok();
  int rc;
  do {
    rc = wait ? io_uring_submit_and_wait(&ring, 1) : io_uring_submit(&ring);
  } while (rc == -EINTR || rc == -EAGAIN);
  if (rc < 0) {
    in_flight -= queued;  // nothing of this round reached the kernel
    DrainInFlight(ring, in_flight, stats.depth);
    return Status::IOError(fmt::format("{}: io_uring_submit: {}", what, std::strerror(-rc)));
  }
  stats.submissions.fetch_add(1, std::memory_order_relaxed);
  stats.reads.fetch_add(queued, std::memory_order_relaxed);
  ThisThreadReads().reads += queued;
  stats.depth.Submitted(queued);
  return Status::Ok();
}

// Random block reads: one ring per thread, `depth` reads deep, with twice as many block buffers: the
// reads completed in one reap are checked and delivered while new reads into the spare buffers are
// already in the kernel, so the disk's queue stays full while this thread works.
Ring& ThreadRing(unsigned depth) {
  thread_local std::unique_ptr<Ring> ring;
  if (!ring || ring->depth != depth) ring = std::make_unique<Ring>(depth, 2 * depth, kBlock);
  return *ring;
}

}  // namespace

Result<std::unique_ptr<DirectBlockReader>> DirectBlockReader::Create(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf,
                                                                     std::shared_ptr<DirectBlockStats> stats) {
  rocksdb::ColumnFamilyMetaData meta;
  db->GetColumnFamilyMetaData(cf, &meta);
  std::unique_ptr<DirectBlockReader> r(new DirectBlockReader());
  r->stats_ = std::move(stats);
  void* mem = nullptr;
  if (posix_memalign(&mem, kBlock, kBlock) != 0) return Status::ResourceExhausted("direct reads: no memory");
  std::unique_ptr<void, decltype(&std::free)> block(mem, &std::free);
  for (const auto& level : meta.levels) {
    for (const auto& f : level.files) {
      File file;
      file.path = f.directory + "/" + f.relative_filename;
      if (f.smallestkey.size() != 8 || f.largestkey.size() != 8) {
        return Status::Unavailable(
            fmt::format("direct reads: {} has keys of {} bytes, not page keys", file.path, f.smallestkey.size()));
      }
      file.first_key = Be64(reinterpret_cast<const unsigned char*>(f.smallestkey.data()));
      file.last_key = Be64(reinterpret_cast<const unsigned char*>(f.largestkey.data()));
      file.fd = ::open(file.path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
      if (file.fd < 0)
        return Status::IOError(fmt::format("direct reads: open {}: {}", file.path, std::strerror(errno)));
      r->files_.push_back(file);
      // The layout check: the first block is one entry, the file's first key, checksummed as expected.
      const ssize_t n = ::pread(file.fd, block.get(), kBlock, 0);
      const auto* b = static_cast<const unsigned char*>(block.get());
      const unsigned char* p = b;
      std::uint32_t shared = 0;
      std::uint32_t non_shared = 0;
      std::uint32_t value_len = 0;
      const char* why = "short read";
      if (n != static_cast<ssize_t>(kBlock) || !Varint32(p, b + kBlock, shared) ||
          !Varint32(p, b + kBlock, non_shared) || !Varint32(p, b + kBlock, value_len) ||
          CheckBlock(b, file.first_key, value_len, &why) == nullptr) {
        return Status::Unavailable(
            fmt::format("direct reads: {} is not laid out as one 4 KiB block per page ({}); use ReadPath::kMultiGet",
                        file.path, why));
      }
    }
  }
  std::sort(r->files_.begin(), r->files_.end(), [](const File& a, const File& b) { return a.first_key < b.first_key; });
  for (std::size_t i = 1; i < r->files_.size(); ++i) {
    if (r->files_[i].first_key <= r->files_[i - 1].last_key) {
      return Status::Unavailable(
          fmt::format("direct reads: files {} and {} overlap", r->files_[i - 1].path, r->files_[i].path));
    }
  }
  return r;
}

DirectBlockReader::~DirectBlockReader() {
  for (auto& f : files_) ::close(f.fd);
}

const DirectBlockReader::File* DirectBlockReader::FileOf(std::uint64_t key) const noexcept {
  auto it = std::upper_bound(files_.begin(), files_.end(), key,
                             [](std::uint64_t k, const File& f) { return k < f.first_key; });
  return it == files_.begin() || key > (it - 1)->last_key ? nullptr : &*(it - 1);
}

Status DirectBlockReader::Read(std::span<const std::uint64_t> keys,
                               const std::function<std::uint32_t(std::size_t)>& value_bytes, unsigned queue_depth,
                               const std::function<void(std::size_t, const std::byte*)>& deliver) const {
  if (keys.empty()) return Status::Ok();
  Ring& ring = ThreadRing(std::max(1U, queue_depth));
  if (ring.init_error != 0 || ring.buffers == nullptr) {
    return Status::IOError(fmt::format("direct reads: io_uring_queue_init: {}", std::strerror(-ring.init_error)));
  }
  auto* buffers = static_cast<unsigned char*>(ring.buffers);
  std::vector<unsigned> free_slots(ring.buffer_count);
  for (unsigned i = 0; i < ring.buffer_count; ++i) free_slots[i] = ring.buffer_count - 1 - i;
  std::vector<std::size_t> slot_item(ring.buffer_count);
  std::vector<const File*> slot_file(ring.buffer_count);
  std::vector<std::pair<unsigned, int>> reaped;  // (slot, result) of the reads completed in one reap
  std::vector<unsigned> retry;                   // slots whose read came back -EAGAIN / -EINTR: issue again
  reaped.reserve(ring.depth);
  Status first_error;
  std::size_t next = 0;
  std::size_t in_flight = 0;
  auto prep = [&](unsigned slot) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring.ring);  // never null: at most `depth` reads are in the ring
    const File& f = *slot_file[slot];
    io_uring_prep_read(sqe, f.fd, buffers + static_cast<std::size_t>(slot) * kBlock, kBlock,
                       (keys[slot_item[slot]] - f.first_key) * kBlock);
    io_uring_sqe_set_data64(sqe, slot);
    ++in_flight;
  };
  // Queues reads up to the ring's depth: retried slots first, then the next keys into free buffers.
  auto fill = [&]() {
    unsigned queued = 0;
    while (!retry.empty() && in_flight < ring.depth) {
      prep(retry.back());
      retry.pop_back();
      ++queued;
    }
    while (next < keys.size() && !free_slots.empty() && in_flight < ring.depth && first_error.ok()) {
      const File* f = FileOf(keys[next]);
      if (f == nullptr) {
        first_error = Status::Corruption(fmt::format("direct reads: no file holds page key {:016x}", keys[next]));
        break;
      }
      const unsigned slot = free_slots.back();
      free_slots.pop_back();
      slot_item[slot] = next;
      slot_file[slot] = f;
      prep(slot);
      ++next;
      ++queued;
    }
    if (!first_error.ok()) next = keys.size();  // stop issuing; reap what is in flight
    return queued;
  };
  // Submits what fill queued, waiting for a completion in the same system call when `wait` (as fio does).
  auto submit = [&](unsigned queued, bool wait) {
    return Submit(ring.ring, queued, wait, in_flight, *stats_, "direct reads");
  };
  while (next < keys.size() || in_flight > 0 || !retry.empty()) {
    io_uring_cqe* cqe = nullptr;
    const unsigned queued = fill();
    if (in_flight == 0) break;
    ENGRAM_RETURN_IF_ERROR(submit(queued, io_uring_peek_cqe(&ring.ring, &cqe) != 0));
    int rc;
    do {
      rc = io_uring_wait_cqe(&ring.ring, &cqe);  // returns at once when submit_and_wait has reaped one
    } while (rc == -EINTR);
    if (rc < 0) {
      DrainInFlight(ring.ring, in_flight, stats_->depth);
      return Status::IOError(fmt::format("direct reads: io_uring_wait_cqe: {}", std::strerror(-rc)));
    }
    reaped.clear();
    while (cqe != nullptr) {
      reaped.emplace_back(static_cast<unsigned>(io_uring_cqe_get_data64(cqe)), cqe->res);
      io_uring_cqe_seen(&ring.ring, cqe);
      --in_flight;
      stats_->depth.Completed();
      if (io_uring_peek_cqe(&ring.ring, &cqe) != 0) cqe = nullptr;
    }
    // Refill before checking what arrived: the new reads go to the spare buffers.
    ENGRAM_RETURN_IF_ERROR(submit(fill(), false));
    for (const auto& [slot, res] : reaped) {
      if (res == -EAGAIN || res == -EINTR) {
        retry.push_back(slot);  // the same read, into the same buffer, at the next fill
        continue;
      }
      const std::size_t item = slot_item[slot];
      const File& f = *slot_file[slot];
      const std::uint64_t key = keys[item];
      if (res != static_cast<int>(kBlock)) {
        if (first_error.ok()) {
          first_error =
              Status::IOError(fmt::format("direct reads: {} at offset {}: {}", f.path, (key - f.first_key) * kBlock,
                                          res < 0 ? std::strerror(-res) : "short read"));
        }
      } else {
        stats_->bytes.fetch_add(kBlock, std::memory_order_relaxed);
        ThisThreadReads().bytes += kBlock;
        const char* why = nullptr;
        const unsigned char* value =
            CheckBlock(buffers + static_cast<std::size_t>(slot) * kBlock, key, value_bytes(item), &why);
        if (value == nullptr) {
          if (first_error.ok()) {
            first_error = Status::Corruption(fmt::format("block at {} offset {} (page key {:016x}): {}", f.path,
                                                         (key - f.first_key) * kBlock, key, why));
          }
        } else if (first_error.ok()) {
          deliver(item, reinterpret_cast<const std::byte*>(value));
        }
      }
      free_slots.push_back(slot);
    }
    if (!first_error.ok()) {
      next = keys.size();
      retry.clear();
    }
  }
  return first_error;
}

Status DirectBlockReader::ReadSpan(std::uint64_t first_key, std::uint64_t count,
                                   const std::function<std::uint32_t(std::uint64_t)>& value_bytes,
                                   const std::function<void(std::uint64_t, const std::byte*)>& deliver) const {
  if (count == 0) return Status::Ok();
  constexpr std::uint64_t kChunkPages = 512;  // 2 MiB a read
  constexpr unsigned kDepth = 4;
  Ring r(kDepth, kDepth, kChunkPages * kBlock);  // the call's own: its buffers are 2 MiB
  if (r.init_error != 0) {
    return Status::IOError(fmt::format("direct span reads: io_uring_queue_init: {}", std::strerror(-r.init_error)));
  }
  if (r.buffers == nullptr) return Status::ResourceExhausted("direct span reads: no memory for 8 MiB of buffers");
  auto* buffers = static_cast<unsigned char*>(r.buffers);
  struct Chunk {
    const File* file = nullptr;
    std::uint64_t first = 0;  // index of its first page in the span
    std::uint64_t pages = 0;
  };
  std::array<Chunk, kDepth> chunks{};
  std::vector<unsigned> free_slots(kDepth);
  std::iota(free_slots.rbegin(), free_slots.rend(), 0U);
  std::uint64_t next = 0;
  unsigned in_flight = 0;
  Status first_error;
  auto prep = [&](unsigned slot) {
    const Chunk& c = chunks[slot];
    io_uring_sqe* sqe = io_uring_get_sqe(&r.ring);  // never null: at most kDepth reads are in the ring
    io_uring_prep_read(sqe, c.file->fd, buffers + static_cast<std::size_t>(slot) * kChunkPages * kBlock,
                       static_cast<unsigned>(c.pages * kBlock), (first_key + c.first - c.file->first_key) * kBlock);
    io_uring_sqe_set_data64(sqe, slot);
    ++in_flight;
  };
  auto fill = [&]() -> unsigned {
    unsigned queued = 0;
    while (next < count && !free_slots.empty() && first_error.ok()) {
      const std::uint64_t key = first_key + next;
      const File* f = FileOf(key);
      if (f == nullptr) {
        first_error = Status::Corruption(fmt::format("direct span reads: no file holds page key {:016x}", key));
        break;
      }
      const unsigned slot = free_slots.back();
      free_slots.pop_back();
      chunks[slot] = {f, next, std::min({kChunkPages, count - next, f->last_key - key + 1})};
      next += chunks[slot].pages;
      prep(slot);
      ++queued;
    }
    return queued;
  };
  auto submit = [&](unsigned queued) { return Submit(r.ring, queued, false, in_flight, *stats_, "direct span reads"); };
  ENGRAM_RETURN_IF_ERROR(submit(fill()));
  while (in_flight > 0) {
    io_uring_cqe* cqe = nullptr;
    int rc;
    do {
      rc = io_uring_wait_cqe(&r.ring, &cqe);
    } while (rc == -EINTR);
    if (rc < 0) {
      DrainInFlight(r.ring, in_flight, stats_->depth);
      return Status::IOError(fmt::format("direct span reads: io_uring_wait_cqe: {}", std::strerror(-rc)));
    }
    const auto slot = static_cast<unsigned>(io_uring_cqe_get_data64(cqe));
    const int res = cqe->res;
    io_uring_cqe_seen(&r.ring, cqe);
    --in_flight;
    stats_->depth.Completed();
    const Chunk c = chunks[slot];
    if (res == -EAGAIN || res == -EINTR) {
      prep(slot);  // the same read again
      ENGRAM_RETURN_IF_ERROR(submit(1));
      continue;
    }
    const std::uint64_t offset = (first_key + c.first - c.file->first_key) * kBlock;
    if (res != static_cast<int>(c.pages * kBlock)) {
      if (first_error.ok()) {
        first_error =
            Status::IOError(fmt::format("direct span reads: {} at offset {} ({} bytes): {}", c.file->path, offset,
                                        c.pages * kBlock, res < 0 ? std::strerror(-res) : "short read"));
      }
    } else if (first_error.ok()) {
      stats_->bytes.fetch_add(c.pages * kBlock, std::memory_order_relaxed);
      ThisThreadReads().bytes += c.pages * kBlock;
      const unsigned char* chunk = buffers + static_cast<std::size_t>(slot) * kChunkPages * kBlock;
      for (std::uint64_t j = 0; j < c.pages && first_error.ok(); ++j) {
        const std::uint64_t i = c.first + j;
        const char* why = nullptr;
        const unsigned char* value = CheckBlock(chunk + j * kBlock, first_key + i, value_bytes(i), &why);
        if (value == nullptr) {
          first_error = Status::Corruption(fmt::format("block at {} offset {} (page key {:016x}): {}", c.file->path,
                                                       offset + j * kBlock, first_key + i, why));
        } else {
          deliver(i, reinterpret_cast<const std::byte*>(value));
        }
      }
    }
    free_slots.push_back(slot);
    ENGRAM_RETURN_IF_ERROR(submit(fill()));
  }
  return first_error;
}

}  // namespace engram::store::detail
