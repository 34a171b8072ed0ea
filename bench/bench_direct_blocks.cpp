// Experiment: how fast could the store's pages be read if engram issued the block reads itself instead
// of going through RocksDB's MultiGet? Every data block of a generation is one 4 KiB-aligned page
// (block_align, one key per block), so page p of an SST file whose first page is f sits at offset
// (p - f) * 4096. This program reads the pages of real-trace decode batches that way with one io_uring
// kept QD deep (refilled as reads complete), checks each block as RocksDB would (entry header, the
// expected key, value size, restart array, no compression, XXH3 block checksum), and compares the rate
// with the flat-file baseline at the same depth. Nothing here is used by the library: it measures the
// case for such a read path. Requires a store with a single generation.
//
//   bench_direct_blocks --store DIR --flat FILE [--seconds 3] [--qd 1,32,64,128,256]
#include <fcntl.h>
#include <liburing.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "bench_data.hpp"

namespace {

using engram::bench::Clock;

struct SstFile {
  std::uint64_t first_key = 0;  // big-endian page key as an integer: layer << 56 | page
  int fd = -1;
  std::string path;
};

std::uint64_t Be64(const unsigned char* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}

bool Varint(const unsigned char*& p, const unsigned char* end, std::uint32_t& out) {
  out = 0;
  for (int shift = 0; shift <= 28 && p < end; shift += 7) {
    const unsigned char c = *p++;
    out |= static_cast<std::uint32_t>(c & 0x7F) << shift;
    if (c < 0x80) return true;
  }
  return false;
}

// Checks one 4 KiB block holding the page `key` with `value_bytes` of rows; returns the value or null.
const unsigned char* CheckBlock(const unsigned char* b, std::uint64_t key, std::uint32_t value_bytes) {
  const unsigned char* p = b;
  const unsigned char* end = b + 4096;
  std::uint32_t shared = 0;
  std::uint32_t non_shared = 0;
  std::uint32_t value_len = 0;
  if (!Varint(p, end, shared) || !Varint(p, end, non_shared) || !Varint(p, end, value_len)) return nullptr;
  if (shared != 0 || non_shared != 16 || value_len != value_bytes) return nullptr;
  if (p + 16 + value_len + 8 + 5 > end) return nullptr;
  if (Be64(p) != key || p[8] != 0x01) return nullptr;  // user key, then the internal footer: type kTypeValue
  const unsigned char* value = p + 16;
  const unsigned char* restarts = value + value_len;
  std::uint32_t restart0 = 0;
  std::uint32_t num_restarts = 0;
  std::memcpy(&restart0, restarts, 4);
  std::memcpy(&num_restarts, restarts + 4, 4);
  if (restart0 != 0 || num_restarts != 1) return nullptr;
  const std::size_t contents = static_cast<std::size_t>(restarts + 8 - b);
  if (b[contents] != 0) return nullptr;  // compression type: none
  std::uint32_t stored = 0;
  std::memcpy(&stored, b + contents + 1, 4);
  // RocksDB's kXXH3 block checksum: the low 32 bits of XXH3-64 of the contents, XOR the compression-type
  // byte times 0x6b9083d9 (zero here).
  if (static_cast<std::uint32_t>(XXH3_64bits(b, contents)) != stored) return nullptr;
  return value;
}

}  // namespace

int main(int argc, char** argv) {
  std::string store_dir;
  std::string flat;
  double seconds = 3;
  std::vector<unsigned> qds = {1, 32, 64, 128, 256};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--store") {
      store_dir = argv[i + 1];
    } else if (a == "--flat") {
      flat = argv[i + 1];
    } else if (a == "--seconds") {
      seconds = std::atof(argv[i + 1]);
    } else if (a == "--qd") {
      qds.clear();
      for (const char* p = argv[i + 1]; *p != 0;) {
        qds.push_back(static_cast<unsigned>(std::atoi(p)));
        while (*p != 0 && *p != ',') ++p;
        if (*p == ',') ++p;
      }
    } else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (store_dir.empty() || flat.empty()) {
    std::fprintf(stderr, "usage: bench_direct_blocks --store DIR --flat FILE [--seconds S] [--qd 1,32,...]\n");
    return 2;
  }
  const auto ids = engram::bench::LoadTraceCompressed();
  std::uint32_t rpk = 0;
  std::uint32_t row_bytes = 0;
  std::int64_t layer_rows = 0;
  std::vector<engram::bench::Batches> sources;
  {
    auto st = engram::store::Store::Open(store_dir);
    if (!st.ok()) {
      std::fprintf(stderr, "%s\n", st.status().ToString().c_str());
      return 1;
    }
    if ((*st)->versions().size() != 1) {
      std::fprintf(stderr, "this experiment needs a store with exactly one version\n");
      return 1;
    }
    rpk = (*st)->Info().rows_per_key;
    row_bytes = (*st)->layout().row_bytes();
    layer_rows = (*st)->layout().layer_rows(0);
    sources = engram::bench::MakeBatches((*st)->layout(), ids);
    if (!engram::bench::WriteFlat(**st, flat, rpk)) return 1;
  }
  // The generation's SST files and their first keys (from each file's first block).
  std::vector<SstFile> files;
  for (const auto& e : std::filesystem::directory_iterator(store_dir)) {
    if (e.path().extension() != ".sst") continue;
    SstFile f;
    f.path = e.path().string();
    f.fd = ::open(f.path.c_str(), O_RDONLY | O_DIRECT);
    alignas(4096) static unsigned char block[4096];
    if (f.fd < 0 || ::pread(f.fd, block, 4096, 0) != 4096) return 1;
    const unsigned char* p = block;
    std::uint32_t a = 0;
    std::uint32_t b = 0;
    std::uint32_t c = 0;
    Varint(p, block + 4096, a);
    Varint(p, block + 4096, b);
    Varint(p, block + 4096, c);
    f.first_key = Be64(p);
    if (f.first_key >> 56 != 0) {  // a file of the metadata column families, or of another layer
      if (b != 16) {
        ::close(f.fd);
        continue;
      }
    }
    files.push_back(f);
  }
  std::sort(files.begin(), files.end(), [](const SstFile& x, const SstFile& y) { return x.first_key < y.first_key; });

  const auto& decode = sources[0];
  std::size_t requested = 0;
  std::size_t distinct = 0;
  const auto page_batches = engram::bench::PageBatches(decode, rpk, &requested, &distinct);
  std::printf("%-5s %12s %12s %7s %10s %8s\n", "QD", "direct pg/s", "flat pg/s", "ratio", "CPU us/pg", "bad");
  std::vector<unsigned char> rows_out(static_cast<std::size_t>(rpk) * row_bytes);
  for (unsigned qd : qds) {
    io_uring ring{};
    io_uring_queue_init(qd, &ring, 0);
    void* mem = nullptr;
    if (posix_memalign(&mem, 4096, static_cast<std::size_t>(qd) * 4096) != 0) return 1;
    auto* buf = static_cast<unsigned char*>(mem);
    std::vector<std::uint64_t> slot_key(qd);
    std::vector<unsigned> free_slots;
    for (unsigned i = 0; i < qd; ++i) free_slots.push_back(i);
    std::uint64_t done = 0;
    std::uint64_t bad = 0;
    std::size_t batch = 0;
    std::size_t pos = 0;
    unsigned in_flight = 0;
    const double cpu0 = engram::bench::CpuSeconds();
    const auto t0 = Clock::now();
    const auto deadline = t0 + std::chrono::duration<double>(seconds);
    while (Clock::now() < deadline || in_flight > 0) {
      while (!free_slots.empty() && Clock::now() < deadline) {
        if (pos == page_batches[batch].size()) {
          batch = (batch + 1) % page_batches.size();
          pos = 0;
        }
        const std::uint64_t key = page_batches[batch][pos++];  // layer 0: the key is the page number
        auto it = std::upper_bound(files.begin(), files.end(), key,
                                   [](std::uint64_t k, const SstFile& f) { return k < f.first_key; });
        const SstFile& f = *(it - 1);
        const unsigned slot = free_slots.back();
        free_slots.pop_back();
        slot_key[slot] = key;
        io_uring_sqe* sqe = io_uring_get_sqe(&ring);
        io_uring_prep_read(sqe, f.fd, buf + static_cast<std::size_t>(slot) * 4096, 4096, (key - f.first_key) * 4096);
        io_uring_sqe_set_data64(sqe, slot);
        ++in_flight;
      }
      io_uring_submit_and_wait(&ring, 1);
      io_uring_cqe* cqe = nullptr;
      while (io_uring_peek_cqe(&ring, &cqe) == 0) {
        const auto slot = static_cast<unsigned>(io_uring_cqe_get_data64(cqe));
        const std::uint64_t key = slot_key[slot];
        const std::uint64_t first_row = key * rpk;
        const auto count =
            static_cast<std::uint32_t>(std::min<std::int64_t>(rpk, layer_rows - static_cast<std::int64_t>(first_row)));
        const unsigned char* value =
            cqe->res == 4096 ? CheckBlock(buf + static_cast<std::size_t>(slot) * 4096, key, count * row_bytes)
                             : nullptr;
        if (value == nullptr) {
          ++bad;
        } else {
          std::memcpy(rows_out.data(), value, count * row_bytes);  // deliver the rows, as ReadRows does
        }
        io_uring_cqe_seen(&ring, cqe);
        free_slots.push_back(slot);
        --in_flight;
        ++done;
      }
    }
    const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    const double cpu = engram::bench::CpuSeconds() - cpu0;
    free(mem);
    io_uring_queue_exit(&ring);
    const double flat_pg = engram::bench::FlatIops(flat, page_batches, qd, seconds);
    const double pg = static_cast<double>(done) / wall;
    std::printf("%-5u %12.0f %12.0f %6.0f%% %10.2f %8llu\n", qd, pg, flat_pg, 100.0 * pg / flat_pg,
                cpu / static_cast<double>(done) * 1e6, static_cast<unsigned long long>(bad));
  }
  for (auto& f : files) ::close(f.fd);
  return 0;
}
