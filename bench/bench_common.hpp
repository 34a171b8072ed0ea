// Shared by the store benchmarks: real-trace batches, the flat-file io_uring baseline, timing helpers.
#pragma once

#include <fcntl.h>
#include <liburing.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../core/percentile.hpp"
#include "engram/hasher.hpp"
#include "engram/store/store.hpp"

namespace engram::bench {

using Clock = std::chrono::steady_clock;

inline double CpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

using detail::Percentile;

struct Batches {
  std::string name;
  std::vector<std::vector<std::int64_t>> batches;
};

// Decode steps: 256 sequences, one token each per step; prefill chunks: 16,384 consecutive tokens.
inline std::vector<Batches> MakeBatches(const engram::Layout& layout, const std::vector<std::int32_t>& ids) {
  auto hasher = *engram::LayerHasher::Create(layout, 0);
  constexpr std::size_t kSeq = 4096;
  const auto cols = static_cast<std::size_t>(layout.columns());
  std::vector<std::int64_t> rows(ids.size() * cols);
  (void)engram::HashFreshSequences(hasher, ids, kSeq, rows);
  Batches decode{"decode (256 seq x 1 token)", {}};
  const std::size_t sequences = std::min<std::size_t>(256, ids.size() / kSeq);
  for (std::size_t step = 0; step < kSeq; step += 16) {
    std::vector<std::int64_t> b;
    for (std::size_t s = 0; s < sequences; ++s) {
      const std::size_t t = s * kSeq + step;
      b.insert(b.end(), rows.begin() + static_cast<std::ptrdiff_t>(t * cols),
               rows.begin() + static_cast<std::ptrdiff_t>((t + 1) * cols));
    }
    decode.batches.push_back(std::move(b));
  }
  Batches prefill{"prefill (16384-token chunk)", {}};
  for (std::size_t t0 = 0; t0 + 16384 <= ids.size(); t0 += 16384) {
    prefill.batches.emplace_back(rows.begin() + static_cast<std::ptrdiff_t>(t0 * cols),
                                 rows.begin() + static_cast<std::ptrdiff_t>((t0 + 16384) * cols));
  }
  return {decode, prefill};
}

// The flat baseline file: layer 0's rows in 4 KiB pages of rows_per_key rows (the store's page layout).
inline bool WriteFlat(engram::store::Store& st, const std::string& path, std::uint32_t rpk) {
  const engram::Layout& l = st.layout();
  const auto rows = l.layer_rows(0);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return false;
  auto h = *st.Pin(*st.Latest());
  // 4096 pages per ReadRows call (the store reads them in parallel), written out one 4 KiB page per page.
  const std::int64_t per_call = static_cast<std::int64_t>(rpk) * 4096;
  std::vector<std::byte> pages;
  std::vector<std::int64_t> ids;
  std::vector<std::byte> buf;
  for (std::int64_t r0 = 0; r0 < rows; r0 += per_call) {
    const std::int64_t n = std::min(per_call, rows - r0);
    ids.resize(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) ids[static_cast<std::size_t>(i)] = r0 + i;
    buf.resize(ids.size() * l.row_bytes());
    if (!st.ReadRows(h, 0, ids, buf).ok()) return false;
    const std::size_t npages = (static_cast<std::size_t>(n) + rpk - 1) / rpk;
    pages.assign(npages * 4096, std::byte{0});
    for (std::size_t p = 0; p < npages; ++p) {
      const std::size_t first = p * rpk;
      const std::size_t count = std::min<std::size_t>(rpk, static_cast<std::size_t>(n) - first);
      std::memcpy(pages.data() + p * 4096, buf.data() + first * l.row_bytes(), count * l.row_bytes());
    }
    if (::write(fd, pages.data(), pages.size()) != static_cast<ssize_t>(pages.size())) return false;
  }
  ::fsync(fd);
  ::close(fd);
  return true;
}

// Reads the pages of every batch from the flat file with one io_uring kept `qd` reads deep (like one
// fio job at iodepth qd). Returns pages read per second.
inline double FlatIops(const std::string& path, const std::vector<std::vector<std::uint64_t>>& page_batches,
                       unsigned qd, double seconds) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT);
  io_uring ring{};
  io_uring_queue_init(qd, &ring, 0);
  void* mem = nullptr;
  if (posix_memalign(&mem, 4096, static_cast<std::size_t>(qd) * 4096) != 0) return 0;
  auto* buf = static_cast<char*>(mem);
  std::vector<unsigned> free_slots;
  for (unsigned i = 0; i < qd; ++i) free_slots.push_back(i);
  std::uint64_t done = 0;
  std::size_t batch = 0;
  std::size_t pos = 0;
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::duration<double>(seconds);
  unsigned in_flight = 0;
  while (Clock::now() < deadline || in_flight > 0) {
    while (!free_slots.empty() && Clock::now() < deadline) {
      if (pos == page_batches[batch].size()) {
        batch = (batch + 1) % page_batches.size();
        pos = 0;
      }
      const unsigned slot = free_slots.back();
      free_slots.pop_back();
      io_uring_sqe* sqe = io_uring_get_sqe(&ring);
      io_uring_prep_read(sqe, fd, buf + static_cast<std::size_t>(slot) * 4096, 4096, page_batches[batch][pos++] * 4096);
      io_uring_sqe_set_data64(sqe, slot);
      ++in_flight;
    }
    io_uring_submit_and_wait(&ring, 1);
    io_uring_cqe* cqe = nullptr;
    while (io_uring_peek_cqe(&ring, &cqe) == 0) {
      free_slots.push_back(static_cast<unsigned>(io_uring_cqe_get_data64(cqe)));
      io_uring_cqe_seen(&ring, cqe);
      --in_flight;
      ++done;
    }
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  free(mem);
  io_uring_queue_exit(&ring);
  ::close(fd);
  return static_cast<double>(done) / secs;
}

// Distinct pages of each batch, sorted (what one ReadRows call reads).
inline std::vector<std::vector<std::uint64_t>> PageBatches(const Batches& src, std::uint32_t rpk,
                                                           std::size_t* requested, std::size_t* distinct) {
  std::vector<std::vector<std::uint64_t>> out;
  for (const auto& b : src.batches) {
    std::vector<std::uint64_t> pages;
    pages.reserve(b.size());
    for (auto r : b) pages.push_back(static_cast<std::uint64_t>(r) / rpk);
    std::sort(pages.begin(), pages.end());
    pages.erase(std::unique(pages.begin(), pages.end()), pages.end());
    *requested += b.size();
    *distinct += pages.size();
    out.push_back(std::move(pages));
  }
  return out;
}

}  // namespace engram::bench
