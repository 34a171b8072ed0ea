// Random row reads through the store (RocksDB MultiGet -> engram's io_uring FileSystem, O_DIRECT) on
// batches drawn from the real trace, against the raw baseline measured in the same run: the same pages
// read from a flat file by offset with io_uring and O_DIRECT, at the same queue depth (threads x 32,
// RocksDB's MultiGet batch). bench/run_store_bench.sh adds fio on the same flat file.
//
//   bench_store --store DIR --flat FILE [--seconds 3] [--configs 1x32,2x32,4x32,8x32] [--csv FILE]
// A config TxK runs T reader threads with K keys per MultiGet: queue depth T x K.
#include <fcntl.h>
#include <fmt/format.h>
#include <liburing.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench_common.hpp"
#include "bench_data.hpp"
#include "engram/hasher.hpp"
#include "engram/store/store.hpp"

using namespace engram::bench;  // NOLINT(google-build-using-namespace): a benchmark program

int main(int argc, char** argv) {
  std::string store_dir;
  std::string flat;
  std::string csv;
  double seconds = 3;
  std::vector<int> order_qds;  // --order-test: flat-file reads of the batches' pages in three orders
  // (threads, keys per MultiGet); threads == 0 marks the direct block path with keys = queue depth
  std::vector<std::pair<int, int>> configs = {{1, 32}, {2, 32}, {4, 32}, {8, 32}};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--store")
      store_dir = argv[i + 1];
    else if (a == "--flat")
      flat = argv[i + 1];
    else if (a == "--seconds")
      seconds = std::atof(argv[i + 1]);
    else if (a == "--configs") {
      configs.clear();
      for (const char* p = argv[i + 1]; *p != 0;) {
        if (*p == 'd') {  // dQ: ReadPath::kDirectBlocks, queue depth Q
          configs.emplace_back(0, std::atoi(++p));
          while (*p != 0 && *p != ',') ++p;
          if (*p == ',') ++p;
          continue;
        }
        const int t = std::atoi(p);
        while (*p != 0 && *p != 'x') ++p;
        const int k = *p == 'x' ? std::atoi(++p) : 32;
        configs.emplace_back(t, k);
        while (*p != 0 && *p != ',') ++p;
        if (*p == ',') ++p;
      }
    } else if (a == "--csv")
      csv = argv[i + 1];
    else if (a == "--order-test") {
      for (const char* p = argv[i + 1]; *p != 0;) {
        order_qds.push_back(std::atoi(p));
        while (*p != 0 && *p != ',') ++p;
        if (*p == ',') ++p;
      }
    } else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (store_dir.empty() || flat.empty()) {
    std::fprintf(stderr,
                 "usage: bench_store --store DIR --flat FILE [--seconds S] [--configs 1x32,4x8,...] [--csv FILE]\n");
    return 2;
  }
  const auto ids = engram::bench::LoadTraceCompressed();
  std::vector<Batches> sources;
  std::uint32_t rpk = 0;
  {
    auto st = engram::store::Store::Open(store_dir);
    if (!st.ok()) {
      std::fprintf(stderr, "%s\n", st.status().ToString().c_str());
      return 1;
    }
    rpk = (*st)->Info().rows_per_key;
    sources = MakeBatches((*st)->layout(), ids);
    if (!WriteFlat(**st, flat, rpk)) {
      std::fprintf(stderr, "cannot write the flat baseline file %s\n", flat.c_str());
      return 1;
    }
  }
  std::FILE* out = csv.empty() ? nullptr : std::fopen(csv.c_str(), "w");
  if (out != nullptr) {
    std::fprintf(
        out,
        "source,threads,keys,qd,rows_per_s,pages_per_s,disk_reads_per_s,flat_pages_per_s,ratio,cpu_us_per_row,p50_ms,"
        "p99_ms,disk_bytes_per_row,rows_per_page,mean_queue_depth\n");
  }
  std::printf("%-28s %5s %4s %11s %10s %10s %10s %6s %8s %8s %8s %7s %7s %6s\n", "batches", "thr", "QD", "rows/s",
              "pages/s", "disk rd/s", "flat pg/s", "ratio", "CPU us/r", "p50 ms", "p99 ms", "B/row", "dedupe", "mQD");
  for (const Batches& src : sources) {
    std::size_t requested = 0;
    std::size_t distinct = 0;
    const auto page_batches = PageBatches(src, rpk, &requested, &distinct);
    const std::uint64_t flat_pages = std::filesystem::file_size(flat) / 4096;
    if (!order_qds.empty()) {
      // The same pages per batch, read in ascending order (as the store submits them), interleaved (page
      // k of the sorted batch at position (k % Q) * ceil(n / Q) + k / Q: the Q reads in flight spread
      // over the batch's range), and shuffled.
      for (const int q : order_qds) {
        auto spread = page_batches;
        auto shuffled = page_batches;
        auto uniform = page_batches;  // as many pages per batch, drawn uniformly over the flat file (fio's pattern)
        std::mt19937_64 rng(5);
        for (std::size_t b = 0; b < page_batches.size(); ++b) {
          const auto& in = page_batches[b];
          const std::size_t n = in.size();
          const std::size_t stride = (n + static_cast<std::size_t>(q) - 1) / static_cast<std::size_t>(q);
          std::size_t at = 0;
          for (std::size_t r = 0; r < stride; ++r) {
            for (std::size_t k = r; k < n; k += stride) spread[b][at++] = in[k];
          }
          std::shuffle(shuffled[b].begin(), shuffled[b].end(), rng);
          for (auto& page : uniform[b]) page = rng() % flat_pages;
        }
        std::printf("%-28s QD %4d  flat pg/s: ascending %9.0f  interleaved %9.0f  shuffled %9.0f  uniform %9.0f\n",
                    src.name.c_str(), q, FlatIops(flat, page_batches, static_cast<unsigned>(q), seconds),
                    FlatIops(flat, spread, static_cast<unsigned>(q), seconds),
                    FlatIops(flat, shuffled, static_cast<unsigned>(q), seconds),
                    FlatIops(flat, uniform, static_cast<unsigned>(q), seconds));
      }
      continue;
    }
    for (auto [threads, keys] : configs) {
      const bool direct = threads == 0;
      const int qd = direct ? keys : threads * keys;
      engram::store::StoreOptions o;
      o.read_threads = direct ? 1U : static_cast<std::uint32_t>(threads);
      o.multiget_keys = direct ? 32U : static_cast<std::uint32_t>(keys);
      o.read_path = direct ? engram::store::ReadPath::kDirectBlocks : engram::store::ReadPath::kMultiGet;
      o.direct_queue_depth = static_cast<std::uint32_t>(keys);
      auto st = engram::store::Store::Open(store_dir, o);
      if (!st.ok()) return 1;
      auto h = *(*st)->Pin(*(*st)->Latest());
      std::vector<std::byte> buf;
      std::vector<double> lat_ms;
      std::uint64_t rows_served = 0;
      std::uint64_t pages_read = 0;
      const auto io0 = (*st)->io_stats();
      const double cpu0 = CpuSeconds();
      const auto t0 = Clock::now();
      std::size_t k = 0;
      while (Clock::now() - t0 < std::chrono::duration<double>(seconds) || k < 2) {
        pages_read += page_batches[k % src.batches.size()].size();
        const auto& b = src.batches[k++ % src.batches.size()];
        buf.resize(b.size() * (*st)->layout().row_bytes());
        const auto b0 = Clock::now();
        const engram::Status s = (*st)->ReadRows(h, 0, b, buf);
        lat_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - b0).count());
        if (!s.ok()) {
          std::fprintf(stderr, "%s\n", s.ToString().c_str());
          return 1;
        }
        rows_served += b.size();
      }
      const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
      const double cpu = CpuSeconds() - cpu0;
      const auto io1 = (*st)->io_stats();
      const double disk_reads = static_cast<double>(io1.reads - io0.reads + io1.direct_reads - io0.direct_reads) / wall;
      const double pages_s = static_cast<double>(pages_read) / wall;
      const double flat_iops = FlatIops(flat, page_batches, static_cast<unsigned>(qd), seconds);
      const double rows_s = static_cast<double>(rows_served) / wall;
      const double bytes_per_row = static_cast<double>(io1.bytes - io0.bytes + io1.direct_bytes - io0.direct_bytes) /
                                   static_cast<double>(rows_served);
      const double dedupe = static_cast<double>(requested) / static_cast<double>(distinct);
      // The queue depth the disk was offered in this run (the store's gauge, both read paths).
      const auto subs = [](const engram::store::StoreIoStats& x) {
        return static_cast<double>(x.submissions + x.direct_submissions);
      };
      const double mqd = subs(io1) > subs(io0) ? (io1.mean_queue_depth * subs(io1) - io0.mean_queue_depth * subs(io0)) /
                                                     (subs(io1) - subs(io0))
                                               : 0.0;
      std::printf("%-28s %5s %4d %11.0f %10.0f %10.0f %10.0f %5.0f%% %8.2f %8.2f %8.2f %7.0f %6.2fx %6.1f\n",
                  src.name.c_str(), (direct ? fmt::format("d{}", keys) : fmt::format("{}x{}", threads, keys)).c_str(),
                  qd, rows_s, pages_s, disk_reads, flat_iops, 100.0 * pages_s / flat_iops,
                  cpu / static_cast<double>(rows_served) * 1e6, Percentile(lat_ms, 0.5), Percentile(lat_ms, 0.99),
                  bytes_per_row, dedupe, mqd);
      if (out != nullptr) {
        std::fprintf(out, "%s,%d,%d,%d,%.0f,%.0f,%.0f,%.0f,%.3f,%.3f,%.3f,%.3f,%.1f,%.3f,%.2f\n", src.name.c_str(),
                     threads, keys, qd, rows_s, pages_s, disk_reads, flat_iops, pages_s / flat_iops,
                     cpu / static_cast<double>(rows_served) * 1e6, Percentile(lat_ms, 0.5), Percentile(lat_ms, 0.99),
                     bytes_per_row, dedupe, mqd);
      }
    }
  }
  if (out != nullptr) std::fclose(out);
  std::printf(
      "(pages/s: distinct 4 KiB pages (RocksDB keys) the store delivered per second; disk rd/s: read requests it\n"
      " issued (RocksDB merges adjacent blocks into one); flat pg/s: the same pages read from a flat file with "
      "io_uring\n"
      " + O_DIRECT by one io_uring kept QD deep; thr: threads x keys per MultiGet, or dQ: direct block reads at queue "
      "depth Q; ratio: pages/s over flat pg/s; "
      "B/row: disk bytes per row served; dedupe:\n"
      " rows requested per distinct page; mQD: mean reads in the kernel just after a submission, from the store's "
      "gauge)\n");
  return 0;
}
